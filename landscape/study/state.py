"""The study folder's own bookkeeping, its one owner: which study a folder belongs to (``study.json``), and
per (cell, step) a record ``cells/CELL/steps/STEP.json`` (status, the digest of the command it ran, exit code,
seconds, the last line of its log, the SLURM job id) beside its log ``cells/CELL/logs/STEP.log``.

A step is done when its record says done with today's digest and its result file exists; a record with
another digest is a changed step (its files are replaced); an interrupted training is continued with
``--resume``, an interrupted surface with ``--resume``, an AutoAttack evaluation reuses its state folder.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError
from ..io import write_json
from .spec import TRAIN_RUN, Cell, Step, Study

STATUSES = ("done", "running", "queued", "failed", "stopped", "changed", "todo", "blocked")


def _read(path: Path) -> dict | None:
    try:
        with open(path) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def claim_folder(study: Study) -> None:
    """Make ``study.out`` this study's folder (``study.json``), or refuse one that is another study's or holds
    other files. Cheap; call before any work."""
    out = study.out
    mark = out / "study.json"
    if out.is_dir():
        rec = _read(mark) if mark.exists() else None
        if mark.exists() and (rec is None or rec.get("kind") != "study"):
            raise ConfigError(f"{out}: study.json there is not a study's record; choose another [study] out")
        if rec is not None and rec.get("name") != study.name:
            raise ConfigError(f"{out} is the folder of study {rec.get('name')!r} ({rec.get('file')}), not of "
                              f"{study.name!r}; choose another [study] out (or --out)")
        if rec is None and any(p.name != ".landscape.lock" for p in out.iterdir()):
            raise ConfigError(f"{out} exists and is not a study's folder (no study.json); choose another "
                              "[study] out (or --out), or empty it")
        if rec is not None:
            return
    out.mkdir(parents=True, exist_ok=True)
    write_json(mark, {"kind": "study", "name": study.name, "file": str(study.file),
                      "landscape_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")})


def record_path(study: Study, cell: Cell, step: Step) -> Path:
    return study.out / study.cell_dir(cell) / "steps" / f"{step.name}.json"


def log_path(study: Study, cell: Cell, step: Step) -> Path:
    return study.out / study.cell_dir(cell) / "logs" / f"{step.name}.log"


def read_record(study: Study, cell: Cell, step: Step) -> dict | None:
    return _read(record_path(study, cell, step))


def write_record(study: Study, cell: Cell, step: Step, **fields: Any) -> dict:
    """Update the (cell, step) record with ``fields`` (atomic write) and return it."""
    rec = read_record(study, cell, step) or {}
    rec.update({"cell": cell.name, "step": step.name, **fields})
    write_json(record_path(study, cell, step), rec)
    return rec


def last_line(path: Path, limit: int = 64 * 1024) -> str:
    """The last non-empty line of a log (progress bars' carriage returns split lines too)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").split("\n") if ln.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class StepState:
    status: str                   # one of STATUSES
    detail: str = ""              # why (changed settings, the failed step's last log line, ...)
    record: dict | None = None


def state(study: Study, cell: Cell, step: Step, digest: str | None = None) -> StepState:
    """Where a (cell, step) stands, from its record and its files (no SLURM query: see squeue.refresh)."""
    rec = read_record(study, cell, step)
    digest = digest or study.digest(cell, step)
    result = study.out / study.outputs(cell, step)["result"]
    if rec is None:
        return StepState("todo")
    if rec.get("digest") != digest:
        return StepState("changed", "its settings changed since it ran", rec)
    st = rec.get("status")
    if st == "done":
        if result.exists():
            return StepState("done", "", rec)
        return StepState("todo", f"{study.outputs(cell, step)['result']} is missing", rec)
    if st == "failed":
        return StepState("failed", rec.get("last_line", ""), rec)
    if st in ("running", "queued", "stopped"):
        return StepState(st, rec.get("last_line", ""), rec)
    return StepState("todo", "", rec)


def argv_to_run(study: Study, cell: Cell, step: Step, st: StepState) -> list[str]:
    """The command to run now: the plan's, or its continuation (``--resume``) after an interruption. A
    changed step's old files are removed first (they are the study's own, inside its folder)."""
    argv = study.command(cell, step)
    outs = {k: study.out / v for k, v in study.outputs(cell, step).items()}
    if st.status == "changed":
        for key in ("run", "folder", "state", "result"):
            p = outs.get(key)
            if p is not None and p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        return argv
    if step.kind == "train":
        run = outs["run"]
        if (run / "last.pt").exists():
            return [argv[0], "--resume", str(run.relative_to(study.out)),
                    *[w for i, w in enumerate(argv) if w == "--device" or (i and argv[i - 1] == "--device")]]
        if run.exists():      # stopped before its first checkpoint: nothing to continue
            return [*argv, "--overwrite"]
        return argv
    if step.kind == "surface" and (outs["folder"] / "surface.json").exists():
        return [*argv, "--resume"]
    if step.kind == "surface" and outs["folder"].exists():
        return [*argv, "--overwrite"]
    return argv


def describe_host() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def train_dir(study: Study, cell: Cell) -> Path:
    return study.out / study.cell_dir(cell) / TRAIN_RUN
