"""CPU-scale reproduction of the SAT paper's smoothness analysis on Fashion-MNIST (cnn-small).

    python benchmarks/reproduce_sat.py --quick        # minutes: tiny subset, checks the pipeline
    python benchmarks/reproduce_sat.py                # full: the committed results/sat/ (see docs/reproduction.md)

Stages (each skipped when its output exists, so an interrupted run continues where it stopped;
training itself resumes from last.pt):
  a. PGD-AT at eps in {0.05, 0.1, 0.2, 0.3}: test accuracy, top eigenvalue and trace of the adversarial loss.
  b. At a large eps (0.3): AT, TRADES, sat-eps, p-sat, h-sat: clean and PGD-20 test accuracy, top-5
     eigenvalues, trace, density, and a 2D adversarial surface in the plane of the top-2 eigenvectors.
  c. Sharpness over training (--track-hessian-every 1) for every run at the large eps.
Checkpoints go to --runs (not committed); small JSON/CSV/PNG results to --out (committed for full mode).
Its successor with seeds and error bars is benchmarks/sat_study.py (issue 14), which imports train_run,
cached_result and study_attack from here.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import torch
matplotlib.use("Agg")

import landscape as ls  # noqa: E402
from landscape.analysis import (HessianOperator, eigen_directions, hessian_trace, loss_surface,  # noqa: E402
                                spectral_density, top_eigenvalues)
from landscape.analysis import plots  # noqa: E402
from landscape.io import jsonable, read_json, write_json  # noqa: E402
from landscape.training import TrainConfig, Trainer  # noqa: E402
from sat_study_files import METHODS  # noqa: E402


@dataclass
class Scale:
    train_samples: int
    epochs: int
    steps: int            # PGD steps in training
    val_samples: int
    test_samples: int     # for clean / PGD-20 accuracy
    hessian_samples: int  # for spectra and surfaces
    grid: str
    density_steps: int
    track_probe: int
    trace_hvps: int       # Hutch++ budget (stops earlier at 5% relative standard error)


QUICK = Scale(train_samples=1000, epochs=2, steps=3, val_samples=200, test_samples=200, hessian_samples=64,
              grid="-1:1:7", density_steps=20, track_probe=64, trace_hvps=90)
# Full mode is sized to fit 90 minutes on 2 CPU cores: 6,000 training samples (a tenth of Fashion-MNIST's
# training set), 8 epochs, PGD-7 in training; PGD-20 for every evaluation and for the Hessian's examples.
FULL = Scale(train_samples=6000, epochs=8, steps=7, val_samples=1000, test_samples=2000, hessian_samples=512,
             grid="-1:1:21", density_steps=40, track_probe=256, trace_hvps=200)
SWEEP_EPS = (0.05, 0.1, 0.2, 0.3)
LARGE_EPS = 0.3
# Labels that are a method with other settings: h-sat with the affine normalization of psi_H (see
# landscape/training/hsat.py), added after the ratio form's curriculum degenerated in the first full run.
VARIANTS = {"h-sat-affine": ("h-sat", {"hsat_normalize": "affine"})}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_run(label: str, eps: float, s: Scale, runs: Path, seed: int, track: bool, name: str | None = None,
              dataset: str = "fashion-mnist", model: str = "cnn-small", track_every: int = 1,
              **overrides) -> Path:
    """Train ``label`` (a method or a ``VARIANTS`` label) at ``eps`` into ``runs/NAME``, or resume / skip it.

    ``s`` gives train_samples, epochs, steps, val_samples and track_probe; ``overrides`` are further
    ``TrainConfig`` fields (e.g. the study's H-SAT probe). A finished run (last.pt at the last epoch) whose
    config.json records the same training settings is skipped; an unfinished one resumes from last.pt; one
    made with other settings, or stopped before its first checkpoint (config.json alone), is trained again
    from scratch (``overwrite``), with a log line saying so.
    """
    method, extra = VARIANTS.get(label, (label, {}))
    cfg = TrainConfig(method=method, dataset=dataset, model=model, eps=eps, steps=s.steps,
                      epochs=s.epochs, train_samples=s.train_samples, val_samples=s.val_samples, seed=seed,
                      track_hessian_every=track_every if track else 0, track_probe=s.track_probe,
                      name=name or f"{label}-eps{eps:g}", **{**extra, **overrides})
    run = runs / cfg.name
    if (run / "last.pt").exists():
        ck = ls.load_checkpoint(run / "last.pt")
        stored = TrainConfig.from_dict((ck.config or {}).get("train", {})).resolved().to_dict()
        if stored == cfg.resolved("cpu").to_dict():  # fields added to TrainConfig since take their defaults
            if ck.epoch >= s.epochs:
                return run
            log(f"resuming {run}")
            Trainer.resume(run, progress=False).fit()
            return run
        log(f"{run} was trained with other settings: training it again")
        t0 = time.perf_counter()
        Trainer(cfg, runs, progress=False, overwrite=True).fit()
        log(f"trained {cfg.name} in {time.perf_counter() - t0:.0f} s")
        return run
    started = (run / "config.json").exists()  # stopped before its first epoch ended: nothing to resume
    if started:
        log(f"{run} has no checkpoint yet (stopped during its first epoch): training it from the start")
    t0 = time.perf_counter()
    Trainer(cfg, runs, progress=False, overwrite=started).fit()
    log(f"trained {cfg.name} in {time.perf_counter() - t0:.0f} s")
    return run


def cached_result(path: Path, fn, settings: dict | None = None) -> dict:
    """The result stored at ``path``, or ``fn()`` written there atomically (landscape.io) and returned.

    With ``settings`` a stored result counts only when its ``"settings"`` equal them (compared as JSON);
    ``fn()`` must then return a dict, and its ``"settings"`` key is set to them.
    """
    if path.exists():
        old = read_json(path)
        if settings is None or old.get("settings") == json.loads(json.dumps(jsonable(settings))):
            return old
        log(f"{path} was made with other settings: computing it again")
    res = fn()
    if settings is not None:
        res = {**res, "settings": settings}
    write_json(path, res)
    log(f"wrote {path}")
    return read_json(path) if settings is not None else res


def analyze(run: Path, label: str, eps: float, s: Scale, test: ls.Dataset, seed: int, full_spectrum: bool) -> dict:
    """Test accuracy (clean, PGD-20) and the adversarial-loss spectrum of best.pt."""
    ck = ls.load_checkpoint(run / "best.pt")
    x, y = test.tensors(s.test_samples)
    t0 = time.perf_counter()
    ev = ls.evaluate(ck.model, x, y, attack=study_attack(eps), seed=seed)
    xh, yh = test.tensors(s.hessian_samples)
    op = HessianOperator(ck.model, (xh, yh), loss="adversarial", attack=study_attack(eps), seed=seed)
    eig = top_eigenvalues(op, k=5 if full_spectrum else 1, tol=1e-3, seed=seed)
    tr = hessian_trace(op, tol=0.05, max_hvps=s.trace_hvps, seed=seed)
    out = {"run": run.name, "method": label, "eps": eps, "best_epoch": ck.epoch,
           "clean_acc": ev.clean_acc, "pgd20_acc": ev.pgd_acc, "n_test": ev.n,
           "top_eigenvalue": float(eig.values[0]), "top_eigenvalues": eig.to_dict(),
           "trace": tr.estimate, "trace_stderr": tr.stderr, "trace_hvps": tr.hvps, "hessian_samples": s.hessian_samples}
    if full_spectrum:
        rho = spectral_density(op, n_probes=3, lanczos_steps=s.density_steps, seed=seed)
        out["density"] = rho.to_dict()
    out["seconds"] = time.perf_counter() - t0
    return out


def study_attack(eps: float) -> ls.AttackSpec:
    """The one attack of every number here: PGD-20, step eps/4 (docs/reproduction.md)."""
    return ls.AttackSpec(eps=eps, steps=20, step_size=eps / 4)


def surface(run: Path, eps: float, s: Scale, test: ls.Dataset, seed: int, out: Path) -> dict:
    ck = ls.load_checkpoint(run / "best.pt")
    xh, yh = test.tensors(s.hessian_samples)
    dirs = eigen_directions(ck.model, (xh, yh), loss="adversarial", attack=study_attack(eps), k=2, seed=seed)
    res = loss_surface(ck.model, (xh, yh), dirs, s.grid, s.grid, loss="adversarial", adv_mode="fixed",
                       attack=study_attack(eps), seed=seed, out=out / f"surface_{run.name}", overwrite=True,
                       meta={"checkpoint": str(run / "best.pt"), "method": ck.config["method"]})
    return {"run": run.name, "eigenvalues": dirs.meta["eigenvalues"], "loss_max": float(res.loss.max()),
            "loss_center": float(res.loss[res.loss.shape[0] // 2, res.loss.shape[1] // 2])}


def figures(out: Path) -> None:
    """The committed figures, from the committed results alone (``--figures-only`` redraws them)."""
    fig = plots.plot_density([out / f"analysis_{m}-eps{LARGE_EPS:g}.json" for m in METHODS])
    fig.savefig(out / "density.png", dpi=110)
    fig = plots.plot_compare([out / f"surface_{m}-eps{LARGE_EPS:g}" for m in METHODS])
    fig.savefig(out / "surfaces.png", dpi=110)
    fig = plots.plot_sharpness(out / "training_curves.csv")
    fig.savefig(out / "sharpness.png", dpi=110)
    sweep = [read_json(out / f"analysis_at-eps{eps:g}.json") for eps in SWEEP_EPS]
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax = fig.subplots(1, 2)
    top = [r["top_eigenvalues"] for r in sweep]
    ax[0].plot(SWEEP_EPS, [t["values"][0] for t in top], "o-", label="top eigenvalue (Lanczos)")
    ax[0].set(xlabel="training and attack ε", ylabel="top eigenvalue", xticks=SWEEP_EPS)
    tr = [plots.trace_interval({"estimate": r["trace"], "stderr": r["trace_stderr"]}) for r in sweep]
    ax[1].errorbar(SWEEP_EPS, [t["estimate"] for t in tr], yerr=[t["half_width_95"] for t in tr], fmt="o-",
                   capsize=3, label="trace ± 95% half-width (Hutch++)")
    ax[1].set(xlabel="training and attack ε", ylabel="Hessian trace", xticks=SWEEP_EPS)
    n = sweep[0].get("hessian_samples")
    for a, loc in zip(ax, ("upper left", "lower center")):
        a.grid(alpha=0.3)
        a.legend(fontsize="small", loc=loc)
    fig.suptitle(f"AT on fashion-mnist: curvature of the adversarial loss (ε as trained, n = {n}) vs ε")
    fig.savefig(out / "eps_sweep.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny scale: a few minutes")
    p.add_argument("--out", help="results folder (default results/sat, or results/sat-quick with --quick)")
    p.add_argument("--runs", help="checkpoint folder (default runs/sat or runs/sat-quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures-only", action="store_true", help="redraw the figures from the results in --out")
    args = p.parse_args()
    s = QUICK if args.quick else FULL
    tag = "sat-quick" if args.quick else "sat"
    out = Path(args.out or f"results/{tag}")
    if args.figures_only:
        figures(out)
        return
    runs = Path(args.runs or f"runs/{tag}")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    test = ls.load_dataset("fashion-mnist", "test")
    # Every invocation's wall time is kept (stages cached by an earlier invocation are not recomputed).
    prev = read_json(out / "settings.json") if (out / "settings.json").exists() else {}
    invocations = prev.get("invocations") or ([{"seconds": prev["seconds"]}] if "seconds" in prev else [])
    settings = {"scale": s.__dict__, "sweep_eps": SWEEP_EPS, "large_eps": LARGE_EPS, "methods": METHODS,
                "variants": VARIANTS, "seed": args.seed, "model": "cnn-small", "dataset": "fashion-mnist",
                "landscape_version": ls.__version__, "threads": torch.get_num_threads(),
                "invocations": invocations}
    write_json(out / "settings.json", settings)

    # a + b: training
    sweep_runs = {eps: train_run("at", eps, s, runs, args.seed, track=(eps == LARGE_EPS)) for eps in SWEEP_EPS}
    method_runs = {m: (sweep_runs[LARGE_EPS] if m == "at" else train_run(m, LARGE_EPS, s, runs, args.seed, True))
                   for m in METHODS}

    # analysis (cached per run in analysis_*.json)
    def cached(name: str, fn):
        return cached_result(out / name, fn)

    sweep = [cached(f"analysis_at-eps{eps:g}.json",
                    lambda eps=eps: analyze(sweep_runs[eps], "at", eps, s, test, args.seed, eps == LARGE_EPS))
             for eps in SWEEP_EPS]
    methods = [sweep[-1] if m == "at" else
               cached(f"analysis_{m}-eps{LARGE_EPS:g}.json",
                      lambda m=m: analyze(method_runs[m], m, LARGE_EPS, s, test, args.seed, True)) for m in METHODS]
    surfaces = [cached(f"surface_{m}.json", lambda m=m: surface(method_runs[m], LARGE_EPS, s, test, args.seed, out))
                for m in METHODS]

    import pandas as pd
    cols = ["method", "eps", "best_epoch", "clean_acc", "pgd20_acc", "top_eigenvalue", "trace", "trace_stderr"]
    pd.DataFrame(sweep)[cols].to_csv(out / "eps_sweep.csv", index=False)
    table = pd.DataFrame(methods)[cols]
    table["surface_loss_max"] = [sf["loss_max"] for sf in surfaces]
    table["surface_loss_center"] = [sf["loss_center"] for sf in surfaces]
    table.to_csv(out / "methods.csv", index=False)
    sharp = []
    for m, run in method_runs.items():
        df = pd.read_csv(run / "metrics.csv")
        df.insert(0, "method", m)
        sharp.append(df)
    pd.concat(sharp).to_csv(out / "training_curves.csv", index=False)
    for m, run in method_runs.items():  # H-SAT's calibration logs (every (eps, lambda_max) evaluated)
        if (run / "hsat.json").exists():
            write_json(out / f"hsat_{m}.json", read_json(run / "hsat.json"))

    figures(out)
    invocations.append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - (
        time.perf_counter() - t_start))), "seconds": time.perf_counter() - t_start})
    settings["seconds"] = sum(i["seconds"] for i in invocations)
    write_json(out / "settings.json", settings)
    print(pd.DataFrame(sweep)[cols].to_string(index=False))
    print(table.to_string(index=False))
    log(f"done in {settings['seconds']:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
