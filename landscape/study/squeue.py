"""What SLURM says about a study's jobs: ``job_states`` (one ``squeue`` call), ``refresh`` (the states of the
steps whose record names a job) and ``ACTIVE`` (the states of a job that will still run). Asked by the SLURM
executor before it submits, by the local executor before it runs a study that has jobs queued, and by
``status``."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from .spec import Study
from .state import read_record

#: the SLURM job states of a job that will still run (or is running): not to be submitted again
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD",
          "SIGNALING", "STAGE_OUT", "RESIZING", "REQUEUE_FED")


def slurm_tool(name: str) -> str:
    """The path of a SLURM client (on PATH, else in /usr/bin or /usr/local/bin)."""
    found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/local/bin/{name}")
                                        if Path(p).exists()), None)
    if found is None:
        raise ConfigError(f"--executor slurm needs SLURM's {name} on PATH (this machine has none)")
    return found


def job_states(ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of the jobs SLURM still knows (squeue, every state), one call."""
    if not ids:
        return {}
    try:
        proc = subprocess.run([slurm_tool("squeue"), "-h", "--states=all", "-o", "%i|%T|%r"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired, ConfigError):
        return {}
    wanted = set(ids)
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            out[parts[0]] = (parts[1], parts[2])
    return out


def refresh(study: Study) -> dict[tuple[str, str], tuple[str, str]]:
    """{(cell, step): (SLURM state, reason)} of the steps whose record names a job SLURM still knows."""
    recs = {(c.name, s.name): read_record(study, c, s) for c, s in study.pairs()}
    ids = {str(r["job_id"]): k for k, r in recs.items() if r and r.get("job_id")}
    live = job_states(list(ids))
    return {ids[j]: v for j, v in live.items()}
