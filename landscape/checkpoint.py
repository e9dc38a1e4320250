"""One checkpoint format: saved atomically, loaded safely (``weights_only=True``), model rebuilt from its config.

A landscape checkpoint is a plain dict of tensors and JSON-able values::

    {"format": "landscape-checkpoint", "format_version": 1, "landscape_version", "torch_version",
     "model_state", "config", "metrics", "epoch", "train_state" (optimizer, step counter, RNG states)}

Every checkpoint source resolves here, so every CLI and ``ls.load_checkpoint`` accept the same ones:

* a landscape checkpoint (it carries its config);
* a foreign state_dict (``.pt``/``.pth`` read with ``weights_only=True``, or ``.safetensors``) with ``arch``
  (a registry name, ``FILE.py:CLASS`` or ``package.module:CLASS`` with ``arch_kwargs``) and ``dataset``.
  The weights may sit under ``state_dict`` / ``model_state_dict`` / ``model_state`` / ``model`` / ``net`` /
  ``state`` (nested too); prefixes ``module.`` (DataParallel/DDP), ``model.`` (Lightning) and ``_orig_mod.``
  (torch.compile), in any combination, are stripped when that matches the model's keys better; non-tensor
  extras (``epoch``, ``optimizer`` ...) are ignored;
* ``robustbench:NAME`` (``landscape.zoo``): RobustBench's layout ``model_dir/DATASET/THREAT/NAME.pt``.

Loading never runs code from a checkpoint; importing ``FILE.py`` runs the user's own file.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .data import DatasetInfo, dataset_info
from .devices import resolve_device
from .errors import CheckpointError
from .io import atomic_torch_save
from .models import build_model, is_user_arch

FORMAT = "landscape-checkpoint"
FORMAT_VERSION = 1
_FOREIGN_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "state")
_PREFIXES = ("module.", "model.", "_orig_mod.")


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``model`` (eval mode, on the requested device) and what produced it."""
    model: nn.Module
    config: dict
    metrics: dict = field(default_factory=dict)
    epoch: int | None = None
    path: str = ""
    info: DatasetInfo | None = None
    foreign: bool = False

    @property
    def dataset(self) -> str:
        """Name of the dataset the model was trained on (or declared with ``dataset=``)."""
        return self.config.get("dataset", self.info.name if self.info else "")

    @property
    def arch(self) -> str:
        return self.config.get("model", "")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, config: dict, metrics: dict | None = None,
                    epoch: int | None = None, train_state: dict | None = None) -> Path:
    """Write a landscape checkpoint atomically. ``config`` must hold ``model`` and ``dataset_info``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "format_version": FORMAT_VERSION, "landscape_version": __version__,
           "torch_version": str(torch.__version__), "model_state": state, "config": config,
           "metrics": metrics or {}, "epoch": epoch, "train_state": train_state or {}}
    return atomic_torch_save(obj, path)


_NOT_CHECKPOINTS = {b"\x89PNG": "a PNG image", b"%PDF": "a PDF document", b"<!DO": "an HTML page",
                    b"<htm": "an HTML page", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
                    b"<svg": "an SVG image", b"<?xm": "an XML file (an SVG image?)",
                    b"\x93NUMPY": "a NumPy array (.npy)", b"\x89HDF": "an HDF5 file (Keras or h5py weights?)",
                    b"\x1f\x8b": "a gzip-compressed file (unpack it first)"}
# the files of a run folder and of a surface folder that are not checkpoints, and what each one is
_RUN_LOGS = {"metrics.csv": "a run's training log", "config.json": "a run's config",
             "hsat.json": "a run's H-SAT calibration log"}
_SURFACE_FILES = {"surface.npz": "a surface's arrays", "surface.json": "a surface's result",
                  "input_surface.npz": "an input-space surface's arrays",
                  "input_surface.json": "an input-space surface's result"}
_TEXT_SUFFIXES = {".csv": "a CSV table", ".tsv": "a TSV table", ".txt": "a text file", ".log": "a log file",
                  ".md": "a Markdown file", ".yaml": "a YAML file", ".yml": "a YAML file", ".toml": "a TOML file",
                  ".py": "a Python file", ".ini": "a text file", ".cfg": "a text file", ".sh": "a shell script",
                  ".ipynb": "a notebook"}


def _what_file(path: Path, head: bytes) -> str | None:
    """What ``path`` is, when it is a file of another kind than a checkpoint (its name in a run or surface
    folder, its first bytes, its suffix); None when it may be one. ``head``: its first bytes."""
    name = path.name
    if name in _RUN_LOGS:
        run = path.parent
        ck = [p.name for p in (run / "best.pt", run / "last.pt") if p.is_file()]
        give = (f"give {run / ck[0]}" + (f" or {ck[1]}" if len(ck) > 1 else "")) if ck else \
            "give best.pt or last.pt of that run"
        return f"{_RUN_LOGS[name]}, not a checkpoint; {give}"
    if name in _SURFACE_FILES:
        return f"{_SURFACE_FILES[name]} (landscape-plot draws it), not a checkpoint"
    what = next((w for sig, w in _NOT_CHECKPOINTS.items() if head.startswith(sig)), None)
    if what is None and head.lstrip()[:1] in (b"{", b"["):
        what = "a JSON file" + _json_kind(path)
    if what is None and head.startswith(b"PK\x03\x04"):
        what = _zip_kind(path)
    if what is None and _is_text(head):
        if path.suffix.lower() in _TEXT_SUFFIXES:
            what = _TEXT_SUFFIXES[path.suffix.lower()]
        else:
            lines = head.decode("utf-8", "replace").splitlines()
            if len(lines) >= 2 and lines[0].count(",") >= 1 and lines[0].count(",") == lines[1].count(","):
                what = "a CSV table" + (" (a training log like a run's metrics.csv)"
                                        if lines[0].startswith("epoch,") else "")
    return None if what is None else f"{what}, not a checkpoint"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:   # a character cut at the end of the head is still text
        if e.start < len(head) - 3:
            return False
        text = head[:e.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\r\n" for c in text)


def _json_kind(path: Path) -> str:
    """`` (a landscape result of kind 'evaluation')`` for a result, else a generic note (small files only)."""
    import json
    try:
        if path.stat().st_size < 2 ** 20:
            kind = json.loads(path.read_text()).get("kind")
            if isinstance(kind, str):
                return f" (a landscape result of kind {kind!r})"
    except (OSError, ValueError, AttributeError):
        pass
    return " (a result or a config)"


def _zip_kind(path: Path) -> str | None:
    """A ZIP archive that is not PyTorch's format: a NumPy ``.npz`` or another archive (None: PyTorch's
    layout, or unreadable as a ZIP, which ``torch.load`` then names as corrupt or truncated)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return None
    if names and all(n.endswith(".npy") for n in names):
        return "a NumPy archive (.npz of " + ", ".join(n[:-4] for n in names[:4]) + (", ..." if len(names) > 4 else "") + ")"
    return "a ZIP archive that is not a PyTorch checkpoint"


