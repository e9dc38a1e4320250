"""Where a study stands: cells x steps, each done / running / queued / failed / stopped / changed / todo /
cancelled, with SLURM job ids (asked of ``squeue``) and the failed step's last log line."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import write_json
from .spec import Study
from .squeue import ACTIVE, refresh
from .state import state



@dataclass(frozen=True)
class Row:
    cell: str
    step: str
    status: str
    job: str
    detail: str


def rows(study: Study) -> list[Row]:
    """Every (cell, step) with its status; a job recorded as queued or running that SLURM no longer runs is
    'cancelled' (e.g. its training failed) or 'lost' (its node went away)."""
    pairs = study.pairs()
    recs = {}
    any_job = False
    for c, s in pairs:
        st = state(study, c, s)
        recs[(c.name, s.name)] = st
        any_job |= bool(st.record and st.record.get("job_id"))
    live = refresh(study) if any_job else {}
    out = []
    for c, s in pairs:
        st = recs[(c.name, s.name)]
        rec = st.record or {}
        job = str(rec.get("job_id") or "")
        status, detail = st.status, st.detail
        slurm_state, reason = live.get((c.name, s.name), ("", ""))
        if status == "stopped" and rec.get("executor") == "slurm" and slurm_state in ACTIVE:
            # stopped by a signal and requeued by its job script: it continues where it stopped
            status = "running" if slurm_state in ("RUNNING", "COMPLETING", "SIGNALING") else "queued"
            detail = "requeued after a stop" + ("" if reason in ("None", "") else f" ({reason})")
        elif status in ("queued", "running") and rec.get("executor") == "slurm":
            if slurm_state in ACTIVE:
                status = "running" if slurm_state in ("RUNNING", "COMPLETING", "SIGNALING") else "queued"
                detail = "" if reason in ("None", "") else reason
            elif slurm_state == "CANCELLED" or (status == "queued" and not slurm_state):
                status, detail = "cancelled", "cancelled before it ran (a step it needs failed, or scancel)"
            else:
                status, detail = "lost", f"the job ended ({slurm_state or 'unknown to squeue'}) without a record"
        elif status in ("queued", "running"):
            status, detail = "stopped", "its run ended without a record (rerun to continue)"
        out.append(Row(c.name, s.name, status, job, detail))
    return out


def print_status(study: Study, json_path: str | None = None) -> int:
    """Print the cells x steps table and the counts; 0 when all done, 1 when a step failed, else 3 (work
    left)."""
    if (study.out / "models").is_dir() and not (study.out / "cells").is_dir():
        n = sum(1 for _ in (study.out / "models").glob("*/train.json"))
        print(f"{study.out} holds the results of the runner that preceded landscape-study (models/*: {n} models); "
              f"`landscape-study aggregate` reads them; a rerun goes to a new folder (--out)")
        return 0
    table = rows(study)
    steps = [s.name for s in study.steps]
    width = max([len(c.name) for c in study.cells] + [4])
    cols = {s: max(len(s), 14) for s in steps}
    by = {(r.cell, r.step): r for r in table}
    print(f"{'cell':<{width}}  " + "  ".join(f"{s:<{cols[s]}}" for s in steps))
    for c in study.cells:
        cells = []
        for s in steps:
            r = by.get((c.name, s))
            text = "-" if r is None else r.status + (f" {r.job}" if r.job and r.status in (
                "queued", "running", "failed", "cancelled", "lost") else "")
            cells.append(f"{text:<{cols[s]}}")
        print(f"{c.name:<{width}}  " + "  ".join(cells))
    counts: dict[str, int] = {}
    for r in table:
        counts[r.status] = counts.get(r.status, 0) + 1
    print(f"{study.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
          + f" of {len(table)} steps")
    for r in table:
        if r.status in ("failed", "lost", "cancelled", "changed", "stopped") or (
                r.status == "queued" and r.detail not in ("", "Priority", "Resources", "Dependency", "BeginTime")):
            print(f"  {r.cell} {r.step}: {r.status}" + (f" (job {r.job})" if r.job else "")
                  + (f": {r.detail}" if r.detail else ""))
    if json_path:
        write_json(json_path, {"kind": "study_status", "study": study.name,
                               "steps": [r.__dict__ for r in table], "counts": counts})
    if counts.get("failed") or counts.get("lost") or counts.get("cancelled"):
        return 1
    return 0 if counts.get("done", 0) == len(table) else 3
