"""A surface's result and its storage: ``SurfaceResult``, grids, files, settings hashes and resume checks.

Storage (``out``): ``surface.npz`` (x, y, loss, accuracy, mask, settings_hash) and ``surface.json`` (every
setting, its hash, and the arrays with null where not yet computed), both written atomically;
``directions.pt`` (the directions, so a resume uses exactly them) and, for the fixed adversarial mode,
``adversarial.npz`` (the adversarial examples made at theta0). Files written before a setting was renamed
load in today's words (the directions' ``norm`` as ``normalization``) and resume.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .._version import __version__
from ..errors import ConfigError, LandscapeError
from ..io import atomic_torch_save, read_json, save_npz, write_json
from .directions import DirectionSet, current_meta


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
        finite = self.mask & np.isfinite(self.loss)     # a point where the moved model diverged holds NaN
        if finite.any():
            k = np.unravel_index(np.nanargmin(np.where(finite, self.loss, np.nan)), self.loss.shape)
            at = {"x": float(self.x[k[-1]])}
            if self.dim == 2:
                at["y"] = float(self.y[k[0]])  # type: ignore[index]
            summary["min_loss"] = {"loss": float(self.loss[k]), **at}
            summary["max_loss"] = float(np.nanmax(np.where(finite, self.loss, np.nan)))
        if done - int(finite.sum()):
            summary["nonfinite_points"] = done - int(finite.sum())
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
        return cls(x, y, loss, acc, mask, _current(d.get("settings")), str(d.get("settings_hash", "")),
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


def _current(settings: Mapping[str, Any] | None) -> dict:
    """Stored settings in today's vocabulary (the directions' old ``norm`` key read as ``normalization``)."""
    out = dict(settings or {})
    if isinstance(out.get("directions"), Mapping):
        out["directions"] = current_meta(out["directions"])
    return out


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
                             arrays["accuracy"], arrays["mask"].astype(bool), _current(d.get("settings")),
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
        return DirectionSet([dict(d) for d in obj["directions"]], current_meta(json.loads(obj["meta"])))
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise LandscapeError(f"cannot read the stored directions {p}: {str(e).splitlines()[0][:120]}") from e


# --- settings, storage, resume ------------------------------------------------------------------------

# recorded with a surface but not part of its identity: the caller's meta, and the TF32 flag (always off; a
# surface stored before the flag was recorded still resumes)
UNHASHED = ("info", "tf32")


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the settings as canonical JSON (the unhashed ``UNHASHED`` entries left out)."""
    text = json.dumps({k: v for k, v in settings.items() if k not in UNHASHED}, sort_keys=True,
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


def save_surface(result: SurfaceResult, paths: dict[str, Path]) -> None:
    """Write the result's NPZ and JSON (atomically) at ``paths``."""
    save_npz(paths["npz"], x=result.x, y=np.zeros(0) if result.y is None else result.y, loss=result.loss,
             accuracy=result.accuracy, mask=result.mask, settings_hash=np.asarray(result.settings_hash),
             landscape_version=np.asarray(__version__))
    write_json(paths["json"], result.to_dict())


def prepare_storage(result: SurfaceResult, paths: dict[str, Path], directions: list, dir_meta: dict,
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
        # a run stored before a setting was renamed: its settings, read in today's words, hash the same
        if result.settings_hash not in (stored, settings_hash(old.settings) if old.settings else None):
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
    save_surface(result, paths)
    return result


def stored_adversarial(p: Path | None, shash: str, x: torch.Tensor) -> torch.Tensor | None:
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


def save_adversarial(p: Path, x_adv: torch.Tensor, y: torch.Tensor, shash: str) -> None:
    """Store the fixed-mode adversarial examples (with the settings hash they belong to) at ``p``."""
    save_npz(p, x_adv=x_adv.cpu().numpy(), y=y.cpu().numpy(), settings_hash=np.asarray(shash))


__all__ = ["SurfaceResult", "parse_grid", "surface_paths", "load_surface", "load_directions", "settings_hash",
           "save_surface", "prepare_storage", "stored_adversarial", "save_adversarial"]