def _is_safetensors(path: Path) -> bool:
    """A safetensors file whatever its name: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 10 and head[8:10] == b'{"' and 0 < int.from_bytes(head[:8], "little") < size


def _check_file(path: Path) -> None:
    """A one-line ``CheckpointError`` naming what ``path`` is when it cannot be a checkpoint: missing, a
    folder, not a regular file (a FIFO, a device such as /dev/null), empty, or a file of another kind (a run's
    metrics.csv or config.json, a surface's arrays, an image, a JSON result, a NumPy file, a CSV table)
    recognized by its name and first bytes. Cost: a stat and a read of 4 KiB."""
    import stat
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        hint = " (a run folder: give its best.pt or last.pt)" if (path / "best.pt").is_file() else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise CheckpointError(f"{path} is {kind}, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty, not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(4096)
    what = _what_file(path, head)
    if what is not None:
        raise CheckpointError(f"{path} is {what}")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line ``CheckpointError``.

    A file carrying pickled code or arbitrary objects is refused without running anything.
    """
    path = Path(path)
    _check_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        found = re.search(r"(GLOBAL [\w.]+|[Uu]nsupported operand \S+)", str(e))
        if found or "weights_only" in str(e):
            what = found.group(0) if found else first[:120]
            raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors and plain "
                                  f"data, which could run code ({what})") from e
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({first[:120]})") from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, LookupError,
            TypeError) as e:  # a text or other non-checkpoint file fails in the unpickler with a KeyError etc.
        with open(path, "rb") as f:
            head = f.read(4096)
        if _is_text(head):   # the unpickler's words ("pop from empty list") say nothing about a text file
            begins = head.decode("utf-8", "replace").strip().splitlines()[0][:40]
            raise CheckpointError(f"{path} is corrupt or not a checkpoint: it holds text (it begins "
                                  f"{begins!r})") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupt or truncated ({first[:120]})") from e


