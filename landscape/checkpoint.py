"""One checkpoint format: saved atomically, loaded safely (``weights_only=True``), model rebuilt from its config.

A landscape checkpoint is a plain dict of tensors and JSON-able values::

    {"format": "landscape-checkpoint", "format_version": 1, "landscape_version", "torch_version",
     "model_state", "config", "metrics", "epoch", "train_state" (optimizer, step counter, RNG states)}

Foreign checkpoints (a bare state_dict, or one under ``state_dict`` / ``model`` / ``model_state`` /
``net``, possibly with ``module.`` prefixes from DataParallel) load when ``arch`` and ``dataset`` say what
they are.
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

from . import __version__
from .data import DatasetInfo, dataset_info
from .errors import CheckpointError
from .io import atomic_torch_save
from .models import build_model

FORMAT = "landscape-checkpoint"
FORMAT_VERSION = 1
_FOREIGN_KEYS = ("state_dict", "model_state", "model", "net", "model_state_dict")


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


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line ``CheckpointError``.

    A file carrying pickled code or arbitrary objects is refused without running anything.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is corrupt or truncated ({first[:120]})") from e


def _strip_prefix(state: dict, prefix: str = "module.") -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _extract_state(obj: Any, path: Path) -> dict:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in _FOREIGN_KEYS:
            if isinstance(obj.get(key), dict):
                return _extract_state(obj[key], path)
    raise CheckpointError(f"{path} holds no state_dict (looked for a dict of tensors, or one under "
                          f"{', '.join(_FOREIGN_KEYS)})")


def load_weights(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly; a mismatch becomes a one-line ``CheckpointError``.

    Keys missing the model's ``Normalize`` wrapper prefix (``1.``) are matched too, so a foreign
    state_dict of the bare network loads into our normalized model.
    """
    state = _strip_prefix(dict(state))
    own = model.state_dict()
    if not set(state) & set(own) and all(k.startswith("1.") for k in own if not k.startswith("0.")):
        state = {**{k: v for k, v in own.items() if k.startswith("0.")}, **{f"1.{k}": v for k, v in state.items()}}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs model "
                         f"{tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"the weights in {source} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state)


def training_attack(config: dict | None, eps: float | None = None, steps: int | None = None,
                    step_size: float | None = None) -> tuple[float | None, int | None, float | None]:
    """eps, PGD steps and step size for analysing a checkpoint: each given value wins, else the training
    config's. The config's step size is taken only when neither eps nor steps was changed (it was chosen
    for those); otherwise it stays None, so the attack's own default (2.5 eps / steps) applies."""
    cfg = config or {}
    same = eps is None and steps is None
    return (eps if eps is not None else cfg.get("eps"),
            steps if steps is not None else cfg.get("steps"),
            step_size if step_size is not None else (cfg.get("step_size") if same else None))


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, dataset: str | None = None,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint and rebuild its model in eval mode on ``device``.

    Landscape checkpoints carry their config; foreign ones need ``arch`` (a registry name) and
    ``dataset`` (which fixes the input shape and number of classes).
    """
    path = Path(path)
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        config = dict(obj.get("config") or {})
        try:
            info = DatasetInfo.from_dict(config["dataset_info"])
            arch_name = config["model"]
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is a landscape checkpoint with an incomplete config ({e})") from e
        state, foreign = obj.get("model_state"), False
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} is a landscape checkpoint without its weights (no 'model_state')")
        metrics, epoch = obj.get("metrics") or {}, obj.get("epoch")
    else:
        if not arch or not dataset:
            raise CheckpointError(f"{path} is not a landscape checkpoint; say what it holds with "
                                  "--arch NAME and --dataset NAME")
        state, foreign = _extract_state(obj, path), True
        info, arch_name = dataset_info(dataset), arch
        config = {"model": arch, "dataset": info.name, "dataset_info": info.to_dict(), "foreign": True}
        metrics, epoch = {}, None
    model = build_model(arch_name, info)
    load_weights(model, state, source=str(path))
    model.to(device).eval()
    return Checkpoint(model=model, config=config, metrics=metrics, epoch=epoch, path=str(path), info=info,
                      foreign=foreign)
