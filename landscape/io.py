"""Atomic file writes (temp file in the same folder + ``os.replace``): a reader or a crash never sees half a file.

Also what tells landscape's own files from a user's (``written_by_landscape``: a mark in the content that every
figure, page and JSON result carries) and the locks that keep two processes off one output (``lock_folder``
for folders, ``lock_file`` / ``hold_output`` for files). A file that cannot be written (a folder in the way,
a parent that is a file, a read-only folder, a full disk) is an ``OutputError`` in one line, never a raw
``NotADirectoryError`` / ``FileExistsError``."""
from __future__ import annotations

import csv
import errno
import fcntl
import gzip
import io
import json
import math
import os
import re
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ._version import __version__
from .errors import BusyError, ConfigError, OutputError
from .names import protected_reason

LOCK_NAME = ".landscape.lock"
OUTPUT_MARK = "written by landscape"   # the start of the mark in every figure and page landscape writes
MARKED_FIGURES = ("png", "pdf", "svg", "svgz", "eps", "ps")   # formats whose metadata can carry the mark
_PROBE = 64 * 1024          # bytes read from the head (and a PDF's tail) of a file to find the mark
_MAX_JSON = 64 * 1024 ** 2  # a larger file is not parsed to find a landscape_version: not ours
# an OSError on writing that the user can fix: what it means, in the one line
_OUTPUT_ERRNOS = {errno.EACCES: "is not writable", errno.EPERM: "is not writable",
                  errno.EROFS: "is on a read-only file system", errno.ENOSPC: "has no space left",
                  errno.EDQUOT: "is over its disk quota"}


