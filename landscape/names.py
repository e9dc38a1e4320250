"""The names the house gives: run names, the training methods' display names, the ``--select`` rules, and the
files a run folder or a surface folder owns (with which of them no result may replace).

A core module (no import of the run or result readers above it): the trainer and its config build names
here, ``io`` asks ``protected_reason`` before locking a folder, and ``runs`` / ``results`` read names back.

A run's default name is ``METHOD-DATASET-epsEPS-sSEED`` (``run_name``); ``method_of_run`` reads the method
back, the one place where run names are parsed. A run folder holds ``RUN_FILES`` and epoch_XXX.pt
(``run_files``); a surface folder ``SURFACE_FILES``; an input-space surface ``INPUT_SURFACE_FILES``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from .data import available_datasets

RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt", "hsat.json")   # + epoch_XXX.pt
EPOCH_FILE = re.compile(r"epoch_\d{3,}\.pt")
SURFACE_FILES = ("surface.json", "surface.npz", "directions.pt", "adversarial.npz")   # a surface folder's state
INPUT_SURFACE_FILES = ("input_surface.json", "input_surface.npz")   # landscape-surface --space input's result
RUN_MARKERS = ("metrics.csv", "config.json")       # what makes a folder a run folder
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".tar")   # a file a checkpoint source may be
# --select, the best.pt rules: the validation number each one ranks epochs by (the highest wins; "loss": the lowest)
SELECT_RULES = {"clean+pgd": "validation clean + PGD accuracy (the paper's rule)",
                "pgd": "validation PGD accuracy", "clean": "validation clean accuracy",
                "loss": "validation (clean) cross-entropy, lowest"}
METHOD_NAMES = {"standard": "standard", "at": "AT", "trades": "TRADES", "sat-eps": "SAT-ε", "p-sat": "P-SAT",
                "h-sat": "H-SAT"}   # the house's display names of the training methods


# --- run names ------------------------------------------------------------------------------------------

def _dataset_tag(dataset: str) -> str:
    """A dataset's name as it appears in a run name: ``:`` and ``/`` (``folder:PATH``) become ``_``."""
    return dataset.replace(":", "_").replace("/", "_")


def run_name(method: str, dataset: str, eps: float | None, seed: int) -> str:
    """The default run name ``METHOD-DATASET-epsEPS-sSEED`` (``:`` and ``/`` of a dataset name become ``_``)."""
    tag = "" if eps is None else f"-eps{eps:g}"
    return f"{method}-{_dataset_tag(dataset)}{tag}-s{seed}"


def method_of_run(run: str, dataset: str | None = None) -> str:
    """What is left of a run name once ``run_name``'s suffixes are cut: ``at-digits-eps0.3-s0`` -> ``at``,
    ``p-sat-eps0.1`` -> ``p-sat``; a name of another form comes back without its eps and seed suffixes."""
    name = re.sub(r"-eps[\d.e-]+$|-s\d+$", "", run)
    name = re.sub(r"-eps[\d.e-]+$|-s\d+$", "", name)
    for ds in sorted({str(dataset or ""), *available_datasets()} - {""}, key=len, reverse=True):
        if name.endswith("-" + _dataset_tag(ds)):
            return name[:-len(ds) - 1]
    return name


def known_method(run: str) -> str | None:
    """The training method a run name starts with (the longest of ``METHOD_NAMES``), or None."""
    return next((m for m in sorted(METHOD_NAMES, key=len, reverse=True) if run == m or run.startswith(m + "-")),
                None)


def pretty_method(name: str | None) -> str:
    """``h-sat-affine`` -> ``H-SAT-affine``, ``at`` -> ``AT``: the house's display names of the methods."""
    if not name:
        return ""
    for key in sorted(METHOD_NAMES, key=len, reverse=True):
        if name == key or name.startswith(key + "-"):
            return METHOD_NAMES[key] + name[len(key):]
    return name


