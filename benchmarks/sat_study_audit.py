"""Issue 23: AutoAttack and the evaluation audit on every model of results/sat-study (45 models).

    python benchmarks/sat_study_audit.py --threads 2          # all of it, resumable: rerun to continue
    python benchmarks/sat_study_audit.py --threads 1 --shard 0/2 & python benchmarks/sat_study_audit.py \
        --threads 1 --shard 1/2                               # two processes of one thread each (2 cores)
    python benchmarks/sat_study_audit.py --only sat-eps-eps0.4-s2 at-eps0.3-s2
    python benchmarks/sat_study_audit.py --aggregate-only     # the tables again from the stored files

The study's checkpoints were not kept, so each model is trained again first (``reproduce_sat.train_run``,
seeded; runs/sat-study/NAME), and the retrained model is compared with the committed one: its clean and
PGD-20 accuracy on the study's 1,000 test images (the same examples: same seed) against accuracy.json, its
best epoch against train.json. Then ``landscape.audit`` on the first ``--samples`` (500) test images under
the study's attack (PGD-20, step eps/4), AutoAttack (standard) included, its per-sample state kept in
runs/sat-study/NAME/autoattack-state so that a stopped run loses at most one member's work on one chunk.
Each model's result goes to results/sat-study/models/NAME/audit.json (atomic; skipped when present with the
same settings, even without the checkpoint): commit them as they come, since runs/ does not outlive a
checkout. The models of the docs' input-space figure (``INPUT_SPACE``) also get their input-space surface
(``landscape-surface --space input``, 256 images, curvature) in results/sat-study/input_space/NAME.json.

Aggregate (``aggregate``): audit.csv (one row per model: clean, PGD-20 and AutoAttack accuracy on the same
n images, the audit's worst case, the verdict and the checks that flagged, re-judged from the stored evidence
under today's ``audit.Thresholds``, and whether the retrained model equals the committed one),
summary_autoattack.md (mean and s.d. over seeds per method and eps, flagged models counted),
verdicts_autoattack.md (each method against AT on AutoAttack accuracy, ``sat_study.verdict``'s rule) and
fig_input_space.png (the input-space surfaces of the models in ``INPUT_SPACE``).
The models run in the order below: the three of the input-space figure and the rest of the earlier AutoAttack
check first (seed 2; the committed AutoAttack numbers in results/sat-study/autoattack/ used the same 500 images
and seed), then by seed; ``--shard K/N`` takes every N-th of that order from the K-th.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import landscape as ls  # noqa: E402
from landscape.audit import audit, judge_dict  # noqa: E402
from landscape.errors import LandscapeError  # noqa: E402
from landscape.io import read_json, write_text  # noqa: E402
from reproduce_sat import cached_result, log, study_attack, train_run  # noqa: E402
from sat_study import GRID_EPS, METHODS, SCALES, SWEEP_EPS, ModelSpec, flagged_cell, plan, verdict, _fmt  # noqa: E402

INPUT_LABELS = {"at-eps0.3-s2": "AT, eps 0.3 (robust)", "at-eps0.4-s2": "AT, eps 0.4 (collapsed)",
                "sat-eps-eps0.4-s2": "sat-eps, eps 0.4 (masked)"}   # the input-space figure's models
INPUT_SPACE = tuple(INPUT_LABELS)
FIRST = INPUT_SPACE + ("sat-eps-eps0.3-s2", "p-sat-eps0.3-s2")


def ordered(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """``FIRST`` first, then the study's own order."""
    first = [s for name in FIRST for s in specs if s.name == name]
    return first + [s for s in specs if s not in first]


