"""1D / 2D loss and accuracy surfaces: theta0 + a*d1 (+ b*d2) on a grid, clean or adversarial, resumable.

How the loop stays lean: the model's parameters are pointed (``param.data``) at views of one flat working
buffer per (device, dtype); each grid point is one ``torch.add(theta0, d1, alpha=a, out=work)`` (plus one
``add_`` for d2) computed from a saved copy of theta0, never cumulatively. The original parameter tensors
are never written to, and are put back at the end, so the weights afterwards are bit-identical (same
storage, same values). Losses stay on the device until a save, so there is no per-point synchronization.

Storage (``out``): ``surface.npz`` (x, y, loss, accuracy, mask, settings_hash) and ``surface.json`` (every
setting, its hash, and the arrays with null where not yet computed), both written atomically every few
points; ``directions.pt`` (the directions, so a resume uses exactly them) and, for the fixed adversarial
mode, ``adversarial.npz`` (the adversarial examples made at theta0).

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
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..attack_spec import AttackSpec
from ..attacks import eval_mode
from ..data import cut_batches
from ..digest import tensor_digest
from ..distributed import (TaskQueue, all_gather_rows, broadcast_from_main, broadcast_tensor, run_on_main,
                           shard_bounds, shard_sizes, world)
from ..errors import ConfigError, LandscapeError
from ..io import atomic_torch_save, read_json, save_npz, write_json
from .directions import DirectionSet, directions_digest

LOSSES = ("clean", "adversarial")
ADV_MODES = ("fixed", "reattack")


# --- grids --------------------------------------------------------------------------------------------

def parse_grid(spec: Any, name: str = "grid") -> np.ndarray:
    """``"start:stop:num"`` -> ``num`` evenly spaced values from start to stop (both included), as float64.

    A sequence of numbers is taken as it is. Raises ``ConfigError`` on anything else.
    """
    if isinstance(spec, str):
        parts = spec.strip().split(":")
        if len(parts) != 3:
            raise ConfigError(f"{name} {spec!r} is not of the form start:stop:num (e.g. -1:1:21)")
        try:
            start, stop = float(parts[0]), float(parts[1])
            num = int(parts[2])
        except ValueError:
            raise ConfigError(f"{name} {spec!r} is not of the form start:stop:num with numbers start, stop "
                              "and an integer num") from None
        if not (math.isfinite(start) and math.isfinite(stop)):
            raise ConfigError(f"{name} {spec!r}: start and stop must be finite")
        if num < 1:
            raise ConfigError(f"{name} {spec!r}: num must be at least 1")
        if num > 1 and start == stop:
            raise ConfigError(f"{name} {spec!r}: start equals stop")
        return np.linspace(start, stop, num, dtype=np.float64)
    try:
        arr = np.asarray(spec, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be start:stop:num or a list of numbers, got {spec!r}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must hold at least one finite value")
    return arr


# --- results ------------------------------------------------------------------------------------------

def _nan_to_none(a: np.ndarray) -> Any:
    return [_nan_to_none(r) for r in a] if a.ndim > 1 else [None if not np.isfinite(v) else float(v) for v in a]


@dataclass
class SurfaceResult:
    """Loss and accuracy on a grid. Arrays have shape ``(len(y), len(x))`` (x along columns), or ``(len(x),)``
    in 1D; ``mask`` is True where a point was computed (NaN elsewhere)."""
    x: np.ndarray
    y: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray
    mask: np.ndarray
    settings: dict = field(default_factory=dict)
    settings_hash: str = ""
    seconds: float = 0.0
    device: str = ""
    files: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def complete(self) -> bool:
        return bool(self.mask.all())

    def at(self, a: float, b: float | None = None) -> tuple[float, float] | None:
        """(loss, accuracy) at the grid point (a, b), or None if it is not on the grid or not computed."""
        i = np.flatnonzero(self.x == a)
        if i.size == 0:
            return None
        idx: tuple = (int(i[0]),)
        if self.dim == 2:
            j = np.flatnonzero(self.y == (0.0 if b is None else b))
            if j.size == 0:
                return None
            idx = (int(j[0]), int(i[0]))
        if not self.mask[idx]:
            return None
        return float(self.loss[idx]), float(self.accuracy[idx])

    def to_dict(self) -> dict:
        """JSON-ready: every setting, its hash, the grids and arrays (null where not computed)."""
        done = int(self.mask.sum())
        summary: dict[str, Any] = {}
        centre = self.at(0.0, 0.0 if self.dim == 2 else None)
        if centre is not None:
            summary["center"] = {"loss": centre[0], "accuracy": centre[1]}
        if done:
            k = np.unravel_index(np.nanargmin(np.where(self.mask, self.loss, np.nan)), self.loss.shape)
            at = {"x": float(self.x[k[-1]])}
            if self.dim == 2:
                at["y"] = float(self.y[k[0]])  # type: ignore[index]
            summary["min_loss"] = {"loss": float(self.loss[k]), **at}
            summary["max_loss"] = float(np.nanmax(np.where(self.mask, self.loss, np.nan)))
        return {"landscape_version": __version__, "kind": "surface", "dim": self.dim,
                "settings": self.settings, "settings_hash": self.settings_hash,
                "complete": self.complete, "points_done": done, "points_total": int(self.mask.size),
                **summary, "seconds": self.seconds, "device": self.device, "files": self.files,
                "x": [float(v) for v in self.x], "y": None if self.y is None else [float(v) for v in self.y],
                "loss": _nan_to_none(self.loss), "accuracy": _nan_to_none(self.accuracy),
                "mask": self.mask.astype(int).tolist()}

    def to_frame(self):
        """One row per grid point: x, (y), loss, accuracy, done."""
        import pandas as pd
        if self.dim == 1:
            return pd.DataFrame({"x": self.x, "loss": self.loss, "accuracy": self.accuracy, "done": self.mask})
        yy, xx = np.meshgrid(self.y, self.x, indexing="ij")
        return pd.DataFrame({"x": xx.ravel(), "y": yy.ravel(), "loss": self.loss.ravel(),
                             "accuracy": self.accuracy.ravel(), "done": self.mask.ravel()})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SurfaceResult":
        x = np.asarray(d["x"], dtype=np.float64)
        y = None if d.get("y") is None else np.asarray(d["y"], dtype=np.float64)
        def arr(key: str) -> np.ndarray:
            return np.asarray(d[key], dtype=object).astype(np.float64)  # None -> nan
        loss, acc = arr("loss"), arr("accuracy")
        mask = np.asarray(d["mask"], dtype=bool) if d.get("mask") is not None else np.isfinite(loss)
        return cls(x, y, loss, acc, mask, dict(d.get("settings") or {}), str(d.get("settings_hash", "")),
                   float(d.get("seconds") or 0.0), str(d.get("device", "")), dict(d.get("files") or {}))


def surface_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The files of a surface stored at ``out``: a folder (``surface.json`` ...) or a ``NAME.json``/``.npz`` path."""
    out = Path(out)
    if out.suffix in (".json", ".npz"):
        stem, folder = out.stem, out.parent
        return {"json": folder / f"{stem}.json", "npz": folder / f"{stem}.npz",
                "adversarial": folder / f"{stem}.adversarial.npz", "directions": folder / f"{stem}.directions.pt"}
    return {"json": out / "surface.json", "npz": out / "surface.npz", "adversarial": out / "adversarial.npz",
            "directions": out / "directions.pt"}