def read_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a ``.safetensors`` file (a format that cannot hold code), as a CPU state_dict."""
    path = Path(path)
    _check_file(path)
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError(f"reading {path.name} needs the safetensors package: pip install safetensors") from e
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = " ".join(str(e).split())[:120] or type(e).__name__
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({first})") from e


def read_weights(path: str | os.PathLike) -> Any:
    """The object in a checkpoint file: a safetensors file (by its suffix or its first bytes) via safetensors,
    anything else via ``read_checkpoint``."""
    safetensors = str(path).endswith(".safetensors") or (Path(path).is_file() and _is_safetensors(Path(path)))
    return read_safetensors(path) if safetensors else read_checkpoint(path)


def strip_prefixes(state: dict) -> dict:
    """``state`` with the wrapper prefixes (``module.``, ``model.``, ``_orig_mod.``) that ALL its keys share
    removed, repeatedly (e.g. ``module._orig_mod.``). For matching against a model's own keys, where a prefix
    may also be a real submodule's name, ``load_weights`` tries every variant instead (``_renamings``)."""
    while state:
        p = next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None)
        if p is None:
            return state
        state = {k[len(p):]: v for k, v in state.items()}
    return state


def extract_state(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict inside a checkpoint object: under the first wrapper key (``state_dict``, ``model``,
    ... nested too) that holds tensors, else the object's own tensor entries (non-tensor extras dropped)."""
    if not isinstance(obj, dict):
        return None
    for key in _FOREIGN_KEYS:
        if isinstance(obj.get(key), dict):
            found = extract_state(obj[key])
            if found:
                return found
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return tensors or None


def _extract_state(obj: Any, path: Path) -> dict:
    state = extract_state(obj)
    if not state:
        raise CheckpointError(f"{path} holds no state_dict (looked for a dict of tensors, or one under "
                              f"{', '.join(_FOREIGN_KEYS)})")
    return state


def _renamings(state: dict, own: dict) -> list[dict]:
    """``state`` and its variants with wrapper prefixes stripped (``module.``, ``model.``, ``_orig_mod.``,
    nested, up to 4 deep), plus, for our registry's ``Sequential(Normalize, net)``, the bare net's keys under
    ``1.``; in order of preference (fewest changes first)."""
    out, frontier = [state], [state]
    for _ in range(4):
        nxt = []
        for s in frontier:
            for p in _PREFIXES:
                inner = p == "_orig_mod."  # torch.compile'd submodules carry it inside keys too
                if not any(k.startswith(p) or (inner and f".{p}" in k) for k in s):
                    continue
                c = {(k.removeprefix(p).replace(f".{p}", ".") if inner else k.removeprefix(p)): v
                     for k, v in s.items()}
                if len(c) == len(s) and all(c.keys() != o.keys() for o in out + nxt):
                    nxt.append(c)
        out += nxt
        frontier = nxt
    norm = {k: v for k, v in own.items() if k.startswith("0.")}
    if norm and all(k.startswith("1.") for k in own if not k.startswith("0.")):
        out += [{**norm, **{f"1.{k}": v for k, v in s.items()}} for s in list(out)]
    return out


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_weights(model: nn.Module, state: dict, source: str = "checkpoint",
                 optional: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` strictly, under the key renaming (see ``_renamings``) that matches the
    model's keys best. A mismatch is a one-line ``CheckpointError`` naming a few missing and unexpected keys
    with their counts. Keys in ``optional`` and BatchNorm's ``num_batches_tracked`` may be missing. A NaN/inf
    weight is refused: such a model would evaluate to a meaningless number."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"the weights in {source} are not finite (NaN or inf in {len(bad)} tensors, e.g. "
                              f"{bad[0]}); refusing to use them")
    own = model.state_dict()
    state = max(_renamings(dict(state), own), key=lambda c: len(c.keys() & own.keys()))
    missing = [k for k in own if k not in state and k not in optional and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} in the file vs "
                         f"{tuple(own[k].shape)} in the model)")
        if missing:
            parts.append(f"{len(missing)} missing keys ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
        raise CheckpointError(f"the weights in {source} do not fit the model ({len(own)} keys; the file has "
                              f"{len(state)}): " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


def _load_robustbench(name: str, dataset: str | None, threat_model: str, model_dir: str | os.PathLike,
                      download: bool) -> tuple[nn.Module, dict, DatasetInfo, str]:
    from .zoo import locate, robustbench_dataset
    info = dataset_info(dataset or "cifar10")
    zm = locate(name, robustbench_dataset(info), threat_model, model_dir, download)
    state = _extract_state(read_checkpoint(zm.path), zm.path)
    if zm.skip_prefixes:
        state = {k: v for k, v in state.items()
                 if not any(k.removeprefix(p).startswith(zm.skip_prefixes) for p in ("", *_PREFIXES))}
    load_weights(zm.model, state, source=str(zm.path), optional=zm.optional)
    config = {"model": f"robustbench:{name}", "dataset": robustbench_dataset(info), "dataset_info": info.to_dict(),
              "foreign": True, **zm.config}
    return zm.model, config, info, str(zm.path)


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, dataset: str | None = None,
                    device: str | torch.device = "cpu", *, arch_kwargs: dict | str | None = None,
                    threat_model: str = "Linf", model_dir: str | os.PathLike = "models",
                    download: bool = False) -> Checkpoint:
    """Load a checkpoint source and rebuild its model in eval mode on ``device``.

    ``path``: a landscape checkpoint (carries its config); a foreign state_dict file (``.pt``, ``.pth``,
    ``.safetensors``), which needs ``arch`` (a registry name, ``FILE.py:CLASS`` or ``package.module:CLASS``,
    built with ``arch_kwargs``, a dict or a JSON object) and ``dataset`` (input shape, number of classes);
    or ``robustbench:NAME`` (``dataset`` default cifar10, ``threat_model``, ``model_dir``; fetched only when
    ``download``). A user class must take inputs in [0, 1] and normalize inside ``forward``; one forward
    pass on 2 dummy inputs checks that it returns the dataset's number of logits.
    """
    kwargs = _parse_kwargs(arch_kwargs)
    device = resolve_device(device)
    src = str(path)
    if src.startswith("robustbench:"):
        if arch or kwargs:
            raise CheckpointError("robustbench:NAME brings its own architecture; drop --arch/--arch-kwargs")
        model, config, info, src = _load_robustbench(src[len("robustbench:"):], dataset, threat_model, model_dir,
                                                     download)
        model.to(device).eval()
        return Checkpoint(model=model, config=config, path=src, info=info, foreign=True)
    path = Path(path)
    obj = read_weights(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        config = dict(obj.get("config") or {})
        try:
            info = DatasetInfo.from_dict(config["dataset_info"])
            arch_name = config["model"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is a landscape checkpoint with an incomplete config ({e})") from e
        if is_user_arch(arch_name):  # never import a file because a checkpoint names it
            if not arch:
                raise CheckpointError(f"{path} was made with the class {arch_name}; pass --arch {arch_name} "
                                      "to import it (a checkpoint alone never runs code)")
            arch_name, kwargs = arch, kwargs or dict(config.get("arch_kwargs") or {})
        elif arch and arch not in (arch_name, "auto"):
            raise CheckpointError(f"{path} holds a {arch_name} (its config says so); --arch {arch} does not match "
                                  "it: drop --arch (a landscape checkpoint names its own model)")
        state, foreign = obj.get("model_state"), False
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} is a landscape checkpoint without its weights (no 'model_state')")
        metrics, epoch = obj.get("metrics") or {}, obj.get("epoch")
    else:
        if not arch or not dataset:
            raise CheckpointError(f"{path} is not a landscape checkpoint; say what it holds with "
                                  "--arch NAME|FILE.py:CLASS|package.module:CLASS and --dataset NAME")
        state, foreign = _extract_state(obj, path), True
        info, arch_name = dataset_info(dataset), arch
        config = {"model": arch, "dataset": info.name, "dataset_info": info.to_dict(), "foreign": True}
        if kwargs:
            config["arch_kwargs"] = kwargs
        metrics, epoch = {}, None
    model = build_model(arch_name, info, kwargs=kwargs)
    load_weights(model, state, source=str(path))
    model.to(device).eval()
    return Checkpoint(model=model, config=config, metrics=metrics, epoch=epoch, path=str(path), info=info,
                      foreign=foreign)


def _parse_kwargs(arch_kwargs: dict | str | None) -> dict:
    """``arch_kwargs`` as a dict: a dict, a JSON object string, or None (no arguments)."""
    if arch_kwargs is None or arch_kwargs == "":
        return {}
    if isinstance(arch_kwargs, str):
        import json
        try:
            arch_kwargs = json.loads(arch_kwargs)
        except ValueError as e:
            raise CheckpointError(f"--arch-kwargs is not valid JSON ({e})") from e
    if not isinstance(arch_kwargs, dict):
        raise CheckpointError(f"--arch-kwargs must be a JSON object like '{{\"depth\": 34}}', "
                              f"got {type(arch_kwargs).__name__}")
    return dict(arch_kwargs)
