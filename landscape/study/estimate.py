"""How long each step of a study may take, before anything runs: passes x the cost of one pass.

A step's work is counted in sample-passes (one forward + backward pass of one sample; a forward alone counts
1/3, a Hessian-vector product 2.5, as measured in benchmarks/results/: HVP 1.7-2.8 gradients on a CPU): a
training epoch is train_samples x (PGD steps + 1), a PGD-k evaluation samples x (k + 1) per restart, and so on
(``step_passes``). The cost of one sample-pass is measured here, once per (model, dataset), by timing a
forward + backward pass of a batch of random inputs on this machine's CPU with the threads a worker gets
(``measured_pass_seconds``), or taken from the study file (``[estimate] sample-pass-ms``), which is what a
study run on other hardware (a GPU cluster) must give. The estimate is a plan, not a promise: it leaves
out data loading and start-up (a few seconds per step, counted as ``STARTUP_S``), and AutoAttack's cost
depends on how many samples survive (counted here as if half did).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from .spec import Cell, Step, Study
from .scripts import check_argv

STARTUP_S = 4.0                 # import torch, load the checkpoint and the data
HVP_PASSES = 2.5
FORWARD_PASSES = 1 / 3
AUTOATTACK_PASSES = 2 * (100 + 9 * 100 + 9 * 100) + 5000 * FORWARD_PASSES   # APGD-CE, APGD-T, FAB-T, Square
TRAIN_SIZES = {"digits": 1294, "fashion-mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000,
               "imagenette": 9469, "synthetic-cifar10": 3686}
TEST_SIZES = {"digits": 359, "fashion-mnist": 10000, "mnist": 10000, "cifar10": 10000, "cifar100": 10000,
              "imagenette": 3925, "synthetic-cifar10": 1024}


@dataclass(frozen=True)
class StepEstimate:
    cell: str
    step: str
    passes: float               # sample-passes
    seconds: float
    pass_ms: float              # cost of one sample-pass used
    source: str                 # "measured on this CPU" or "[estimate] sample-pass-ms"


def _attack_passes(ns: Any, default_steps: int) -> float:
    steps = getattr(ns, "steps", None) or default_steps
    restarts = getattr(ns, "restarts", None) or 1
    return steps * restarts + 1


def step_passes(study: Study, cell: Cell, step: Step) -> float:
    """Sample-passes of one step (module doc: the counting rules)."""
    ns = check_argv(step.kind, study.command(cell, step)[1:], f"{cell.name} {step.name}")
    ds = getattr(ns, "dataset", None) or study.train.get("dataset") or study.source_options.get("dataset") or "digits"
    if step.kind == "train":
        n = ns.train_samples or int(0.9 * TRAIN_SIZES.get(ds, 50000))
        epochs = ns.epochs or 30
        per = ns.steps + 1 + (1 if ns.method == "trades" else 0) if ns.method != "standard" else 1
        val = min(ns.val_samples, int(0.1 * TRAIN_SIZES.get(ds, 50000))) * (ns.val_steps + 1)
        return epochs * (n * per + val)
    n = ns.samples or (TEST_SIZES.get(ds, 10000) if step.kind == "eval" else
                       512 if step.kind == "spectrum" else 1000)
    if step.kind == "eval":
        p = n * (_attack_passes(ns, 20) + FORWARD_PASSES)
        aa = ns.autoattack if ns.autoattack is not None else ns.audit
        if aa:
            p += 0.5 * n * AUTOATTACK_PASSES
        if ns.audit:
            p += 0.2 * 0.5 * n * AUTOATTACK_PASSES + n * 4 * _attack_passes(ns, 20)
        return p
    adversarial = getattr(ns, "loss", "clean") == "adversarial"
    attack = n * _attack_passes(ns, 10) if adversarial else 0.0
    if step.kind == "spectrum":
        hvps = ns.max_hvps or (20 + 10 * ns.top_k)
        if ns.trace:
            hvps += min(ns.trace_max_hvps, 100)
        if ns.density:
            hvps += ns.density_probes * ns.density_steps
        return attack + hvps * HVP_PASSES * n
    # surface
    if getattr(ns, "space", "weights") == "input":
        return n * (400 * FORWARD_PASSES + ns.curvature_iters * HVP_PASSES)
    dim = ns.dim or (1 if ns.directions == "interpolate" else 2)
    pts = _points(ns.x or ("-0.5:1.5:21" if ns.directions == "interpolate" else "-1:1:21"))
    if dim == 2:
        pts *= _points(ns.y or "-1:1:21")
    reattack = adversarial and getattr(ns, "adv_mode", "fixed") == "reattack"
    p = pts * n * FORWARD_PASSES + (pts * attack if reattack else attack)
    if ns.directions == "eigen":
        p += 40 * HVP_PASSES * n
    return p


def _points(spec: str) -> int:
    try:
        return int(str(spec).split(":")[2])
    except (IndexError, ValueError):
        return 21


def measured_pass_seconds(model: str, dataset: str, threads: int | None = None, batch: int = 32) -> float:
    """Seconds of one forward + backward pass of one sample of ``model`` on ``dataset``, on this machine's CPU
    (the best of 3 passes of a batch of ``batch`` random inputs). Cost: about 4 such passes."""
    import torch
    from ..data import dataset_info
    from ..models import build_model, resolve_model_name
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        info = dataset_info(dataset)
        net = build_model(resolve_model_name(model, dataset), info, seed=0)
        x = torch.rand(batch, info.channels, info.size, info.size)
        y = torch.zeros(batch, dtype=torch.long)
        best = math.inf
        for _ in range(4):
            t0 = time.perf_counter()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            best = min(best, time.perf_counter() - t0)
        return best / batch
    finally:
        torch.set_num_threads(old)


def estimate(study: Study, threads: int | None = None) -> list[StepEstimate]:
    """Every (cell, step)'s estimated seconds. Cost: one timed pass per (model, dataset) of the study."""
    given = study.estimate.get("sample-pass-ms")
    cache: dict[tuple[str, str], float] = {}
    out = []
    for cell, step in study.pairs():
        if given:
            ms, src = float(given), "[estimate] sample-pass-ms"
        else:
            key = _model_of(study, cell)
            if key not in cache:
                cache[key] = measured_pass_seconds(*key, threads=threads) * 1e3 if key[0] else math.nan
            ms, src = cache[key], "measured on this CPU"
        passes = step_passes(study, cell, step)
        out.append(StepEstimate(cell.name, step.name, passes, STARTUP_S + passes * ms / 1e3, ms, src))
    return out


def _model_of(study: Study, cell: Cell) -> tuple[str, str]:
    """(model, dataset) of a cell, for timing: the training's, or the given checkpoint's when it can be told
    without loading it (a robustbench name is not: give [estimate] sample-pass-ms)."""
    if cell.trained:
        opts = {**study.train, **study.methods.get(str(cell.values.get("method")), {}), **cell.values}
        return str(opts.get("model") or opts.get("arch") or "auto"), str(opts.get("dataset") or "digits")
    arch = study.source_options.get("arch")
    return (str(arch) if arch and ":" not in str(arch) else "", str(study.source_options.get("dataset") or "cifar10"))


def fmt_seconds(s: float) -> str:
    """'42 s', '3.5 min', '2.1 h', '3.2 days'."""
    if not math.isfinite(s):
        return "unknown"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.1f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"