def retrained(run: Path, folder: Path, spec: ModelSpec, test: ls.Dataset, test_samples: int) -> dict:
    """The retrained best.pt against the committed numbers of the same model (same images, attack, seed)."""
    ck = ls.load_checkpoint(run / "best.pt")
    x, y = test.tensors(min(test_samples, len(test)))
    ev = ls.evaluate(ck.model, x, y, attack=study_attack(spec.eps), seed=spec.seed)
    acc, tr = read_json(folder / "accuracy.json"), read_json(folder / "train.json")
    out = {"test_clean": {"committed": acc["clean_acc"], "retrained": ev.clean_acc},
           "test_pgd20": {"committed": acc["pgd20_acc"], "retrained": ev.pgd_acc},
           "best_epoch": {"committed": tr["best_epoch"], "retrained": ck.epoch}, "n": ev.n}
    out["identical"] = all(v["committed"] == v["retrained"] for v in out.values() if isinstance(v, dict))
    out["largest_difference"] = max(abs(out[k]["committed"] - out[k]["retrained"])
                                    for k in ("test_clean", "test_pgd20"))
    return out


def input_space(out: Path, run: Path, spec: ModelSpec) -> None:
    """``landscape-surface best.pt --space input`` (256 test images, curvature) into input_space/NAME.json."""
    from landscape.cli.surface import main as surface
    dest = out / "input_space" / f"{spec.name}.json"
    where = run / "input-space"
    code = surface([str(run / "best.pt"), "--space", "input", "--samples", "256", "--seed", str(spec.seed),
                    "--out", str(where), "--overwrite"])
    if code != 0:
        raise LandscapeError(f"{spec.name}: landscape-surface --space input exited {code}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_text(dest, (where / "input_surface.json").read_text())
    log(f"{spec.name}: input-space surface in {dest}")


def audit_model(out: Path, runs: Path, spec: ModelSpec, test: ls.Dataset, samples: int) -> dict:
    """Retrain (or find) ``spec``'s model, compare it with the committed one, audit it: audit.json."""
    folder, s = out / "models" / spec.name, SCALES["full"]
    settings = {"step": "audit", "model": spec.name, "samples": samples, "attack": study_attack(spec.eps).to_dict(),
                "seed": spec.seed, "autoattack": "standard"}
    path = folder / "audit.json"
    want_input = spec.name in INPUT_SPACE and not (out / "input_space" / f"{spec.name}.json").exists()
    if path.exists() and read_json(path).get("settings") == settings and not want_input:
        log(f"{spec.name}: audited in {path}; skipped")
        return read_json(path)
    t0 = time.perf_counter()
    run = train_run(spec.label, spec.eps, s, runs, spec.seed, track=spec.grid, name=spec.name,
                    track_every=s.track_every, hsat_probe=s.hsat_probe, hsat_iters=s.hsat_iters,
                    hsat_bisect=s.hsat_bisect)
    t_train = time.perf_counter() - t0

    def fn() -> dict:
        same = retrained(run, folder, spec, test, s.test_samples)
        log(f"{spec.name}: retrained {'identical to' if same['identical'] else 'differs from'} the committed "
            f"model (largest accuracy difference {same['largest_difference']:.4f})")
        ck = ls.load_checkpoint(run / "best.pt")
        x, y = test.tensors(samples)
        res = audit(ck.model, x, y, study_attack(spec.eps), seed=spec.seed,
                    autoattack_state=str(run / "autoattack-state"), progress=True)
        log(f"{spec.name}: {res.verdict} {res.failed}; clean {res.accuracies['clean']:.3f} PGD-20 "
            f"{res.accuracies['pgd']:.3f} AutoAttack {res.accuracies['autoattack']:.3f}")
        return {**res.to_dict(), "retrained": same, "train_seconds_this_run": t_train}
    result = cached_result(path, fn, settings)
    if want_input:
        input_space(out, run, spec)
    return result


def rows(out: Path) -> list[dict]:
    """One row per audited model, its verdict re-judged under today's thresholds."""
    table = []
    for path in sorted((out / "models").glob("*/audit.json")):
        d = read_json(path)
        tr = read_json(path.parent / "train.json")["settings"]
        block = judge_dict(d)
        failed = [c["name"] for c in block["checks"] if c["passed"] is False]
        acc = d["accuracies"]
        table.append({"model": path.parent.name, "method": tr["method"], "eps": tr["eps"], "seed": tr["seed"],
                      "n": d["n"], "clean": acc["clean"], "pgd20": acc["pgd"], "autoattack": acc["autoattack"],
                      "worst_case": acc["worst_case"], "pgd_minus_autoattack": acc["pgd"] - acc["autoattack"],
                      "square_after_white_box": acc["autoattack_after"]["fab-t"] - acc["autoattack_after"]["square"],
                      "verdict": block["verdict"], "flagged": " ".join(failed),
                      "retrained_identical": d["retrained"]["identical"],
                      "retrained_largest_difference": d["retrained"]["largest_difference"],
                      "audit_seconds": d["cost"]["audit_seconds_without_autoattack"],
                      "autoattack_seconds": d["cost"]["parts"].get("autoattack", {}).get("seconds"),
                      "seconds": d["seconds"]})
    return table


#: AutoAttack accuracy from which a model's audit-to-AutoAttack time ratio is counted in the cost line
ROBUST_FOR_COST = 0.2


def aggregate(out: Path) -> None:
    """audit.csv, summary_autoattack.md and verdicts_autoattack.md (module doc)."""
    import pandas as pd
    df = pd.DataFrame(rows(out))
    if df.empty:
        raise LandscapeError(f"{out / 'models'} holds no audit.json yet")
    df = df.sort_values(["eps", "method", "seed"])
    write_text(out / "audit.csv", df.to_csv(index=False))
    lines = [f"AutoAttack (standard) and PGD-20 (step eps/4) on the same first {int(df.n.iloc[0])} test images; "
             "mean ± s.d. over seeds; flagged = models whose audit says 'suspect' (landscape.audit, thresholds "
             "of today's audit.Thresholds, re-judged from the stored evidence).\n",
             "| eps | method | seeds | clean | PGD-20 | AutoAttack | PGD-20 − AA | Square after white-box | flagged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (eps, method), g in df.groupby(["eps", "method"], sort=True):
        flagged = g[g.verdict == "suspect"]
        mark = f"{len(flagged)} ({', '.join(sorted(set(' '.join(flagged.flagged).split())))})" if len(flagged) else "0"
        lines.append(f"| {eps:g} | {method} | {len(g)} | {_fmt(g.clean.mean(), g.clean.std())} | "
                     f"{_fmt(g.pgd20.mean(), g.pgd20.std())} | {_fmt(g.autoattack.mean(), g.autoattack.std())} | "
                     f"{_fmt(g.pgd_minus_autoattack.mean(), g.pgd_minus_autoattack.std())} | "
                     f"{_fmt(g.square_after_white_box.mean(), g.square_after_white_box.std())} | {mark} |")
    same = int(df.retrained_identical.sum())
    lines.append(f"\nRetrained models identical to the committed ones (test clean and PGD-20 accuracy on 1,000 "
                 f"images, best epoch): {same} of {len(df)}; largest accuracy difference "
                 f"{df.retrained_largest_difference.max():.4f}.")
    # per model, on the models AutoAttack has work on (a collapsed model's AutoAttack stops in seconds, so its
    # ratio says nothing); the sum ratio beside it also counts waits (a paused run) and resumed AutoAttack runs
    robust = df[df.autoattack >= ROBUST_FOR_COST]
    ratio = robust.audit_seconds / robust.autoattack_seconds
    lines.append(f"Audit cost beside AutoAttack (the audit's own attacks; one thread per process): median "
                 f"{ratio.median():.2f} of AutoAttack's time per model (range {ratio.min():.2f}-{ratio.max():.2f}; "
                 f"median {robust.audit_seconds.median():.0f} s against {robust.autoattack_seconds.median():.0f} s) "
                 f"over the {len(robust)} models with AutoAttack accuracy >= {ROBUST_FOR_COST:g}; over all "
                 f"{len(df)}: {df.audit_seconds.sum() / df.autoattack_seconds.sum():.2f} (audit "
                 f"{df.audit_seconds.sum():.0f} s, AutoAttack {df.autoattack_seconds.sum():.0f} s).")
    write_text(out / "summary_autoattack.md", "\n".join(lines) + "\n")
    vrows = ["Each method against AT at the same eps, on AutoAttack accuracy (rule of verdicts.md: a difference "
             "counts when |mean A − mean B| > 2 × pooled s.d. over seeds). Models the audit flags are counted "
             "beside.\n", "| comparison | eps | metric | A | B | diff | 2 × pooled s.d. | verdict | A flagged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for eps in sorted(set(df.eps)):
        at = df[(df.method == "at") & (df.eps == eps)]
        for m in [m for m in METHODS if m != "at"]:
            o = df[(df.method == m) & (df.eps == eps)]
            if o.empty or at.empty:
                continue
            for metric in ("autoattack", "pgd20"):
                v = verdict(o[metric].tolist(), at[metric].tolist())
                vrows.append(f"| {m} vs at | {eps:g} | {metric} | {_fmt(v['mean_a'], v['sd_a'])} | "
                             f"{_fmt(v['mean_b'], v['sd_b'])} | {v['diff']:.3g} | {2 * v['pooled_sd']:.3g} | "
                             f"{v['verdict']} | {flagged_cell((o.verdict == 'suspect').sum(), len(o))} |")
    write_text(out / "verdicts_autoattack.md", "\n".join(vrows) + "\n")
    figure = input_space_figure(out)
    log(f"aggregated {len(df)} audited models into {out}" + (f"; {figure}" if figure else ""))


def input_space_figure(out: Path) -> Path | None:
    """fig_input_space.png: the input-space surfaces of ``INPUT_SPACE`` (those computed), one colour scale."""
    from landscape.analysis import plot_input_surface
    from landscape.io import save_figure
    have = [n for n in INPUT_LABELS if (out / "input_space" / f"{n}.json").exists()]
    if not have:
        return None
    fig = plot_input_surface([read_json(out / "input_space" / f"{n}.json") for n in have],
                             labels=[INPUT_LABELS[n] for n in have])
    save_figure(fig, out / "fig_input_space.png", dpi=110)
    return out / "fig_input_space.png"


def shard(text: str) -> tuple[int, int]:
    """'K/N' (0 <= K < N) for --shard."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N (e.g. 0/2)") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be in 0..N-1")
    return k, n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/sat-study")
    p.add_argument("--runs", default="runs/sat-study")
    p.add_argument("--samples", type=int, default=500, help="test images audited (default 500)")
    p.add_argument("--only", nargs="+", help="these models only (names as in results/sat-study/models)")
    p.add_argument("--threads", type=int, help="torch threads (the study trained with 2)")
    p.add_argument("--shard", default=(0, 1), type=shard, metavar="K/N",
                   help="every N-th model of the order from the K-th (run N processes side by side)")
    p.add_argument("--aggregate-only", action="store_true")
    args = p.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    try:
        if not args.aggregate_only:
            if args.threads:
                torch.set_num_threads(args.threads)
            specs = ordered(plan(METHODS, GRID_EPS, SWEEP_EPS, [0, 1, 2]))
            if args.only:
                specs = [s for s in specs if s.name in set(args.only)]
            k, n = args.shard
            specs = specs[k::n]
            test = ls.load_dataset("fashion-mnist", "test")
            for i, spec in enumerate(specs):
                log(f"[{i + 1}/{len(specs)}] {spec.name}")
                audit_model(out, runs, spec, test, args.samples)
        aggregate(out)
    except LandscapeError as e:
        print(f"sat_study_audit: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
