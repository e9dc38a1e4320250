"""Atomic file writes (temp file in the same folder + ``os.replace``): a reader or a crash never sees half a file."""
from __future__ import annotations

import fcntl
import io
import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import BusyError, ConfigError

LOCK_NAME = ".landscape.lock"


def current_umask() -> int:
    """The process's umask (read from /proc on Linux, else by setting and restoring it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would follow the umask
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    return _atomic(path, lambda f: torch.save(obj, f))


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; tensors, arrays and non-finite floats are converted."""
    return write_text(path, json.dumps(jsonable(obj), indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda f: f.write(text), mode="w")


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez`` to ``path`` atomically."""
    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        f.write(buf.getvalue())
    return _atomic(path, write)


def save_figure(fig: Any, path: str | os.PathLike, dpi: float | None = None) -> Path:
    """``fig.savefig`` to ``path`` atomically, in the format its suffix names (png, pdf, svg, ...)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or None

    def write(f):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi)
        f.write(buf.getvalue())
    return _atomic(path, write)


def safe_name(name: str, what: str = "--name") -> str:
    """``name`` if it is a plain file name (no path separator, not ``.``/``..``, not hidden, printable),
    else a ``ConfigError``: a name must never lead out of the folder it is joined to."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name
           or (os.altsep and os.altsep in name) or name.startswith((".", "-")) or not name.isprintable())
    if bad:
        raise ConfigError(f"{what} {name!r} is not a plain name: use letters, digits, '-', '_' or '.', "
                             "without '/' and not starting with '.' or '-'")
    return name


@contextmanager
def lock_folder(folder: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) while the block runs: ``fcntl.flock`` on
    ``folder/.landscape.lock``, which records the holder's pid and command. A second holder, in this or
    another process, gets a ``BusyError`` naming the first, at once (no waiting). The lock dies with the
    process (a killed run leaves no stale lock); the file stays."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip().replace("\n", " ") or "another process"
            raise BusyError(f"{folder} is in use by {holder}; wait for it to finish, or choose another output "
                            "folder") from None
        cmd = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({cmd})\n".encode(), 0)
        try:
            yield folder
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
