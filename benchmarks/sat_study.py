"""Issue 14: the SAT paper's claims with error bars (seeds x methods x eps), three kinds of flatness, per layer.

    python benchmarks/sat_study.py --estimate             # the plan and its estimated wall time; runs nothing
    python benchmarks/sat_study.py                        # full scale, 3 seeds: ~2.6 h measured on 2 cores
    bash benchmarks/sat_study.sh                          # the same, one short process per seed and eps group
    python benchmarks/sat_study.py --scale tiny --seeds 1 --methods at sat-eps --dataset digits   # a minute
    python benchmarks/sat_study.py --aggregate-only       # the tables again from the stored per-model files

What runs (successor of reproduce_sat.py, whose training and caching it reuses):
  models   seeds x METHODS x GRID_EPS (0.3, and 0.4 where AT may collapse), plus AT alone at SWEEP_EPS
           (0.05, 0.1, 0.2); h-sat is the paper's ratio metric, h-sat-affine the affine one (VARIANTS).
  per model (runs/ holds checkpoints and big files; --out holds small JSON/CSV)
    train.json        training summary: best epoch, the objective's train accuracy in the last epoch, clean and
                      PGD-20 accuracy of best.pt on the first train_eval_samples training samples, wall time
    accuracy.json     clean and PGD-20 accuracy on the first test_samples test images
    spectrum.json     top-k eigenvalues of the adversarial loss (fixed PGD-20 examples; eigen_directions for
                      grid models, whose (a) 2D surface in that top-2 eigenvector plane it also holds);
                      Hutch++ trace for AT models (claim 1)
    surface_random.json   (b) the 2D adversarial surface in a filter-normalized random plane (grid models)
    flatness.json     scalar flatness (landscape/analysis/flatness.py), clean and adversarial: average increase
                      over `directions` random filter-normalized directions and worst-case increase (projected
                      gradient ascent) at each radius
    layers.json       per layer: top eigenvalue of the clean and of the adversarial loss (param_filter)
    path.json         (c) 1D path from the AT model (a = 0) to this model (a = 1), same seed and eps: clean loss,
                      and adversarial loss re-attacked at every point (reattack), with the barrier
                      max_a [L(a) - ((1 - a) L(0) + a L(1))] for a in [0, 1]
  aggregate: per_model.csv, then every table as mean ± s.d. over seeds (CSV with _mean/_sd/n columns and
  markdown), per-layer tables, verdicts.csv/.md (rule: ``verdict``; path barriers: ``verdict_vs_zero``) and the
  figures fig_*.png (sat_study_figures.py). results/sat-study/autoattack/ holds a separate AutoAttack check
  (landscape-eval --autoattack on 500 test images; docs/reproduction.md).
Resumable: training resumes from last.pt; every per-model file is skipped when it exists with the same
settings (each file records them); all writes are atomic (landscape/io.py).

Scale (``SCALES``). ``tiny`` is for tests (about a minute with 1 seed, 2 methods and one eps on digits).
``full`` is sized for 3 seeds x 15 models = 45 models in about 2 hours on 2 cores; measured (seed 0, idle
machine): grid models 195-267 s each (estimate 162-180 s), sweep models 156-158 s (estimate 132 s), so ~1.3x
the cost model and ~2.6 h for the whole study. Unit costs, from the
committed single-seed run (results/sat/settings.json, 2 threads; metrics in training_curves.csv): an AT epoch
on 6,000 samples with PGD-7 (8 forward+backward passes per sample) took 13 s, so one forward+backward pass
costs U = 0.27 ms per sample; validation (1,000 samples, PGD-10) 3.1-3.7 s = 12 U per sample; sharpness
tracking ~1.8 s per call on 256 samples; an H-SAT calibration ~5.5 s per epoch during the ramp; a 21x21
surface on 512 samples 60 s. With 45 models, 2 hours leave 160 s per model for everything; today's scale
(6,000 x 8 epochs, PGD-7: ~150 s of training per model; 40-165 s of analysis plus a 60 s surface) would take
3.5-4 hours. Choices, training first:
  * 10,000 training samples x 6 epochs (60,000 sample-epochs: 1.25x today's 48,000, i.e. 469 instead of 375
    SGD iterations, on 1.67x the data) with PGD-5 in training (step 2.5 eps / 5) instead of PGD-7: 6 passes
    per sample instead of 8, so a model trains in ~97 s + validation on 500 samples (~10 s) + tracking every
    2nd epoch on 128 samples (~3 s); TRADES and H-SAT ~16 s more. Every evaluation, Hessian, surface and
    flatness measure still uses PGD-20 with step eps/4.
  * cheap analysis: 256 samples for the Hessian, surfaces and flatness (512 before), 11x11 grids (21x21
    before), top-2 eigenvalues (tol 1e-3) without a density, the trace only for AT models (claim 1) with at
    most 40 HVPs, per-layer eigenvalues on 128 samples with tol 1e-2 and at most 15 HVPs, the reattacked path
    on 128 samples at 13 points, flatness at radii 0.02-0.25 with 8 random directions and 5 ascent steps;
    test accuracy on 1,000 images (s.e. <= 1.6 points; the seeds' spread is reported beside it).
  ``--estimate`` prints the per-model estimate from these unit costs: ~110 s of training (126 s for TRADES and
  H-SAT) and ~54 s of analysis for a grid model, ~107 + 25 s for a sweep model; 2.04 hours in all (1.45 h
  training, 0.60 h analysis). Run it with 2 torch threads (torch's default on 2 cores; ``--threads 2``).
Caveat: at FIXED adversarial examples (made at theta), the average-case increase of the adversarial loss can
be negative: random weight moves make the examples less adversarial. The worst case is not affected; the
path re-attacks at every point.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np
import torch
matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import landscape as ls  # noqa: E402
from landscape.analysis import (DirectionSet, HessianOperator, eigen_directions, hessian_trace,  # noqa: E402
                                interpolation_direction, loss_surface, random_directions, top_eigenvalues)
from landscape.analysis.flatness import average_loss_increase, worst_case_loss_increase  # noqa: E402
from landscape.errors import ConfigError, LandscapeError  # noqa: E402
from landscape.io import read_json, write_json, write_text  # noqa: E402
from reproduce_sat import VARIANTS, cached_result, log, study_attack, train_run  # noqa: E402
from sat_study_files import METHODS, model_row  # noqa: E402,F401 (METHODS: the study's, re-exported)

GRID_EPS = (0.3, 0.4)
SWEEP_EPS = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class StudyScale:
    """Every size of the study (see the module doc for the full preset's reasoning)."""
    train_samples: int
    epochs: int
    steps: int                  # PGD steps in training (step 2.5 eps / steps)
    val_samples: int
    track_probe: int            # sharpness tracking (grid models), every track_every epochs
    track_every: int
    hsat_probe: int
    hsat_iters: int
    hsat_bisect: int
    test_samples: int           # clean / PGD-20 test accuracy
    train_eval_samples: int     # clean / PGD-20 accuracy of best.pt on training samples
    analysis_samples: int       # Hessian, surfaces, flatness (test split)
    top_k: int
    eig_tol: float              # Lanczos tolerance of the top-k eigenvalues
    trace_hvps: int             # Hutch++ budget for AT models (0: no trace)
    grid: str                   # both 2D surfaces, each axis
    layer_samples: int
    layer_max_hvps: int
    path_grid: tuple[float, ...]
    path_samples: int
    radii: tuple[float, ...]    # flatness radii (filter-normalized scale)
    directions: int             # random directions of the average measure
    worst_steps: int            # ascent steps of the worst-case measure


SCALES = {
    "tiny": StudyScale(train_samples=256, epochs=1, steps=2, val_samples=64, track_probe=32, track_every=1,
                       hsat_probe=32, hsat_iters=4, hsat_bisect=2, test_samples=64, train_eval_samples=64,
                       analysis_samples=32, top_k=2, eig_tol=0.1, trace_hvps=10, grid="-1:1:3", layer_samples=32,
                       layer_max_hvps=3, path_grid=(0.0, 0.5, 1.0), path_samples=16, radii=(0.05,),
                       directions=2, worst_steps=2),
    "full": StudyScale(train_samples=10_000, epochs=6, steps=5, val_samples=500, track_probe=128, track_every=2,
                       hsat_probe=128, hsat_iters=8, hsat_bisect=5, test_samples=1000, train_eval_samples=500,
                       analysis_samples=256, top_k=2, eig_tol=1e-3, trace_hvps=40, grid="-1:1:11", layer_samples=128,
                       layer_max_hvps=15, path_grid=tuple(round(-0.25 + 0.125 * i, 6) for i in range(13)),
                       path_samples=128, radii=(0.02, 0.05, 0.1, 0.25), directions=8, worst_steps=5),
}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: a method label at an eps and seed; ``grid`` models get the flatness analyses."""
    label: str
    eps: float
    seed: int
    grid: bool

    @property
    def name(self) -> str:
        return f"{self.label}-eps{self.eps:g}-s{self.seed}"


def plan(methods: Sequence[str], grid_eps: Sequence[float], sweep_eps: Sequence[float],
         seeds: Sequence[int]) -> list[ModelSpec]:
    """Every model, AT first within each (seed, eps) so that the paths find their start trained."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    if "at" not in methods:
        raise ConfigError("the study compares every method with AT: include 'at' in --methods")
    out = []
    for seed in seeds:
        for eps in grid_eps:
            out += [ModelSpec(m, float(eps), int(seed), True) for m in ["at", *[m for m in methods if m != "at"]]]
        out += [ModelSpec("at", float(eps), int(seed), False) for eps in sweep_eps if eps not in grid_eps]
    return out


# --- the cost model behind the full preset --------------------------------------------------------------

U = 0.27e-3     # seconds per sample per forward+backward pass, 2 threads (results/sat: 13 s per AT epoch)


def estimate_seconds(s: StudyScale, spec: ModelSpec) -> dict:
    """Estimated training and analysis seconds of one model on 2 cores (unit costs: module doc)."""
    passes = s.steps + 1 + (1 if spec.label == "trades" else 0)  # TRADES: one more forward+backward (KL)
    train = s.epochs * s.train_samples * passes * U + s.epochs * s.val_samples * 12 * U
    if spec.grid:
        train += (s.epochs // s.track_every) * 1.8 * s.track_probe / 256
    if spec.label.startswith("h-sat"):
        train += math.ceil(0.4 * s.epochs) * 5.5 * s.hsat_probe / 128
    pgd = lambda n: 21 * n * U  # noqa: E731 - PGD-20 plus the clean forward
    hvp = lambda n: 2.5 * n * U  # noqa: E731 - one HVP (hessian.py: 1.7-2.8 gradients)
    fwd = lambda n: n * U / 3  # noqa: E731
    # top-2 by Lanczos at tol 1e-3: 17-20 HVPs per model in results/sat (top-5), 39 on a barely trained model
    analysis = pgd(s.test_samples) + pgd(s.train_eval_samples) + pgd(s.analysis_samples) + 40 * hvp(s.analysis_samples)
    if spec.label == "at":
        analysis += pgd(s.analysis_samples) + s.trace_hvps * hvp(s.analysis_samples)
    if spec.grid:
        pts = int(s.grid.split(":")[2]) ** 2
        analysis += 2 * (pgd(s.analysis_samples) + pts * fwd(s.analysis_samples))              # (a), (b)
        r = len(s.radii)
        analysis += pgd(s.analysis_samples) + 2 * (2 * s.directions * r * fwd(s.analysis_samples)
                                                    + r * (s.worst_steps + 1) * s.analysis_samples * U)
        analysis += pgd(s.layer_samples) + 4 * 2 * s.layer_max_hvps * hvp(s.layer_samples)  # 4 layers (cnn-small)
        if spec.label != "at":
            analysis += len(s.path_grid) * (pgd(s.path_samples) + fwd(s.path_samples))
    return {"model": spec.name, "train_s": train, "analysis_s": analysis, "total_s": train + analysis}


# --- per-model steps --------------------------------------------------------------------------------------

@dataclass
class Context:
    scale: StudyScale
    scale_name: str
    dataset: str
    model: str
    out: Path
    runs: Path
    test: Any
    train: Any

    def folder(self, spec: ModelSpec) -> Path:
        return self.out / "models" / spec.name

    def run_dir(self, spec: ModelSpec) -> Path:
        return self.runs / spec.name


def _base_settings(ctx: Context, spec: ModelSpec, step: str, **fields: Any) -> dict:
    """What a per-model file depends on: the model's training config, the step, its sizes, the attack."""
    train_cfg = read_json(ctx.run_dir(spec) / "config.json").get("train", {})
    return {"step": step, "model": spec.name, "method": spec.label, "eps": spec.eps, "seed": spec.seed,
            "train": train_cfg, "attack": study_attack(spec.eps).to_dict(), **fields}


def train_model(ctx: Context, spec: ModelSpec) -> dict:
    """Train (or resume / skip) the model, then its train.json: best epoch, train accuracies, wall time."""
    s = ctx.scale
    run = train_run(spec.label, spec.eps, s, ctx.runs, spec.seed, track=spec.grid, name=spec.name,
                    dataset=ctx.dataset, model=ctx.model, track_every=s.track_every, hsat_probe=s.hsat_probe,
                    hsat_iters=s.hsat_iters, hsat_bisect=s.hsat_bisect)
    settings = _base_settings(ctx, spec, "train", train_eval_samples=s.train_eval_samples)

    def fn() -> dict:
        import pandas as pd
        ck = ls.load_checkpoint(run / "best.pt")
        n = min(s.train_eval_samples, len(ctx.train))
        x, y = ctx.train.tensors(n)
        ev = ls.evaluate(ck.model, x, y, attack=study_attack(spec.eps), seed=spec.seed)
        hist = pd.read_csv(run / "metrics.csv")
        last = hist.iloc[-1]
        return {"kind": "training", "landscape_version": ls.__version__, "run": str(run), "best_epoch": ck.epoch,
                "epochs": int(last["epoch"]), "train_acc_objective_last": float(last["train_acc"]),
                "train_clean_acc": ev.clean_acc, "train_pgd20_acc": ev.pgd_acc, "train_eval_samples": ev.n,
                "val_clean_best": float(hist.iloc[ck.epoch - 1]["val_clean"]),
                "val_pgd_best": float(hist.iloc[ck.epoch - 1]["val_pgd"]),
                "seconds": float(hist["seconds"].sum()), "eval_seconds": ev.seconds}
    return cached_result(ctx.folder(spec) / "train.json", fn, settings)


def _surface_summary(res) -> dict:
    """Loss at the centre, largest and mean loss over the grid, and the whole surface (``to_dict``)."""
    d = res.to_dict()
    loss = np.asarray(res.loss, dtype=float)
    centre = d.get("center", {}).get("loss")
    return {"kind": "surface", "loss_center": centre, "loss_max": float(np.nanmax(loss)),
            "loss_mean": float(np.nanmean(loss)), "seconds": res.seconds, "surface": d}


def accuracy_step(ctx: Context, spec: ModelSpec) -> dict:
    s = ctx.scale
    settings = _base_settings(ctx, spec, "accuracy", test_samples=s.test_samples)

    def fn() -> dict:
        ck = ls.load_checkpoint(ctx.run_dir(spec) / "best.pt")
        x, y = ctx.test.tensors(min(s.test_samples, len(ctx.test)))
        ev = ls.evaluate(ck.model, x, y, attack=study_attack(spec.eps), seed=spec.seed)
        return {"kind": "evaluation", "clean_acc": ev.clean_acc, "pgd20_acc": ev.pgd_acc, "n": ev.n,
                "seconds": ev.seconds}
    return cached_result(ctx.folder(spec) / "accuracy.json", fn, settings)


def spectrum_step(ctx: Context, spec: ModelSpec) -> dict:
    """Top-k adversarial eigenvalues (+ the (a) surface in the top-2 plane for grid models; + trace for AT)."""
    s = ctx.scale
    settings = _base_settings(ctx, spec, "spectrum", samples=s.analysis_samples, top_k=s.top_k, tol=s.eig_tol,
                              trace_hvps=s.trace_hvps if spec.label == "at" else 0,
                              grid=s.grid if spec.grid else None)

    def fn() -> dict:
        t0 = time.perf_counter()
        ck = ls.load_checkpoint(ctx.run_dir(spec) / "best.pt")
        data = ctx.test.tensors(s.analysis_samples)
        att = study_attack(spec.eps)
        out: dict = {"kind": "spectrum", "landscape_version": ls.__version__}
        if spec.grid:
            dirs = eigen_directions(ck.model, data, loss="adversarial", attack=att, k=max(2, s.top_k), tol=s.eig_tol,
                                   seed=spec.seed)
            out["eigenvalues"] = dirs.meta["eigenvalues"][:s.top_k]
            plane = DirectionSet(list(dirs)[:2], dirs.meta)
            res = loss_surface(ck.model, data, plane, s.grid, s.grid, loss="adversarial", adv_mode="fixed",
                               attack=att, seed=spec.seed, out=ctx.run_dir(spec) / "surface_eigen", overwrite=True,
                               meta={"checkpoint": str(ctx.run_dir(spec) / "best.pt"), "plane": "eigen"})
            out["surface_eigen"] = _surface_summary(res)
        else:
            op = HessianOperator(ck.model, data, loss="adversarial", attack=att, seed=spec.seed)
            eig = top_eigenvalues(op, k=s.top_k, tol=s.eig_tol, seed=spec.seed)
            out["eigenvalues"] = [float(v) for v in eig.values]
            out["eigen"] = eig.to_dict()
        if spec.label == "at" and s.trace_hvps:
            op = HessianOperator(ck.model, data, loss="adversarial", attack=att, seed=spec.seed)
            tr = hessian_trace(op, tol=0.05, max_hvps=s.trace_hvps, seed=spec.seed)
            out.update(trace=tr.estimate, trace_stderr=tr.stderr, trace_hvps=tr.hvps)
        out["seconds"] = time.perf_counter() - t0
        return out
    return cached_result(ctx.folder(spec) / "spectrum.json", fn, settings)


def random_surface_step(ctx: Context, spec: ModelSpec) -> dict:
    """(b) the adversarial surface in a filter-normalized random plane (directions seeded by the model's seed)."""
    s = ctx.scale
    settings = _base_settings(ctx, spec, "surface_random", samples=s.analysis_samples, grid=s.grid,
                              normalization="filter")

    def fn() -> dict:
        ck = ls.load_checkpoint(ctx.run_dir(spec) / "best.pt")
        data = ctx.test.tensors(s.analysis_samples)
        dirs = random_directions(ck.model, 2, "filter", False, spec.seed)
        res = loss_surface(ck.model, data, dirs, s.grid, s.grid, loss="adversarial", adv_mode="fixed",
                           attack=study_attack(spec.eps), seed=spec.seed, out=ctx.run_dir(spec) / "surface_random",
                           overwrite=True, meta={"checkpoint": str(ctx.run_dir(spec) / "best.pt"), "plane": "random"})
        return _surface_summary(res)
    return cached_result(ctx.folder(spec) / "surface_random.json", fn, settings)


def flatness_step(ctx: Context, spec: ModelSpec) -> dict:
    """Scalar flatness, clean and adversarial (fixed examples): average and worst-case increase per radius."""
    s = ctx.scale
    settings = _base_settings(ctx, spec, "flatness", samples=s.analysis_samples, radii=list(s.radii),
                              directions=s.directions, worst_steps=s.worst_steps, normalization="filter")

    def fn() -> dict:
        ck = ls.load_checkpoint(ctx.run_dir(spec) / "best.pt")
        data = ctx.test.tensors(s.analysis_samples)
        att = study_attack(spec.eps)
        out: dict = {"kind": "flatness", "landscape_version": ls.__version__}
        for loss in ("clean", "adversarial"):
            out[loss] = {
                "average": average_loss_increase(ck.model, data, s.radii, s.directions, loss=loss, attack=att,
                                             seed=spec.seed).to_dict(),
                "worst": worst_case_loss_increase(ck.model, data, s.radii, steps=s.worst_steps, loss=loss,
                                              attack=att, seed=spec.seed).to_dict()}
        out["seconds"] = sum(out[lo][m]["seconds"] for lo in ("clean", "adversarial") for m in ("average", "worst"))
        return out
    return cached_result(ctx.folder(spec) / "flatness.json", fn, settings)


def layer_names(model: torch.nn.Module) -> list[str]:
    """Module prefixes of the weight tensors (2+ dims), in order: the layers of the per-layer spectrum."""
    return [n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.dim() > 1]


def layers_step(ctx: Context, spec: ModelSpec) -> dict:
    """Per layer (weight and bias of one module): top eigenvalue of the clean and of the adversarial loss.

    The adversarial examples are made once at the weights (study attack, seed; the very examples
    ``HessianOperator(loss="adversarial")`` makes) and every layer's operator is taken on them."""
    s = ctx.scale
    settings = _base_settings(ctx, spec, "layers", samples=s.layer_samples, max_hvps=s.layer_max_hvps, tol=1e-2)

    def fn() -> dict:
        t0 = time.perf_counter()
        ck = ls.load_checkpoint(ctx.run_dir(spec) / "best.pt")
        x, y = ctx.test.tensors(s.layer_samples)
        x_adv = study_attack(spec.eps).examples(ck.model, x, y, spec.seed)
        rows = []
        for layer in layer_names(ck.model):
            for loss, inputs in (("clean", x), ("adversarial", x_adv)):
                op = HessianOperator(ck.model, (inputs, y), loss="clean", param_filter=layer, seed=spec.seed)
                eig = top_eigenvalues(op, k=1, tol=1e-2, max_hvps=max(s.layer_max_hvps, 2), seed=spec.seed)
                rows.append({"layer": layer, "loss": loss, "top_eigenvalue": float(eig.values[0]),
                             "converged": bool(eig.converged[0]), "hvps": int(eig.hvps),
                             "num_params": op.num_params})
        return {"kind": "eigenvalues", "landscape_version": ls.__version__, "layers": rows,
                "seconds": time.perf_counter() - t0}
    return cached_result(ctx.folder(spec) / "layers.json", fn, settings)


def _barrier(a: np.ndarray, loss: np.ndarray) -> float:
    """max over a in [0, 1] of L(a) - ((1 - a) L(0) + a L(1)) (0 and 1 must be on the grid)."""
    i0, i1 = int(np.flatnonzero(a == 0.0)[0]), int(np.flatnonzero(a == 1.0)[0])
    inside = (a >= 0) & (a <= 1)
    line = (1 - a) * loss[i0] + a * loss[i1]
    return float(np.max((loss - line)[inside]))


def path_step(ctx: Context, spec: ModelSpec, at: ModelSpec) -> dict:
    """(c) the straight path from the AT model (same seed, eps) to this one: clean and reattacked loss."""
    s = ctx.scale
    if 0.0 not in s.path_grid or 1.0 not in s.path_grid:
        raise ConfigError("the path grid must hold 0 and 1")
    settings = _base_settings(ctx, spec, "path", samples=s.path_samples, grid=list(s.path_grid),
                              start=at.name, start_train=read_json(ctx.run_dir(at) / "config.json").get("train"))

    def fn() -> dict:
        ck0 = ls.load_checkpoint(ctx.run_dir(at) / "best.pt")
        ck1 = ls.load_checkpoint(ctx.run_dir(spec) / "best.pt")
        data = ctx.test.tensors(s.path_samples)
        d = interpolation_direction(ck0.model, ck1.model)
        out: dict = {"kind": "surface", "landscape_version": ls.__version__, "start": at.name, "end": spec.name}
        a = np.asarray(s.path_grid, dtype=float)
        for loss, mode in (("clean", "fixed"), ("adversarial", "reattack")):
            res = loss_surface(ck0.model, data, d, list(s.path_grid), loss=loss, adv_mode=mode,
                               attack=study_attack(spec.eps), seed=spec.seed)
            out[loss] = {"a": a.tolist(), "loss": res.loss.tolist(), "accuracy": res.accuracy.tolist(),
                         "barrier": _barrier(a, res.loss), "seconds": res.seconds, "settings": res.settings}
        out["seconds"] = out["clean"]["seconds"] + out["adversarial"]["seconds"]
        return out
    return cached_result(ctx.folder(spec) / "path.json", fn, settings)


def at_start(spec: ModelSpec) -> ModelSpec:
    """The AT model (same eps and seed) that ``spec``'s path starts from."""
    return ModelSpec("at", spec.eps, spec.seed, True)


#: every step, in the order it runs; each writes STEP.json into the model's results folder
STEPS: dict[str, Callable[[Context, ModelSpec], dict]] = {
    "train": train_model, "accuracy": accuracy_step, "spectrum": spectrum_step,
    "surface_random": random_surface_step, "flatness": flatness_step, "layers": layers_step,
    "path": lambda ctx, spec: path_step(ctx, spec, at_start(spec))}


def model_steps(spec: ModelSpec) -> list[str]:
    """The steps of one model: all of them for a grid model (but the path for AT itself), the first three
    for a sweep model."""
    names = list(STEPS)
    if not spec.grid:
        return names[:3]
    return [n for n in names if n != "path" or spec.label != "at"]


def step_files(spec: ModelSpec) -> list[str]:
    """The per-model files a finished model has in its results folder."""
    return [f"{n}.json" for n in model_steps(spec)]


def complete(ctx: Context, spec: ModelSpec) -> bool:
    """True when every per-model file of ``spec`` is in its results folder."""
    return all((ctx.folder(spec) / f).exists() for f in step_files(spec))


def needed_as_start(ctx: Context, spec: ModelSpec, specs: Sequence[ModelSpec]) -> bool:
    """True when ``spec`` is the AT model whose checkpoint an unfinished path (same eps, seed) starts from."""
    return spec.label == "at" and spec.grid and any(
        o.grid and o.label != "at" and o.eps == spec.eps and o.seed == spec.seed and not complete(ctx, o)
        for o in specs)


def study_model(ctx: Context, spec: ModelSpec, specs: Sequence[ModelSpec] = ()) -> None:
    """Every step of one model (each skipped when done with the same settings). A model whose files are all
    in the results folder is skipped whole, without its checkpoint (so a study resumes from its committed
    results on a machine without runs/), unless an unfinished path needs it as its start; training is
    seeded, so a retrained model is the same model."""
    t0 = time.perf_counter()
    if complete(ctx, spec) and not (ctx.run_dir(spec) / "best.pt").exists() \
            and not needed_as_start(ctx, spec, specs):
        log(f"{spec.name}: complete in {ctx.folder(spec)}; skipped")
        return
    for name in model_steps(spec):
        STEPS[name](ctx, spec)
    log(f"{spec.name}: done ({time.perf_counter() - t0:.0f} s this invocation)")


# --- aggregation ------------------------------------------------------------------------------------------

def summarize(df, by: Sequence[str]):
    """Mean, sample s.d. (ddof 1; NaN for one seed) and n over seeds of every numeric column, per group; with
    the audit's ``audit_suspect`` column, ``flagged`` (models the audit calls suspect) of ``audited``."""
    import pandas as pd
    values = [c for c in df.columns if c not in (*by, "seed", "audit_suspect")
              and pd.api.types.is_numeric_dtype(df[c])]
    g = df.groupby(list(by), sort=True)
    out = g[values].mean().add_suffix("_mean").join(g[values].std(ddof=1).add_suffix("_sd"))
    out["n"] = g.size()
    cols = [c for v in values for c in (f"{v}_mean", f"{v}_sd")] + ["n"]
    if "audit_suspect" in df.columns:
        out["flagged"], out["audited"] = g["audit_suspect"].sum(), g["audit_suspect"].count()
        cols += ["flagged", "audited"]
    return out[cols].reset_index()


def flagged_cell(flagged: float, audited: float) -> str:
    """'k of m' models of a group flagged by the audit; '–' when none was audited."""
    return f"{int(flagged)} of {int(audited)}" if audited else "–"


def _fmt(m: float, s: float) -> str:
    if m is None or not np.isfinite(m):
        return "–"
    digits = 3 if abs(m) < 10 else 2 if abs(m) < 100 else 1
    return f"{m:.{digits}f}" if s is None or not np.isfinite(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(summary, by: Sequence[str], columns: Sequence[str] | None = None) -> str:
    """The summary as a markdown table, each value as 'mean ± s.d.' (the s.d. omitted when n = 1); ``columns``
    picks metrics (default all)."""
    values = [c[:-5] for c in summary.columns if c.endswith("_mean") and (columns is None or c[:-5] in columns)]
    audited = "audited" in summary.columns
    head = [*by, *values, "n"] + (["audit: flagged"] if audited else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [f"{r[b]:g}" if isinstance(r[b], float) else str(r[b]) for b in by]
        cells += [_fmt(r[f"{v}_mean"], r[f"{v}_sd"]) for v in values] + [str(int(r["n"]))]
        if audited:
            cells.append(flagged_cell(r["flagged"], r["audited"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


GROUPS = (("accuracy and training", ("best_epoch", "train_", "test_")),
          ("curvature and 2D surfaces (adversarial loss)", ("eig", "trace", "eigen_plane", "random_plane")),
          ("scalar flatness and the path from AT", ("flat_", "path_")))


def grouped_markdown(summary, by: Sequence[str]) -> str:
    """``markdown_table`` in sections (GROUPS: accuracy, curvature/surfaces, flatness/path), empty ones left out."""
    metrics = [c[:-5] for c in summary.columns if c.endswith("_mean")]
    parts = []
    for title, prefixes in GROUPS:
        cols = [m for m in metrics if m.startswith(prefixes)]
        if cols:
            parts.append(f"### {title}\n\n" + markdown_table(summary, by, cols))
    rest = [m for m in metrics if not m.startswith(tuple(p for _, ps in GROUPS for p in ps))]
    if rest:
        parts.append("### other\n\n" + markdown_table(summary, by, rest))
    return "\n".join(parts)


def _t(diff: float, se: float) -> float:
    """diff / se, with +-inf (or 0) when the standard error is 0."""
    return diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0


def verdict(a: Sequence[float], b: Sequence[float], k: float = 2.0) -> dict:
    """Does mean(a) - mean(b) exceed the seed-to-seed spread?

    Rule: yes when |mean_a - mean_b| > k * pooled s.d. with pooled s.d. = sqrt((sd_a^2 + sd_b^2) / 2) (sample
    s.d.s, ddof 1) and k = 2; with fewer than 2 seeds on a side there is no spread and no verdict. Welch's
    t = diff / sqrt(sd_a^2/n_a + sd_b^2/n_b) is reported beside it for the reader (with 3 seeds a side its
    degrees of freedom lie between 2 and 4, so |t| > 2.8 to 4.3 is p < 0.05 two-sided); the rule is the verdict.
    With equal s.d.s the rule is |t| > 2 sqrt(n/2) = 2.45 for n = 3: a simple, slightly lenient screen.
    """
    a, b = np.asarray([v for v in a if v is not None and np.isfinite(v)], float), \
        np.asarray([v for v in b if v is not None and np.isfinite(v)], float)
    out = {"mean_a": float(a.mean()) if a.size else math.nan, "mean_b": float(b.mean()) if b.size else math.nan,
           "n_a": int(a.size), "n_b": int(b.size)}
    out["diff"] = out["mean_a"] - out["mean_b"]
    if a.size < 2 or b.size < 2:
        return {**out, "sd_a": math.nan, "sd_b": math.nan, "pooled_sd": math.nan, "welch_t": math.nan,
                "exceeds_spread": None, "verdict": "no spread (fewer than 2 seeds)"}
    sa, sb = float(a.std(ddof=1)), float(b.std(ddof=1))
    pooled = math.sqrt((sa ** 2 + sb ** 2) / 2)
    se = math.sqrt(sa ** 2 / a.size + sb ** 2 / b.size)
    t = _t(out["diff"], se)
    exceeds = abs(out["diff"]) > k * pooled
    text = ("within the seed spread" if not exceeds else
            "A above B beyond the seed spread" if out["diff"] > 0 else "A below B beyond the seed spread")
    return {**out, "sd_a": sa, "sd_b": sb, "pooled_sd": pooled, "welch_t": t, "exceeds_spread": exceeds,
            "verdict": text}


def verdict_vs_zero(a: Sequence[float], k: float = 2.0) -> dict:
    """Is mean(a) away from 0 beyond the seed-to-seed spread? For a quantity with no AT counterpart (the
    barrier on the path from AT to a model is 0 for AT itself). Rule: |mean| > k * s.d. (ddof 1, k = 2),
    the one-sample analogue of ``verdict``; t = mean / (s.d. / sqrt(n)) beside it (with 3 seeds, |t| > 4.3 is
    p < 0.05 two-sided, and the rule is |t| > 3.46)."""
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], float)
    out = {"mean_a": float(a.mean()) if a.size else math.nan, "mean_b": 0.0, "n_a": int(a.size), "n_b": 0,
           "sd_b": 0.0}
    out["diff"] = out["mean_a"]
    if a.size < 2:
        return {**out, "sd_a": math.nan, "pooled_sd": math.nan, "welch_t": math.nan, "exceeds_spread": None,
                "verdict": "no spread (fewer than 2 seeds)"}
    sa = float(a.std(ddof=1))
    t = _t(out["diff"], sa / math.sqrt(a.size))
    exceeds = abs(out["diff"]) > k * sa
    text = ("within the seed spread of 0" if not exceeds else
            "above 0 beyond the seed spread" if out["diff"] > 0 else "below 0 beyond the seed spread")
    # pooled_sd is reported so that the table's "2 x pooled s.d." column shows this rule's threshold, 2 s.d.
    return {**out, "sd_a": sa, "pooled_sd": sa, "welch_t": t, "exceeds_spread": exceeds, "verdict": text}


VERDICT_METRICS = ("test_clean", "test_pgd20", "train_pgd20", "eig1", "eigen_plane_max", "random_plane_max")
PATH_METRICS = ("path_barrier_clean", "path_barrier_adversarial")   # against 0: see verdict_vs_zero


def verdicts(df, grid_eps: Sequence[float], layers=None) -> "Any":
    """Every method against AT at each grid eps (VERDICT_METRICS and every flatness column; with ``layers``,
    each layer's top eigenvalue of each loss), each method's barrier on the path from AT against 0
    (``verdict_vs_zero``), and AT at each eps against AT at the next larger one on the top eigenvalue and
    trace (claim 1)."""
    import pandas as pd
    rows = []
    flat = [c for c in df.columns if c.startswith("flat_")]

    def flags(a, b) -> dict:
        """The audit's flags in groups A and B ('k of m'), when the models were audited."""
        if "audit_suspect" not in a.columns:
            return {}
        return {"audit_flagged_a": flagged_cell(a.audit_suspect.sum(), a.audit_suspect.count()),
                "audit_flagged_b": flagged_cell(b.audit_suspect.sum(), b.audit_suspect.count())}
    for eps in grid_eps:
        at = df[(df.method == "at") & np.isclose(df.eps, eps)]
        for m in sorted(set(df.method) - {"at"}):
            other = df[(df.method == m) & np.isclose(df.eps, eps)]
            if other.empty:
                continue
            for metric in [*VERDICT_METRICS, *flat]:
                if metric in df.columns:
                    rows.append({"comparison": f"{m} vs at", "eps": eps, "metric": metric,
                                 **verdict(other[metric].tolist(), at[metric].tolist()), **flags(other, at)})
            for metric in PATH_METRICS:
                if metric in df.columns:
                    rows.append({"comparison": f"{m} vs 0", "eps": eps, "metric": metric,
                                 **verdict_vs_zero(other[metric].tolist()), **flags(other, other.iloc[:0])})
    at = df[df.method == "at"]
    eps_all = sorted(set(at.eps))
    for lo, hi in zip(eps_all, eps_all[1:]):
        a, b = at[np.isclose(at.eps, hi)], at[np.isclose(at.eps, lo)]
        for metric in ("eig1", "trace"):
            if metric in df.columns:
                rows.append({"comparison": f"at eps {hi:g} vs at eps {lo:g}", "eps": hi, "metric": metric,
                             **verdict(a[metric].tolist(), b[metric].tolist()), **flags(a, b)})
    if layers is not None and len(layers):
        for (eps, layer, loss), part in layers.groupby(["eps", "layer", "loss"], sort=True):
            at_layer = part[part.method == "at"]
            for m in sorted(set(part.method) - {"at"}):
                other = part[part.method == m]
                rows.append({"comparison": f"{m} vs at", "eps": eps, "metric": f"layer {layer} top eig ({loss})",
                             **verdict(other["top_eigenvalue"].tolist(), at_layer["top_eigenvalue"].tolist()),
                             **flags(other, at_layer)})
    return pd.DataFrame(rows)


def aggregate(out: Path, grid_eps: Sequence[float]) -> dict:
    """Tables from every models/*/ folder: per_model.csv, summary_*.csv/.md, layers_*.csv/.md, verdicts.*, and
    the figures (sat_study_figures.py: fig_*.png)."""
    import pandas as pd
    rows, layers = [], []
    for folder in sorted((out / "models").glob("*")):
        if (folder / "train.json").exists():
            r, lr = model_row(folder)
            rows.append(r)
            layers += lr
    if not rows:
        raise LandscapeError(f"{out / 'models'} holds no finished model to aggregate")
    df = pd.DataFrame(rows).sort_values(["eps", "method", "seed"])
    write_text(out / "per_model.csv", df.to_csv(index=False))
    written = {}
    grid = df[df.eps.isin(grid_eps)]
    for name, part, by in (("summary_eps_sweep", df[df.method == "at"], ["eps"]),
                           ("summary_methods", grid, ["eps", "method"])):
        if part.empty:
            continue
        summ = summarize(part.drop(columns=["method"]) if by == ["eps"] else part, by)
        write_text(out / f"{name}.csv", summ.to_csv(index=False))
        write_text(out / f"{name}.md", grouped_markdown(summ, by))
        written[name] = summ
    if layers:
        ldf = pd.DataFrame(layers)
        summ = summarize(ldf, ["eps", "loss", "layer", "method"])
        write_text(out / "summary_layers.csv", summ.to_csv(index=False))
        write_text(out / "summary_layers.md", markdown_table(summ, ["eps", "loss", "layer", "method"]))
        written["summary_layers"] = summ
    v = verdicts(df, grid_eps, pd.DataFrame(layers) if layers else None)
    if not v.empty:
        write_text(out / "verdicts.csv", v.to_csv(index=False))
        lines = ["Rule: a difference counts when |mean A - mean B| > 2 x pooled s.d. over seeds "
                 "(pooled s.d. = sqrt((sd_A^2 + sd_B^2)/2)); Welch's t beside it. A path barrier (\"vs 0\": AT's "
                 "own path has none) counts when |mean| > 2 x its s.d., shown in the same column; t = mean / "
                 "(s.d. / sqrt(n))." + (" Audit: A/B flagged = the models of each side that the evaluation audit "
                                        "calls suspect (sat_study_audit.py, re-judged under today's thresholds)."
                                        if "audit_flagged_a" in v.columns else "") + "\n",
                 "| comparison | eps | metric | A | B | diff | 2 x pooled s.d. | Welch t | verdict |"
                 + (" audit: A flagged | B flagged |" if "audit_flagged_a" in v.columns else ""),
                 "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if "audit_flagged_a" in v.columns else "")]
        for _, r in v.iterrows():
            lines.append(f"| {r.comparison} | {r.eps:g} | {r.metric} | {_fmt(r.mean_a, r.sd_a)} | "
                         f"{_fmt(r.mean_b, r.sd_b)} | {r['diff']:.3g} | {2 * r.pooled_sd:.3g} | {r.welch_t:.3g} | "
                         f"{r.verdict} |" + (f" {r.audit_flagged_a} | {r.audit_flagged_b} |"
                                             if "audit_flagged_a" in v.columns else ""))
        write_text(out / "verdicts.md", "\n".join(lines) + "\n")
        written["verdicts"] = v
    from sat_study_figures import draw   # matplotlib figures from the files just written
    written["figures"] = draw(out, grid_eps)
    return written


# --- main -------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=list(METHODS), help=f"subset of {' '.join(METHODS)}")
    p.add_argument("--eps", nargs="+", type=float, default=list(GRID_EPS), help="eps of the method grid")
    p.add_argument("--sweep-eps", nargs="*", type=float, default=list(SWEEP_EPS), help="AT alone at these eps")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--out", help="results folder (default results/sat-study[-SCALE])")
    p.add_argument("--runs", help="checkpoint folder (default runs/sat-study[-SCALE])")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild the tables from --out")
    p.add_argument("--estimate", action="store_true", help="print the plan and estimated wall time, run nothing")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except LandscapeError as e:
        print(f"sat_study: {e}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    import pandas as pd
    s = SCALES[args.scale]
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    specs = plan(args.methods, args.eps, args.sweep_eps, seeds)
    tag = "sat-study" if args.scale == "full" else f"sat-study-{args.scale}"
    out, runs = Path(args.out or f"results/{tag}"), Path(args.runs or f"runs/{tag}")
    if args.estimate:
        est = pd.DataFrame([estimate_seconds(s, sp) for sp in specs])
        print(est.round(0).to_string(index=False))
        print(f"{len(specs)} models; estimated {est.total_s.sum() / 3600:.2f} h on 2 cores "
              f"(training {est.train_s.sum() / 3600:.2f} h, analysis {est.analysis_s.sum() / 3600:.2f} h)")
        return 0
    if args.aggregate_only:
        aggregate(out, args.eps)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    prev = read_json(out / "settings.json") if (out / "settings.json").exists() else {}
    invocations = list(prev.get("invocations", []))
    # the study's scope is the union over invocations (sat_study.sh runs one per seed and eps group); each
    # invocation records its own below
    scope = {"seeds": seeds, "methods": list(args.methods), "grid_eps": list(args.eps),
             "sweep_eps": list(args.sweep_eps)}
    union = {k: sorted(set(prev.get(k, [])) | set(v), key=METHODS.index if k == "methods" else None)
             for k, v in scope.items()}
    settings = {"kind": "study", "landscape_version": ls.__version__, "scale_name": args.scale,
                "scale": dataclasses.asdict(s), **union, "variants": VARIANTS,
                "dataset": args.dataset, "model": args.model, "threads": torch.get_num_threads(),
                "attack": "PGD-20, step eps/4 (reproduce_sat.study_attack)", "invocations": invocations}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    # recorded now and completed at the end, so that an interrupted invocation still shows in the record
    invocations.append({"started": started, "seconds": None, "finished": False, **scope})
    write_json(out / "settings.json", settings)
    ctx = Context(s, args.scale, args.dataset, args.model, out, runs, ls.load_dataset(args.dataset, "test"),
                  ls.load_dataset(args.dataset, "train"))
    for spec in specs:
        study_model(ctx, spec, specs)
    aggregate(out, args.eps)
    invocations[-1] = {"started": started, "seconds": time.perf_counter() - t_start, "finished": True, **scope}
    settings["seconds"] = sum(i["seconds"] or 0.0 for i in invocations)
    write_json(out / "settings.json", settings)
    log(f"done in {invocations[-1]['seconds']:.0f} s (all invocations: {settings['seconds']:.0f} s); results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