def load_surface(path: str | os.PathLike) -> SurfaceResult:
    """Read a stored surface (its folder, JSON or NPZ); arrays come from the NPZ when it is there."""
    paths = surface_paths(path)  # for a NAME.npz path, its own NPZ and sibling JSON
    d: dict = {}
    if paths["json"].is_file():
        try:
            d = read_json(paths["json"])
        except (OSError, ValueError) as e:
            raise LandscapeError(f"cannot read {paths['json']}: {e}") from e
        if d.get("kind") != "surface":
            raise LandscapeError(f"{paths['json']} is not a surface result")
    if paths["npz"].is_file():
        try:
            with np.load(paths["npz"], allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # e.g. a truncated file
            raise LandscapeError(f"cannot read {paths['npz']}: {e}") from e
        for key in ("x", "loss", "accuracy", "mask"):
            if key not in arrays:
                raise LandscapeError(f"{paths['npz']} is not a surface result (no {key!r} array)")
        y = arrays.get("y")
        return SurfaceResult(arrays["x"], None if y is None or y.size == 0 else y, arrays["loss"],
                             arrays["accuracy"], arrays["mask"].astype(bool), dict(d.get("settings") or {}),
                             str(d.get("settings_hash") or arrays.get("settings_hash", "")),
                             float(d.get("seconds") or 0.0), str(d.get("device", "")), dict(d.get("files") or {}))
    if d:
        return SurfaceResult.from_dict(d)
    raise LandscapeError(f"no surface result at {path}")


def load_directions(out: str | os.PathLike, device: str | torch.device = "cpu") -> DirectionSet | None:
    """The directions stored with a surface at ``out`` (None if there are none)."""
    p = surface_paths(out)["directions"]
    if not p.is_file():
        return None
    try:
        obj = torch.load(p, map_location=device, weights_only=True)
        return DirectionSet([dict(d) for d in obj["directions"]], json.loads(obj["meta"]))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LandscapeError(f"cannot read the stored directions {p}: {str(e).splitlines()[0][:120]}") from e


# --- evaluation ---------------------------------------------------------------------------------------

def _sums(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number correct, as device tensors (no synchronization). One forward pass
    per batch; the caller chooses the grad mode. Batch sums are accumulated in float64 (one batch: its
    float32 sum, made float64 by the caller)."""
    if len(batches) == 1:
        xb, yb = batches[0]
        logits = model(xb)
        return F.cross_entropy(logits, yb, reduction="sum"), (logits.argmax(1) == yb).sum()
    loss_sum = correct = None
    for xb, yb in batches:
        logits = model(xb)
        ls = F.cross_entropy(logits, yb, reduction="sum").double()
        c = (logits.argmax(1) == yb).sum()
        loss_sum = ls if loss_sum is None else loss_sum + ls
        correct = c if correct is None else correct + c
    return loss_sum, correct  # type: ignore[return-value]


def _eval_sums(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
               ) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return _sums(model, batches)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``, as the surface computes them:
    per-batch summed losses accumulated in float64, divided by the number of samples."""
    with eval_mode(model):
        ls, c = _eval_sums(model, cut_batches(x, y, batch_size))
    return float(ls.double().item()) / len(x), float(c.item()) / len(x)


def point_seed(seed: int, index: int) -> int:
    """The attack seed of grid point ``index`` in ``reattack`` mode: a hash of (seed, index), below 2**31."""
    h = hashlib.sha256(f"landscape-surface:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class _WeightMover:
    """Context manager pointing the model's parameters at theta0 + a*d1 + b*d2 (one flat buffer per dtype).

    Directions may also hold entries for buffers (an interpolation's BatchNorm running statistics): each such
    buffer is set to b0 + a*d1[b] (+ b*d2[b]), computed in float64 from a saved b0 (running_var clamped at 0,
    integer buffers rounded), and put back on exit."""

    def __init__(self, model: nn.Module, directions: Sequence[Mapping[str, torch.Tensor]]):
        params = list(model.named_parameters())
        names = {n for n, _ in params}
        buffers = dict(model.named_buffers())
        for k, d in enumerate(directions):
            missing = [n for n in names if n not in d]
            extra = [n for n in d if n not in names and n not in buffers]
            if missing or extra:
                what = f"lacks parameter {missing[0]}" if missing else f"has an unknown entry {extra[0]}"
                raise LandscapeError(f"direction {k + 1} does not fit the model: it {what}")
            for n, p in [*params, *((b, t) for b, t in buffers.items() if b in d)]:
                if tuple(d[n].shape) != tuple(p.shape):
                    raise LandscapeError(f"direction {k + 1} has shape {tuple(d[n].shape)} for {n}, the model "
                                         f"{tuple(p.shape)}")
        self.buffers: list[tuple[str, torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []
        with torch.no_grad():
            for n, b in buffers.items():
                if not any(n in d for d in directions):
                    continue
                base = b.detach().double().clone()
                ds = [d[n].detach().to(device=b.device, dtype=torch.float64) if n in d else torch.zeros_like(base)
                      for d in directions]
                if not all(bool(torch.isfinite(v).all()) for v in ds):
                    raise LandscapeError(f"a direction holds NaN or infinite entries (buffer {n})")
                self.buffers.append((n, b, b.detach().clone(), ds))
        groups: dict[tuple, list[tuple[str, nn.Parameter]]] = {}
        for n, p in params:
            groups.setdefault((p.device, p.dtype), []).append((n, p))
        self.groups = []
        self.swaps: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor, bool]] = []
        with torch.no_grad():
            for (dev, dt), members in groups.items():
                theta0 = torch.cat([p.detach().reshape(-1) for _, p in members])  # a new tensor
                dirs = [torch.cat([d[n].detach().to(device=dev, dtype=dt).reshape(-1) for n, _ in members])
                        for d in directions]
                if not all(bool(torch.isfinite(v).all()) for v in dirs):
                    raise LandscapeError("a direction holds NaN or infinite entries")
                work = theta0.clone()
                off = 0
                for _, p in members:
                    k = p.numel()
                    self.swaps.append((p, p.data, work[off:off + k].view(p.shape), p.requires_grad))
                    off += k
                self.groups.append((theta0, dirs, work))

    def __enter__(self) -> "_WeightMover":
        for p, _, view, _ in self.swaps:
            p.data = view
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc) -> None:
        for p, original, _, rg in self.swaps:
            p.data = original
            p.requires_grad_(rg)
        with torch.no_grad():
            for _, b, original, _ in self.buffers:
                b.copy_(original)

    def move(self, coords: Sequence[float]) -> None:
        """Set the weights to theta0 + sum_k coords[k] * d_k (from the saved theta0, not cumulatively).
        No autograd mode needed: none of these tensors requires grad."""
        for theta0, dirs, work in self.groups:
            torch.add(theta0, dirs[0], alpha=coords[0], out=work)
            for c, d in zip(coords[1:], dirs[1:]):
                work.add_(d, alpha=c)
        for name, b, b0, dirs in self.buffers:
            v = b0.double()
            for c, d in zip(coords, dirs):
                v = v + c * d
            if name.endswith("running_var"):
                v = v.clamp_min(0.0)  # extrapolating a variance past an endpoint can go negative
            b.copy_(v if b.is_floating_point() else v.round())


# --- settings, hashing, storage ----------------------------------------------------------------------

def _digest_tensors(tensors: Sequence[torch.Tensor]) -> str:
    return tensor_digest(("", t) for t in tensors)


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the settings as canonical JSON (the unhashed ``info`` entry left out)."""
    text = json.dumps({k: v for k, v in settings.items() if k != "info"}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            def short(v: Any) -> str:
                s = json.dumps(v, default=str)
                return s if len(s) <= 40 else s[:37] + "..."
            out.append(f"{prefix}{k}: stored {short(a)}, now {short(b)}")
    return out


def _save(result: SurfaceResult, paths: dict[str, Path]) -> None:
    save_npz(paths["npz"], x=result.x, y=np.zeros(0) if result.y is None else result.y, loss=result.loss,
             accuracy=result.accuracy, mask=result.mask, settings_hash=np.asarray(result.settings_hash),
             landscape_version=np.asarray(__version__))
    write_json(paths["json"], result.to_dict())


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


def loss_surface(model: nn.Module, data: Any, directions: Any, x_grid: Any, y_grid: Any = None,
                 loss: str = "clean", adv_mode: str = "fixed", eps: float | None = None, steps: int = 10,
                 step_size: float | None = None, attack_norm: str = "linf", restarts: int = 1,
                 batch_size: int = 512, seed: int = 0, out: str | os.PathLike | None = None,
                 resume: bool = False, overwrite: bool = False, save_every: int | None = None,
                 save_seconds: float = 10.0, meta: Mapping[str, Any] | None = None,
                 callback: Callable[[int, int], None] | None = None,
                 attack: AttackSpec | None = None) -> SurfaceResult:
    """Loss and accuracy of ``model`` at theta0 + a*d1 (+ b*d2) for a in ``x_grid`` (and b in ``y_grid``).

    ``directions``: one direction dict (1D) or a sequence of one or two (a ``DirectionSet`` adds its
    ``meta`` to the settings); entries for buffers (an interpolation's BatchNorm statistics) move the
    buffers too (``settings["buffers"]``: "moved", "fixed" (the model's everywhere) or "none").
    Grids: ``"start:stop:num"`` or sequences.
    ``loss="adversarial"`` needs ``attack`` (an ``AttackSpec``; else one made from eps, steps, step_size,
    attack_norm and restarts, with the spec's default attack batch size): ``adv_mode="fixed"`` makes PGD
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
    """
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    if adv_mode not in ADV_MODES:
        raise ConfigError(f"unknown adversarial mode {adv_mode!r}; choose from {', '.join(ADV_MODES)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if isinstance(directions, Mapping):
        directions = [directions]
    dir_meta = dict(directions.meta) if isinstance(directions, DirectionSet) else {}
    directions = list(directions)
    if len(directions) not in (1, 2):
        raise ConfigError(f"a surface takes one or two directions, got {len(directions)}")
    dim = len(directions)
    xs = parse_grid(x_grid, "x grid")
    if dim == 2 and y_grid is None:
        raise ConfigError("a 2D surface needs a y grid")
    if dim == 1 and y_grid is not None:
        raise ConfigError("a y grid was given but only one direction")
    ys = parse_grid(y_grid, "y grid") if dim == 2 else None
    if loss == "adversarial":
        if attack is None:
            if eps is None:
                raise ConfigError("the adversarial loss needs eps")
            attack = AttackSpec(eps=eps, norm=attack_norm, steps=steps, step_size=step_size, restarts=restarts)
        if attack.steps < 1:
            raise ConfigError(f"PGD needs at least one step, got {attack.steps}")
    else:
        attack = None
    try:
        device = next(model.parameters()).device
    except StopIteration:
        raise LandscapeError("the model has no parameters to move") from None
    x, y = _resolve_data(data, device)
    mover = _WeightMover(model, directions)  # validates the directions
    shape = (len(xs),) if ys is None else (len(ys), len(xs))
    settings = {"dim": dim, "x": xs.tolist(), "y": None if ys is None else ys.tolist(), "loss": loss,
                "attack": {"mode": adv_mode, **attack.to_dict()} if attack else None,
                "buffers": "moved" if mover.buffers else "fixed" if any(True for _ in model.buffers()) else "none",
                "batch_size": int(batch_size), "seed": int(seed), "samples": len(x),
                "directions": dir_meta,
                "digests": {"model": _digest_tensors([t for _, t in sorted(model.state_dict().items())]),
                            "data": _digest_tensors([x, y]),
                            "directions": directions_digest(directions)}}
    settings = json.loads(json.dumps(settings, default=str))  # what the JSON file will hold
    shash = settings_hash(settings)
    settings["info"] = json.loads(json.dumps(dict(meta or {}), default=str))  # recorded, not hashed
    result = SurfaceResult(xs, ys, np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=bool),
                           settings, shash, device=str(device))
    paths = surface_paths(out) if out is not None else None
    if paths is not None:
        result.files = {k: str(v) for k, v in paths.items()
                        if k in ("json", "npz", "directions") or (k == "adversarial" and attack and adv_mode == "fixed")}
        result = run_on_main(_prepare_storage, result, paths, directions, dir_meta, resume, overwrite)
    w = world()

    t0 = time.perf_counter()
    with eval_mode(model):
        # Inputs every point is evaluated on: clean data, or PGD examples made once at theta0.
        if attack is not None and adv_mode == "fixed":
            x_eval = _fixed_adversarial(model, x, y, attack, seed, paths, shash)
        else:
            x_eval = x
        batches = cut_batches(x_eval, y, batch_size)
        n = len(x)
        flat_mask = result.mask.reshape(-1)
        todo = [int(i) for i in np.flatnonzero(~flat_mask)]
        total, done_before = flat_mask.size, int(flat_mask.sum())
        # Points are claimed from a queue (a plain counter in one process, the store's under torchrun) and
        # their (index, loss sum, correct) go to rank 0. One process keeps them as device tensors until a
        # save (no per-point synchronization); ranks send plain numbers (float64 sums, exact through JSON).
        queue = TaskQueue(len(todo), "surface")
        pending: list = []
        last_save, since_save = time.monotonic(), 0

        def flush() -> None:
            if not pending:
                return
            idx = np.asarray([int(p[0]) for p in pending])
            losses = np.asarray([float(p[1]) for p in pending])  # float32 -> float64 is exact
            correct = np.asarray([float(p[2]) for p in pending])
            result.loss.reshape(-1)[idx] = losses / n
            result.accuracy.reshape(-1)[idx] = correct / n
            result.mask.reshape(-1)[idx] = True
            pending.clear()

        def save() -> None:
            flush()
            result.seconds = result.seconds + (time.perf_counter() - t_mark[0])
            t_mark[0] = time.perf_counter()
            if paths is not None:
                _save(result, paths)

        t_mark = [t0]
        try:
            reattack = attack is not None and adv_mode == "reattack"
            # Without reattack the whole loop runs in inference mode (PGD needs autograd, so not then).
            with mover, (contextlib.nullcontext() if reattack else torch.inference_mode()):
                while (k := queue.claim()) is not None:
                    idx = todo[k]
                    mover.move((float(xs[idx % len(xs)]),) if ys is None else
                               (float(xs[idx % len(xs)]), float(ys[idx // len(xs)])))
                    if reattack:
                        xa = attack.examples(model, x, y, point_seed(seed, idx))
                        ls, cor = _eval_sums(model, cut_batches(xa, y, batch_size))
                    else:
                        ls, cor = _sums(model, batches)
                    queue.put(k, [idx, float(ls.double()), int(cor)] if w.active else (idx, ls, cor))
                    if not w.main:
                        continue
                    pending.extend(queue.drain())
                    since_save += 1
                    if callback is not None:
                        callback(done_before + queue.received, total)
                    if paths is not None and ((save_every is not None and since_save >= save_every)
                                              or time.monotonic() - last_save >= save_seconds):
                        save()
                        last_save, since_save = time.monotonic(), 0
                if w.main and queue.received < len(todo):  # wait for the other ranks' last points
                    got = queue.drain(wait_for=len(todo))
                    pending.extend(got)
                    if callback is not None and got:
                        callback(done_before + queue.received, total)
        finally:
            # Whatever happened (an interrupt, an error), keep every point that was computed.
            if w.main:
                save()
    if w.active:  # every rank returns rank 0's complete result
        arrays = broadcast_from_main((result.loss, result.accuracy, result.mask, result.seconds))
        result.loss, result.accuracy, result.mask, result.seconds = arrays
    return result


def _prepare_storage(result: SurfaceResult, paths: dict[str, Path], directions: list, dir_meta: dict,
                     resume: bool, overwrite: bool) -> SurfaceResult:
    """Check an existing run at ``paths`` (resume or refuse), else start a new one; returns the result to fill."""
    exists = paths["json"].is_file() or paths["npz"].is_file()
    if exists and not resume and not overwrite:
        raise LandscapeError(f"{paths['json'].parent} already holds a surface ({paths['json'].name}); "
                             "resume it (--resume) or start over (--overwrite), or choose another --out")
    if exists and resume:
        try:
            old = load_surface(paths["json"])  # its NPZ when there, else the JSON
        except LandscapeError as e:
            raise LandscapeError(f"cannot resume: {e}") from e
        stored = old.settings_hash
        if stored != result.settings_hash:
            strip = lambda d: {k: v for k, v in d.items() if k != "info"}  # noqa: E731
            diffs = _differences(strip(old.settings), strip(result.settings)) if old.settings else []
            detail = "; ".join(diffs[:4]) or f"settings hash {stored} vs {result.settings_hash}"
            raise LandscapeError(f"cannot resume {paths['json']}: it was made with different settings "
                                 f"({detail}); use the same settings, or --overwrite / another --out")
        if old.loss.shape != result.loss.shape:
            raise LandscapeError(f"cannot resume {paths['npz']}: its arrays have shape {old.loss.shape}, "
                                 f"expected {result.loss.shape}")
        result.loss, result.accuracy, result.mask = old.loss.copy(), old.accuracy.copy(), old.mask.copy()
        result.seconds = old.seconds
        return result
    if overwrite:
        for key in ("json", "npz", "adversarial", "directions"):
            paths[key].unlink(missing_ok=True)
    atomic_torch_save({"directions": [{n: t.detach().cpu() for n, t in d.items()} for d in directions],
                       "meta": json.dumps(dir_meta, default=str)}, paths["directions"])
    _save(result, paths)
    return result


def _stored_adversarial(p: Path | None, shash: str, x: torch.Tensor) -> torch.Tensor | None:
    """The adversarial examples stored at ``p`` for these settings, or None."""
    if p is None or not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            if str(z["settings_hash"]) == shash and z["x_adv"].shape == tuple(x.shape):
                return torch.from_numpy(z["x_adv"]).to(device=x.device, dtype=x.dtype)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass
    return None


def _fixed_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, seed: int,
                       paths: dict[str, Path] | None, shash: str) -> torch.Tensor:
    """PGD examples at theta0 (seeded); stored with the surface and reused on resume. Under torchrun rank 0
    reads the stored ones and broadcasts them, or each rank attacks its shard of attack batches and the
    shards are gathered (one all-gather)."""
    w = world()
    p = paths["adversarial"] if paths is not None else None
    stored = _stored_adversarial(p, shash, x) if w.main else None
    if broadcast_from_main(stored is not None):
        return broadcast_tensor(stored if stored is not None else torch.empty_like(x))
    lo, hi = shard_bounds(len(x), w, attack.batch_size)
    x_adv = attack.examples(model, x[lo:hi], y[lo:hi], seed, start=lo)
    if w.active:
        x_adv = all_gather_rows(x_adv, shard_sizes(len(x), w.size, attack.batch_size))
    if p is not None and w.main:
        save_npz(p, x_adv=x_adv.cpu().numpy(), y=y.cpu().numpy(), settings_hash=np.asarray(shash))
    return x_adv


__all__ = ["SurfaceResult", "loss_surface", "parse_grid", "load_surface", "load_directions", "surface_paths",
           "evaluate", "point_seed", "settings_hash", "LOSSES", "ADV_MODES"]
