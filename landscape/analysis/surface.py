"""1D / 2D loss and accuracy surfaces: theta0 + a*d1 (+ b*d2) on a grid, clean or adversarial, resumable.

Three rooms: this module computes the grid (``loss_surface``: check the arguments, prepare the data and the
attack, prepare the storage, evaluate the points, finish); ``moving.WeightMover`` moves the weights (and
buffers) along the directions without writing to the model's own tensors; ``surface_result`` holds the
result, its files and the resume checks (its public names are re-exported here). Losses stay on the device
until a save, so there is no per-point synchronization.

Distributed (``torchrun``, see ``landscape.distributed``): every rank holds the data and the directions; the
fixed-mode adversarial examples are made per shard of attack batches (seeded by their global position, so
identical to a single process's) and gathered; grid points are then shared out dynamically through a task
queue on the process group's store (a rank takes the next unclaimed point; no lockstep) and sent to rank 0,
which alone reads and writes the files, holds the resume mask and saves as results arrive. Each point is
computed whole by one rank exactly as a single process computes it, so the arrays are identical, and a run
stopped under any number of processes resumes under any other.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..attack_spec import AttackSpec
from ..attacks import eval_mode
from ..data import cut_batches
from ..digest import tensor_digest
from ..distributed import (TaskQueue, all_gather_rows, broadcast_from_main, broadcast_tensor, run_on_main,
                           shard_bounds, shard_sizes, world)
from ..errors import ConfigError, LandscapeError
from ..finite import NonFiniteOutputError, refuse_nonfinite
from ..inference import batch_sums, loss_sums
from ..precision import full_float32
from .directions import DirectionSet, directions_digest
from .moving import WeightMover
from .surface_result import (SurfaceResult, load_directions, load_surface, parse_grid,  # noqa: F401 (re-exported)
                             prepare_storage, save_adversarial, save_surface, settings_hash, stored_adversarial,
                             surface_paths)

LOSSES = ("clean", "adversarial")
ADV_MODES = ("fixed", "reattack")
Callback = Callable[[int, int], None] | None


# --- one point ----------------------------------------------------------------------------------------

def _point(ls: torch.Tensor, cor: torch.Tensor, bad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A grid point's (loss sum, number correct) as float64 device tensors: both NaN when some sample's
    outputs are not finite at that point (the moved model diverged there): the point is computed (its mask
    is set, it is not redone on resume) but holds no number, since an argmax of NaN is no prediction. No
    synchronization."""
    nan = torch.full((), float("nan"), dtype=torch.float64, device=ls.device)
    return torch.where(bad > 0, nan, ls.double()), torch.where(bad > 0, nan, cor.double())