def selection_score(rule: str, row: dict) -> tuple[float, float]:
    """(the validation number ``rule`` (one of ``SELECT_RULES``) ranks by, a key where higher is better) for
    one metrics row."""
    pgd = row["val_pgd"] if row.get("val_pgd") is not None else 0.0
    value = {"clean+pgd": row["val_clean"] + pgd, "pgd": pgd, "clean": row["val_clean"],
             "loss": row["val_loss"]}[rule]
    return value, (-value if rule == "loss" else value)


# --- the files a folder owns ----------------------------------------------------------------------------

def run_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` that the trainer writes (``RUN_FILES`` and epoch_XXX.pt), nothing else."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_file()
                  and (p.name in RUN_FILES or EPOCH_FILE.fullmatch(p.name)))


def is_checkpoint_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a checkpoint (``CHECKPOINT_SUFFIXES``, any case)."""
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def is_run_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run's folder (it holds metrics.csv or config.json)."""
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in RUN_MARKERS)


def is_surface_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a weight-space surface's folder (it holds surface.json or surface.npz)."""
    p = Path(path)
    return p.is_dir() and any((p / f).is_file() for f in SURFACE_FILES[:2])


def folder_result(path: str | os.PathLike) -> Path | None:
    """The result a folder *is* (not one it holds): a surface folder itself, or the input_surface.json of an
    input-space surface's folder; None for any other folder or a file. Cost: a few stat calls."""
    p = Path(path)
    if is_surface_folder(p):
        return p
    if p.is_dir() and (p / INPUT_SURFACE_FILES[0]).is_file():
        return p / INPUT_SURFACE_FILES[0]
    return None


def protected_reason(path: str | os.PathLike, becoming: Sequence[str | os.PathLike] = ()) -> str | None:
    """Why no command may write a result over ``path`` (None: it may): an existing checkpoint, a file of a
    training run (``RUN_FILES``, epoch_XXX.pt, in a folder that holds config.json or last.pt), the state of
    a surface folder (``SURFACE_FILES``, which ``--resume`` continues from) or an input-space surface's
    result (``INPUT_SURFACE_FILES``). ``becoming``: folders the running command is about to make a run or a
    surface of (the folders it locks for that): one of those files there is protected before it exists, so
    that ``landscape-train --json runs/NEW/config.json`` is refused instead of replacing the new run's config
    at its end. Cost: a few stat calls."""
    p = Path(path)
    folder = p.parent
    own = p.name in RUN_FILES or EPOCH_FILE.fullmatch(p.name) or p.name in SURFACE_FILES \
        or p.name in INPUT_SURFACE_FILES
    if own:
        for b in becoming:
            if os.path.realpath(folder) == os.path.realpath(b):
                return f"it is the file {p.name} that this command writes in {b}"
    if not p.exists():
        return None
    if (p.name in RUN_FILES or EPOCH_FILE.fullmatch(p.name)) and \
            ((folder / "config.json").is_file() or (folder / "last.pt").is_file()):
        return f"it is the file {p.name} of the training run {folder}"
    if p.name in SURFACE_FILES and is_surface_folder(folder):
        return f"it holds the state of the surface in {folder} (what --resume continues from)"
    if p.name in INPUT_SURFACE_FILES and (folder / "input_surface.json").is_file():
        return f"it is the input-space surface in {folder}"
    if is_checkpoint_path(p):
        return "it is a checkpoint"
    return None


__all__ = ["CHECKPOINT_SUFFIXES", "EPOCH_FILE", "INPUT_SURFACE_FILES", "METHOD_NAMES", "RUN_FILES", "RUN_MARKERS",
           "SELECT_RULES", "folder_result", "is_checkpoint_path", "is_run_folder", "is_surface_folder",
           "SURFACE_FILES", "known_method", "method_of_run", "pretty_method", "protected_reason", "run_files",
           "run_name", "selection_score"]