def _output_error(path: Path, e: OSError, folder: Path | None = None) -> OSError:
    """The ``OutputError`` for an ``OSError`` met writing ``path`` (in ``folder``), or ``e`` itself when it is
    no mistake of the user's (a bug, a broken disk)."""
    if isinstance(e, IsADirectoryError) or e.errno == errno.EISDIR:
        return OutputError(f"cannot write {path}: it is a folder; give a file name")
    if isinstance(e, (FileExistsError, NotADirectoryError)) or e.errno in (errno.ENOTDIR, errno.EEXIST):
        return OutputError(f"cannot write {path}: {_file_in_the_way(path) or (folder or path.parent)} is a file, "
                           "not a folder")
    if e.errno in _OUTPUT_ERRNOS:
        return OutputError(f"cannot write {path}: {folder or path.parent} {_OUTPUT_ERRNOS[e.errno]} "
                           f"({e.strerror or e})")
    return e


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` that exists and is not a folder (None: there is none)."""
    anc = path.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    return anc if anc.exists() and not anc.is_dir() else None


def _make_folders(folder: Path, target: Path | None = None) -> list[Path]:
    """Create ``folder`` and its missing parents (to write ``target`` in, when given); returns the folders this
    call created, outermost first (a folder another process made meanwhile is not in the list). A file in the
    way, a folder that cannot be written: ``OutputError``."""
    def in_the_way(anc: Path) -> OutputError:
        if target is None and anc == folder:
            return OutputError(f"{folder} is a file, not a folder")
        return OutputError(f"cannot write {target or folder}: {anc} is a file, not a folder")
    missing = []
    anc = folder
    while not anc.is_dir() and anc != anc.parent:
        if anc.exists() or anc.is_symlink():
            raise in_the_way(anc)
        missing.append(anc)
        anc = anc.parent
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            if not d.is_dir():
                raise in_the_way(d) from None
        except OSError as e:
            if e.errno not in _OUTPUT_ERRNOS:
                raise
            raise OutputError(f"cannot write {target or folder}: cannot create {d}: {d.parent} "
                              f"{_OUTPUT_ERRNOS[e.errno]} ({e.strerror or e})") from None
    return created


def make_folder(folder: str | os.PathLike) -> Path:
    """``folder.mkdir(parents=True, exist_ok=True)``, with a file in the way or a folder that cannot be written
    answered by an ``OutputError`` in one line (``mkdir`` raises ``FileExistsError``/``NotADirectoryError``)."""
    _make_folders(Path(folder))
    return Path(folder)


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders of ``created`` (outermost first) that are empty, innermost first."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


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
    """Write ``path`` through ``write(f)`` on a temp file in its folder, then ``os.replace``; missing folders
    are made. A path that is a folder, a parent that is a file, a read-only or full folder: ``OutputError``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise OutputError(f"cannot write {path}: it is not a regular file (a device, pipe or socket)")
    _make_folders(path.parent, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _output_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would follow the umask
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and isinstance(_output_error(path, e), OutputError):
            raise _output_error(path, e) from None
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
    """Write ``obj`` as indented JSON atomically; tensors, arrays and non-finite floats are converted. A
    command's output (a path that ``hold_output`` holds: ``--json`` of every console script) is marked as
    landscape's: ``landscape_version`` is added to an object that lacks it (``written_by_landscape``)."""
    obj = jsonable(obj)
    if isinstance(obj, dict) and "landscape_version" not in obj and _key(Path(path)) in _HELD:
        obj = {**obj, "landscape_version": __version__}
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda f: f.write(text), mode="w")


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """A CSV table to ``path`` atomically: one line per row, the union of the rows' keys as columns (in order
    of appearance; a missing value is empty), floats to 6 significant digits (a training run's metrics.csv)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return write_text(path, buf.getvalue())


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda f: f.write(data))


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez`` to ``path`` atomically."""
    def write(f):
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        f.write(buf.getvalue())
    return _atomic(path, write)


def output_mark() -> str:
    """The mark landscape writes into its figures and pages: ``written by landscape VERSION``."""
    return f"{OUTPUT_MARK} {__version__}"


def mark_html(page: str) -> str:
    """``page`` with landscape's mark, ``<meta name="generator" content="written by landscape VERSION">``,
    first in its ``<head>`` (before any script, so ``written_by_landscape`` finds it in the first bytes)."""
    tag = f'<meta name="generator" content="{output_mark()}">'
    m = re.search(r"<head[^>]*>", page, re.IGNORECASE)
    return page[:m.end()] + tag + page[m.end():] if m else tag + page


_LEGACY_REPORT = re.compile(rb"<div class='meta'>\d+ runs \xc2\xb7 landscape ")


def written_by_landscape(path: str | os.PathLike) -> bool:
    """Whether landscape wrote the file at ``path``: the rule by which a command tells its own earlier output
    (which a re-run replaces, as users expect) from a user's file (which only ``--overwrite`` replaces). The
    mark is in the content, so it survives copies, moves and archives, and it is one that a user's file does
    not carry by chance:

    - a JSON object with a top-level ``landscape_version`` (every JSON result has one; ``write_json`` adds it
      to a command's ``--json`` that lacks it); an NPZ holding ``landscape_version`` (``surface.npz``);
    - a figure of ``save_figure`` in PNG (a ``tEXt`` chunk ``Creator``), PDF (``/Creator`` in the Info
      dictionary, near the end), SVG/SVGZ (the ``dc:creator`` agent) or EPS/PS (``%%Creator``) whose Creator
      starts with ``written by landscape``;
    - an HTML page of ``landscape-report``: ``<meta name="generator" content="written by landscape ...">``
      (``mark_html``); a page written before the mark, by its own "N runs · landscape VERSION" line.

    Everything else is the user's: a file without the mark, one in a format that cannot carry it (JPEG, TIFF,
    WebP, GIF, raw), one that cannot be read. A figure of ours edited and saved by another program loses the
    mark and becomes the user's, which is what they would expect. Cost: reads 64 KB from the file's head (and a
    PDF's tail); a JSON or HTML file up to 64 MB is read whole."""
    p = Path(path)
    try:
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            head = f.read(_PROBE)
            mark = OUTPUT_MARK.encode()
            if head.startswith(b"\x89PNG"):
                return b"tEXtCreator\x00" + mark in head
            if head.startswith(b"%PDF"):
                f.seek(max(0, p.stat().st_size - _PROBE))
                return b"/Creator (" + mark in f.read()
            if head.startswith(b"%!PS"):
                return b"%%Creator: " + mark in head
            if head.startswith(b"PK"):
                with zipfile.ZipFile(p) as z:
                    return "landscape_version.npy" in z.namelist()
            if head.startswith(b"\x1f\x8b"):
                with gzip.open(p, "rb") as g:
                    return b"<dc:title>" + mark in g.read(_PROBE)
            text = head.lstrip()
            if text.startswith((b"<?xml", b"<svg")) and b"<svg" in head:
                return b"<dc:title>" + mark in head
            if text[:1] == b"<":   # HTML
                if b'<meta name="generator" content="' + mark in head:
                    return True
                return p.stat().st_size <= _MAX_JSON and bool(_LEGACY_REPORT.search(head + f.read()))
            if text[:1] == b"{" and p.stat().st_size <= _MAX_JSON:
                d = json.loads(head + f.read())
                return isinstance(d, dict) and "landscape_version" in d
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return False
    return False


def safe_name(name: str, what: str = "--name") -> str:
    """``name`` if it is a plain file name (no path separator, not ``.``/``..``, not hidden, printable),
    else a ``ConfigError``: a name must never lead out of the folder it is joined to."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name
           or (os.altsep and os.altsep in name) or name.startswith((".", "-")) or not name.isprintable())
    if bad:
        raise ConfigError(f"{what} {name!r} is not a plain name: use letters, digits, '-', '_' or '.', "
                             "without '/' and not starting with '.' or '-'")
    return name


# --- locks: one writer per output ------------------------------------------------------------------------

def _command(command: str | None) -> str:
    return command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def _key(path: Path) -> str:
    """One spelling per file or folder (links of the parent followed; the path need not exist)."""
    if path.name in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(path.parent), path.name)


def _acquire(lock: Path, busy: Callable[[str], Exception], command: str | None) -> int:
    """``fcntl.flock`` (exclusive, no waiting) on the file ``lock`` (created if needed); returns its fd, with
    the holder's pid and command written in it. A lock held elsewhere: ``busy(holder)`` is raised. A lock file
    that its last holder removed while this one opened it is not a lock: it is opened again (so removing a
    lock file on release, while holding it, is safe)."""
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise _output_error(lock, e, lock.parent) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip().replace("\n", " ") or "another process"
            os.close(fd)
            raise busy(holder) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except OSError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({_command(command)})\n".encode(), 0)
            return fd
        os.close(fd)
        lock.parent.mkdir(parents=True, exist_ok=True)
    raise BusyError(f"{lock}: the lock file keeps being replaced; another process is using it")


def _release(fd: int, lock: Path, remove: bool) -> None:
    """Unlock ``fd`` (and remove ``lock``, while still holding it, when ``remove``)."""
    try:
        os.ftruncate(fd, 0)
        if remove:
            try:
                os.unlink(lock)
            except OSError:
                pass
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def file_lock_path(path: str | os.PathLike) -> Path:
    """Where the lock of the output file ``path`` lives: ``.NAME.lock`` beside it."""
    path = Path(path)
    name = f".{path.name}.lock"
    return path.parent / (".landscape.file.lock" if name == LOCK_NAME else name)


@dataclass
class _Hold:
    """A lock this command holds until it ends (``hold_output`` / ``hold_folder``; ``release_held``)."""
    path: Path
    what: str
    lock: Path
    fd: int
    folder: bool
    created: list[Path] = field(default_factory=list)
    fresh: bool = False    # a folder's lock file that this hold made (removed again at the end)


_HELD: dict[str, _Hold] = {}   # the running command's outputs, by _key


def held_folders() -> list[Path]:
    """The output folders the running command holds (``hold_folder``)."""
    return [h.path for h in _HELD.values() if h.folder]


def _refuse_own_files(folder: Path) -> None:
    """Refuse to lock ``folder`` for a run or a surface when one of this command's held file outputs would be
    one of the files written there (``names.protected_reason(..., becoming=folder)``): ``--json RUN/config.json``
    of a new run would replace the run's own config at the end."""
    for h in _HELD.values():
        if not h.folder:
            reason = protected_reason(h.path, becoming=[folder])
            if reason:
                raise OutputError(f"{h.what} {h.path} would replace a file that no result may replace: {reason}; "
                                  "write the output elsewhere")


def _folder_busy(folder: Path) -> Callable[[str], Exception]:
    return lambda holder: BusyError(f"{folder} is in use by {holder}; wait for it to finish, or choose another "
                                    "output folder")


def _release_folder(fd: int, folder: Path, created: list[Path], remove_lock: bool = False) -> None:
    """Unlock ``folder``; one this lock created and that holds nothing but the lock file (the command failed
    before writing) is removed with it; ``remove_lock``: the lock file goes in any case (it was not there)."""
    lock = folder / LOCK_NAME
    empty = bool(created) and folder.is_dir() and all(p.name == LOCK_NAME for p in folder.iterdir())
    _release(fd, lock, remove=empty or remove_lock)
    if empty:
        _remove_folders(created)


@contextmanager
def lock_folder(folder: str | os.PathLike, command: str | None = None, tidy: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) while the block runs: ``fcntl.flock`` on
    ``folder/.landscape.lock``, which records the holder's pid and command. A second holder, in this or
    another process, gets a ``BusyError`` naming the first, at once (no waiting). The lock dies with the
    process (a killed run leaves no stale lock); the file stays (``tidy``: a folder this call created that
    holds nothing else at the end is removed). A folder the running command already holds (``hold_folder``)
    is not locked twice. A file in the way or a folder that cannot be written: ``OutputError``; one of the
    command's ``--json``/``--plot`` outputs that would be a run's or a surface's own file in ``folder``
    (``names.protected_reason``): ``OutputError``."""
    folder = Path(folder)
    held = _HELD.get(_key(folder))
    if held is not None and held.folder:
        yield folder
        return
    _refuse_own_files(folder)
    created = _make_folders(folder)
    try:
        fd = _acquire(folder / LOCK_NAME, _folder_busy(folder), command)
    except BaseException:
        _remove_folders(created)
        raise
    try:
        yield folder
    finally:
        _release_folder(fd, folder, created if tidy else [])


def hold_folder(folder: str | os.PathLike, what: str = "output folder", command: str | None = None) -> Path:
    """``lock_folder`` held until the running command ends (``release_held``, which the console scripts'
    ``cli`` wrapper calls): taken by ``check_output(..., lock=True)`` before any work, so a second process on
    the folder is refused at once. A folder it created is removed at the end if nothing was written in it, and
    a lock file it created goes at the end (a user's existing folder is left as it was found)."""
    folder = Path(folder)
    key = _key(folder)
    if key in _HELD:
        return folder
    _refuse_own_files(folder)
    created = _make_folders(folder)
    fresh = not (folder / LOCK_NAME).exists()
    try:
        fd = _acquire(folder / LOCK_NAME, _folder_busy(folder), command)
    except BaseException:
        _remove_folders(created)
        raise
    _HELD[key] = _Hold(folder, what, folder / LOCK_NAME, fd, True, created, fresh)
    return folder


def hold_output(path: str | os.PathLike, what: str = "output", command: str | None = None) -> Path:
    """Lock the output file ``path`` until the running command ends (``release_held``): ``fcntl.flock`` on
    ``.NAME.lock`` beside it (``file_lock_path``; its folder is made if missing, and removed again at the end if
    nothing was written in it). A second process on the same output gets a ``BusyError`` naming the first, at
    once; the lock file is removed when released. Two outputs of one command on one file: ``OutputError``."""
    path = Path(path)
    key = _key(path)
    held = _HELD.get(key)
    if held is not None:
        if held.what != what:
            raise OutputError(f"{what} {path} and {held.what} {held.path} are one file; give each output its own "
                              "path")
        return path
    created = _make_folders(path.parent, path)
    lock = file_lock_path(path)
    def busy(holder: str) -> BusyError:
        return BusyError(f"{what} {path} is being written by {holder}; wait for it to finish, or choose another "
                         "path")
    try:
        fd = _acquire(lock, busy, command)
    except BaseException:
        _remove_folders(created)
        raise
    _HELD[key] = _Hold(path, what, lock, fd, False, created)
    return path


def release_held() -> None:
    """Release every lock the running command holds (``hold_output``, ``hold_folder``), newest first."""
    while _HELD:
        _, h = _HELD.popitem()
        try:
            if h.folder:
                _release_folder(h.fd, h.path, h.created, remove_lock=h.fresh)
            else:
                _release(h.fd, h.lock, remove=True)
                _remove_folders(h.created)
        except OSError:
            pass


@contextmanager
def lock_file(path: str | os.PathLike, what: str = "output", command: str | None = None) -> Iterator[Path]:
    """``hold_output`` for the block only (the Python API's way to keep other processes off a file while it is
    written; the console scripts hold theirs through ``check_output``)."""
    path = Path(path)
    was_held = _key(path) in _HELD
    hold_output(path, what, command)
    try:
        yield path
    finally:
        if not was_held:
            h = _HELD.pop(_key(path), None)
            if h is not None:
                _release(h.fd, h.lock, remove=True)
                _remove_folders(h.created)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)