def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 512, at: str = "") -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``, as the surface computes them:
    per-batch summed losses accumulated in float64, divided by the number of samples. Outputs that are NaN
    or infinite for any sample are refused (``finite.NonFiniteOutputError``, counting them; ``at`` says where).
    Cost: one forward pass."""
    ls, c, bad = loss_sums(model, x, y, batch_size)
    refuse_nonfinite(bad, len(x), at, "loss or accuracy")
    return float(ls.double().item()) / len(x), float(c.item()) / len(x)


def point_seed(seed: int, index: int) -> int:
    """The attack seed of grid point ``index`` in ``reattack`` mode: a hash of (seed, index), below 2**31."""
    h = hashlib.sha256(f"landscape-surface:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


# --- the steps of loss_surface -------------------------------------------------------------------------

@dataclass
class _Plan:
    """The checked arguments of a surface: its directions, grids and attack."""
    directions: list
    meta: dict                      # the DirectionSet's meta ({} for plain dicts)
    xs: np.ndarray
    ys: np.ndarray | None
    attack: AttackSpec | None
    adv_mode: str

    @property
    def dim(self) -> int:
        return len(self.directions)

    @property
    def fixed(self) -> bool:
        """PGD examples made once at theta0 for every point."""
        return self.attack is not None and self.adv_mode == "fixed"

    @property
    def reattack(self) -> bool:
        """PGD re-run against the moved model at every point."""
        return self.attack is not None and self.adv_mode == "reattack"

    def coords(self, idx: int) -> tuple[float, ...]:
        """(a,) or (a, b) of the flat grid index ``idx`` (x along columns)."""
        a = float(self.xs[idx % len(self.xs)])
        return (a,) if self.ys is None else (a, float(self.ys[idx // len(self.xs)]))


def _plan(directions: Any, x_grid: Any, y_grid: Any, loss: str, adv_mode: str, batch_size: int,
          attack: AttackSpec | None) -> _Plan:
    """Check the arguments (``ConfigError`` naming what is wrong) and make the directions list, the grids
    and, for the adversarial loss, the attack."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    if adv_mode not in ADV_MODES:
        raise ConfigError(f"unknown adversarial mode {adv_mode!r}; choose from {', '.join(ADV_MODES)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(directions, Mapping):
        directions = [directions]
    meta = dict(directions.meta) if isinstance(directions, DirectionSet) else {}
    directions = list(directions)
    if len(directions) not in (1, 2):
        raise ConfigError(f"a surface takes one or two directions, got {len(directions)}")
    xs = parse_grid(x_grid, "x grid")
    if len(directions) == 2 and y_grid is None:
        raise ConfigError("a 2D surface needs a y grid")
    if len(directions) == 1 and y_grid is not None:
        raise ConfigError("a y grid was given but only one direction")
    ys = parse_grid(y_grid, "y grid") if len(directions) == 2 else None
    if loss == "adversarial":
        if attack is None:
            raise ConfigError("the adversarial loss needs attack=AttackSpec(eps=...)")
        if not isinstance(attack, AttackSpec):
            raise ConfigError(f"attack must be an AttackSpec, got {type(attack).__name__}")
        if attack.steps < 1:
            raise ConfigError(f"PGD needs at least one step, got {attack.steps}")
    else:
        attack = None
    return _Plan(directions, meta, xs, ys, attack, adv_mode)


def _resolve_model_data(model: nn.Module, data: Any) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """The model's device and ``data`` as (inputs, labels) on it."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        raise LandscapeError("the model has no parameters to move") from None
    return (device, *_resolve_data(data, device))


def _resolve_data(data: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(data, "tensors") and callable(data.tensors):
        x, y = data.tensors(device=device)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise LandscapeError("data must be (inputs, labels) tensors or a landscape Dataset")
    if len(x) != len(y) or len(x) == 0:
        raise LandscapeError(f"data hold {len(x)} inputs and {len(y)} labels; need the same, non-zero number")
    return x.to(device), y.to(device)


def _digest_tensors(tensors: Sequence[torch.Tensor]) -> str:
    return tensor_digest(("", t) for t in tensors)


def _new_result(model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: _Plan, mover: WeightMover, loss: str,
                batch_size: int, seed: int, meta: Mapping[str, Any] | None, device: torch.device) -> SurfaceResult:
    """An empty result (NaN arrays, nothing done) with every setting and its hash (``meta`` recorded as
    ``settings["info"]``, not hashed). Cost: one pass over the model's state and the data for the digests."""
    shape = (len(plan.xs),) if plan.ys is None else (len(plan.ys), len(plan.xs))
    attack = plan.attack
    settings = {"dim": plan.dim, "x": plan.xs.tolist(), "y": None if plan.ys is None else plan.ys.tolist(),
                "loss": loss, "attack": {"mode": plan.adv_mode, **attack.to_dict()} if attack else None,
                "buffers": "moved" if mover.buffers else "fixed" if any(True for _ in model.buffers()) else "none",
                "batch_size": int(batch_size), "seed": int(seed), "samples": len(x),
                "directions": plan.meta,
                "digests": {"model": _digest_tensors([t for _, t in sorted(model.state_dict().items())]),
                            "data": _digest_tensors([x, y]),
                            "directions": directions_digest(plan.directions)}}
    settings = json.loads(json.dumps(settings, default=str))  # what the JSON file will hold
    shash = settings_hash(settings)
    settings["info"] = json.loads(json.dumps(dict(meta or {}), default=str))  # recorded, not hashed
    settings["tf32"] = False  # recorded, not hashed: loss_surface always runs with TF32 off (full_float32)
    return SurfaceResult(plan.xs, plan.ys, np.full(shape, np.nan), np.full(shape, np.nan),
                         np.zeros(shape, dtype=bool), settings, shash, device=str(device))


def _open_storage(result: SurfaceResult, out: str | os.PathLike | None, plan: _Plan, resume: bool,
                  overwrite: bool) -> tuple[SurfaceResult, dict[str, Path] | None]:
    """With ``out``: the result's files, and the stored run resumed (or refused) or a new one started, on
    rank 0 (``prepare_storage``); without: no files."""
    if out is None:
        return result, None
    paths = surface_paths(out)
    result.files = {k: str(v) for k, v in paths.items()
                    if k in ("json", "npz", "directions") or (k == "adversarial" and plan.fixed)}
    return run_on_main(prepare_storage, result, paths, plan.directions, plan.meta, resume, overwrite), paths


class _Collector:
    """Rank 0's side of the loop: keeps finished points (index, loss sum, correct) until a save, then writes
    them into the result, adds the time spent to ``result.seconds`` and stores the result (when it has
    files) after every ``save_every`` points, else every ``save_seconds`` seconds, and at the end."""

    def __init__(self, result: SurfaceResult, paths: dict[str, Path] | None, n: int, t0: float,
                 save_every: int | None, save_seconds: float):
        self.result, self.paths, self.n = result, paths, n
        self.save_every, self.save_seconds = save_every, save_seconds
        self.pending: list = []
        self.t_mark = t0
        self.last_save, self.since_save = time.monotonic(), 0

    def add(self, items: list) -> None:
        self.pending.extend(items)

    def flush(self) -> None:
        if not self.pending:
            return
        idx = np.asarray([int(p[0]) for p in self.pending])
        losses = np.asarray([float(p[1]) for p in self.pending])  # float32 -> float64 is exact
        correct = np.asarray([float(p[2]) for p in self.pending])
        self.result.loss.reshape(-1)[idx] = losses / self.n
        self.result.accuracy.reshape(-1)[idx] = correct / self.n
        self.result.mask.reshape(-1)[idx] = True
        self.pending.clear()

    def save(self) -> None:
        self.flush()
        self.result.seconds = self.result.seconds + (time.perf_counter() - self.t_mark)
        self.t_mark = time.perf_counter()
        if self.paths is not None:
            save_surface(self.result, self.paths)

    def point_done(self) -> None:
        """Count one point; save when one is due."""
        self.since_save += 1
        if self.paths is not None and ((self.save_every is not None and self.since_save >= self.save_every)
                                       or time.monotonic() - self.last_save >= self.save_seconds):
            self.save()
            self.last_save, self.since_save = time.monotonic(), 0


def _evaluate_points(model: nn.Module, mover: WeightMover, plan: _Plan, mask: np.ndarray, x: torch.Tensor,
                     y: torch.Tensor, x_eval: torch.Tensor, batch_size: int, seed: int, collector: _Collector,
                     callback: Callback) -> None:
    """Compute every grid point not yet in ``mask``, handing the results to ``collector`` (on rank 0),
    which saves whatever was computed even when interrupted. Points are claimed from a queue (a plain
    counter in one process, the store's under torchrun) and their (index, loss sum, correct) go to rank 0.
    One process keeps them as device tensors until a save (no per-point synchronization); ranks send plain
    numbers (float64 sums, exact through JSON)."""
    w = world()
    batches = cut_batches(x_eval, y, batch_size)
    flat_mask = mask.reshape(-1)
    todo = [int(i) for i in np.flatnonzero(~flat_mask)]
    total, done_before = flat_mask.size, int(flat_mask.sum())
    queue = TaskQueue(len(todo), "surface")
    try:
        # Without reattack the whole loop runs in inference mode (PGD needs autograd, so not then).
        with mover, (contextlib.nullcontext() if plan.reattack else torch.inference_mode()):
            while (k := queue.claim()) is not None:
                idx = todo[k]
                mover.move(plan.coords(idx))
                if plan.reattack:
                    try:
                        xa = plan.attack.examples(model, x, y, point_seed(seed, idx))  # type: ignore[union-attr]
                        ls, cor, bad = loss_sums(model, xa, y, batch_size)
                    except NonFiniteOutputError:   # the moved model's outputs at PGD's iterates: a NaN point
                        ls = cor = bad = torch.ones((), dtype=torch.float64, device=x.device)
                else:
                    ls, cor, bad = batch_sums(model, batches)
                ls, cor = _point(ls, cor, bad)
                queue.put(k, [idx, float(ls), float(cor)] if w.active else (idx, ls, cor))
                if not w.main:
                    continue
                collector.add(queue.drain())
                if callback is not None:
                    callback(done_before + queue.received, total)
                collector.point_done()
            if w.main and queue.received < len(todo):  # wait for the other ranks' last points
                got = queue.drain(wait_for=len(todo))
                collector.add(got)
                if callback is not None and got:
                    callback(done_before + queue.received, total)
    finally:
        # Whatever happened (an interrupt, an error), keep every point that was computed.
        if w.main:
            collector.save()


def _finish(result: SurfaceResult) -> SurfaceResult:
    """Under torchrun every rank returns rank 0's complete arrays."""
    if world().active:
        arrays = broadcast_from_main((result.loss, result.accuracy, result.mask, result.seconds))
        result.loss, result.accuracy, result.mask, result.seconds = arrays
    return result


# --- the surface --------------------------------------------------------------------------------------

def loss_surface(model: nn.Module, data: Any, directions: Any, x_grid: Any, y_grid: Any = None,
                 loss: str = "clean", adv_mode: str = "fixed", attack: AttackSpec | None = None,
                 batch_size: int = 512, seed: int = 0, out: str | os.PathLike | None = None,
                 resume: bool = False, overwrite: bool = False, save_every: int | None = None,
                 save_seconds: float = 10.0, meta: Mapping[str, Any] | None = None,
                 callback: Callback = None) -> SurfaceResult:
    """Loss and accuracy of ``model`` at theta0 + a*d1 (+ b*d2) for a in ``x_grid`` (and b in ``y_grid``).

    ``directions``: one direction dict (1D) or a sequence of one or two (a ``DirectionSet`` adds its
    ``meta`` to the settings); entries for buffers (an interpolation's BatchNorm statistics) move the
    buffers too (``settings["buffers"]``: "moved", "fixed" (the model's everywhere) or "none").
    Grids: ``"start:stop:num"`` or sequences.
    ``loss="adversarial"`` needs ``attack`` (an ``AttackSpec``): ``adv_mode="fixed"`` makes PGD
    examples once at theta0 (seed ``seed``; the very examples ``HessianOperator`` makes with the same spec
    and seed) and evaluates every point on them; ``"reattack"`` re-runs PGD against the moved model at each
    point, seeded by ``point_seed(seed, index)`` so that any order of evaluation (and a resume) gives the same
    numbers. ``batch_size`` is the forward batch of the evaluation, independent of the attack's batches.
    The model is evaluated in eval mode under ``torch.inference_mode`` on ``data`` moved to its device.

    ``meta`` (e.g. the checkpoint's path, the dataset) is recorded in ``settings["info"]`` but not hashed.
    With ``out``, results are written atomically after every ``save_every`` points (default: every
    ``save_seconds`` seconds) and at the end; ``resume=True`` continues a stored run with the same
    settings (refused with a ``LandscapeError`` naming what differs otherwise). ``callback(done, total)``
    runs after each point (under torchrun: on rank 0, counting the points rank 0 has received). Cost per
    point: one forward pass over the samples (clean, fixed), plus one PGD attack (reattack: steps
    forward+backward passes). Under torchrun every rank returns the same, complete result.

    Outputs that are not finite: the model itself (the centre) is refused before any work or file
    (``finite.NonFiniteOutputError``, one line counting the samples; one forward pass over the samples), and
    so are PGD examples made at it; a grid point where the MOVED model's outputs are NaN or infinite for
    some sample (far out, the weights can overflow) is computed but holds NaN loss and accuracy (its mask
    set: not redone on resume; null in the JSON), never an argmax of NaN.
    """
    plan = _plan(directions, x_grid, y_grid, loss, adv_mode, batch_size, attack)
    device, x, y = _resolve_model_data(model, data)
    mover = WeightMover(model, plan.directions)  # validates the directions
    with full_float32():   # the centre, the model itself, must have finite outputs: refused before any file
        loss_and_accuracy(model, x, y, batch_size, at="at the centre of the surface (the model itself)")
    result = _new_result(model, x, y, plan, mover, loss, batch_size, seed, meta, device)
    result, paths = _open_storage(result, out, plan, resume, overwrite)
    t0 = time.perf_counter()
    with eval_mode(model), full_float32():
        # Inputs every point is evaluated on: clean data, or PGD examples made once at theta0.
        x_eval = x
        if plan.fixed:
            x_eval = _fixed_adversarial(model, x, y, plan.attack, seed, paths, result.settings_hash)  # type: ignore
        collector = _Collector(result, paths, len(x), t0, save_every, save_seconds)
        _evaluate_points(model, mover, plan, result.mask, x, y, x_eval, batch_size, seed, collector, callback)
    return _finish(result)


def _fixed_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, seed: int,
                       paths: dict[str, Path] | None, shash: str) -> torch.Tensor:
    """PGD examples at theta0 (seeded); stored with the surface and reused on resume. Under torchrun rank 0
    reads the stored ones and broadcasts them, or each rank attacks its shard of attack batches and the
    shards are gathered (one all-gather)."""
    w = world()
    p = paths["adversarial"] if paths is not None else None
    stored = stored_adversarial(p, shash, x) if w.main else None
    if broadcast_from_main(stored is not None):
        return broadcast_tensor(stored if stored is not None else torch.empty_like(x))
    lo, hi = shard_bounds(len(x), w, attack.batch_size)
    x_adv = attack.examples(model, x[lo:hi], y[lo:hi], seed, start=lo)
    if w.active:
        x_adv = all_gather_rows(x_adv, shard_sizes(len(x), w.size, attack.batch_size))
    if p is not None and w.main:
        save_adversarial(p, x_adv, y, shash)
    return x_adv


__all__ = ["SurfaceResult", "loss_surface", "parse_grid", "load_surface", "load_directions", "surface_paths",
           "loss_and_accuracy", "point_seed", "settings_hash", "LOSSES", "ADV_MODES"]
