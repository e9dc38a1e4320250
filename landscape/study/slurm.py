"""The SLURM executor: one batch job per (cell, step), submitted with plain ``sbatch``.

Each job runs ``landscape-study step STUDY CELL STEP`` under ``srun`` (so that ``scancel --signal`` and
``#SBATCH --signal`` reach it), which runs the step's console command exactly as the local executor does,
its output appended to the step's log in the cell's folder (``--output``). An analysis job depends on its
cell's training job and, when it reads {reference}, on the reference cell's (``--dependency=afterok``, with
``--kill-on-invalid-dep=yes`` so that the analyses of a failed training are cancelled, not left pending).

Preemption and time limits: SIGTERM (``--signal=TERM@SECONDS`` before the limit, or ``scancel
--signal=TERM``) makes a training write last.pt and exit 75; the job then requeues itself (``scontrol
requeue``) and its next start continues with ``--resume``. Any other non-zero exit is a real failure: the
step's record says failed with the last line of its log, and the job is not requeued (the exit code of
``landscape-torchrun``, used for trainings on several GPUs, is 75 only for a stop, see cli/torchrun.py).

Why plain sbatch and not submitit: a job here is a console command, not a pickled Python function, so a
job script a person can read and resubmit by hand is the better artefact; and submitit reads job states
from ``sacct``, which needs SLURM's accounting daemon (slurmdbd + a database) that many clusters and our
test cluster lack, while ``squeue`` and the study's own records are always there.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from typing import Sequence

from ..errors import EXIT_REQUEUE, LandscapeError
from ..io import lock_folder, write_text
from .execute import Running, dependencies, executable, run_step
from .spec import Cell, Step, Study
from .squeue import ACTIVE, job_states, slurm_tool
from .state import claim_folder, state, write_record

SIGNAL_SECONDS = 300          # SIGTERM this long before a job's time limit: time to write last.pt


def _time(value: object) -> str | None:
    """SLURM's --time from minutes (a number) or its own "D-HH:MM:SS" string."""
    if value is None:
        return None
    if isinstance(value, (int, float)) or re.fullmatch(r"\d+", str(value)):
        return str(int(value))
    return str(value)


def job_script(study: Study, cell: Cell, step: Step, resources: dict, extra: Sequence[str]) -> str:
    """The batch script of one step (written beside its log, so that it can be read and resubmitted)."""
    out = study.out.resolve()
    log = out / study.cell_dir(cell) / "logs" / f"{step.name}.log"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={study.name}:{cell.name}:{step.name}",
             f"#SBATCH --output={log}", "#SBATCH --open-mode=append", f"#SBATCH --chdir={out}",
             "#SBATCH --requeue", "#SBATCH --kill-on-invalid-dep=yes", "#SBATCH --ntasks=1"]
    if step.kind == "train":
        lines.append(f"#SBATCH --signal=TERM@{SIGNAL_SECONDS}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("mem", "mem")):
        if resources.get(key):
            lines.append(f"#SBATCH --{flag}={resources[key]}")
    if resources.get("cpus"):
        lines.append(f"#SBATCH --cpus-per-task={resources['cpus']}")
    gpus = resources.get("gpus") or 0
    if gpus:
        lines.append(f"#SBATCH --gpus={gpus}")
    if _time(resources.get("time")):
        lines.append(f"#SBATCH --time={_time(resources.get('time'))}")
    lines += [f"#SBATCH {x}" for x in [*resources.get("sbatch", []), *extra]]
    study_cmd = [executable("landscape-study"), "step", str(study.file), "--out", str(out), cell.name, step.name]
    lines += [
        "# one step of a landscape-study; rerun by hand with: sbatch THIS_FILE",
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-' + str(resources.get("cpus") or 1) + '}"',
        f"srun --ntasks=1 {shlex.join(study_cmd)}",
        "code=$?",
        f"if [ \"$code\" = {EXIT_REQUEUE} ]; then",
        "  echo \"landscape-study: job $SLURM_JOB_ID stopped (exit 75): requeued, it continues where it stopped\"",
        "  scontrol requeue \"$SLURM_JOB_ID\"",
        "fi",
        "exit $code", ""]
    return "\n".join(lines)


def submit(study: Study, partition: str | None = None, account: str | None = None, time_limit: str | None = None,
           qos: str | None = None, extra: Sequence[str] = (), dry_run: bool = False) -> int:
    """Submit every step that is not done, queued or running (trainings first); print one line per job.
    Returns 0; sbatch refusing a job is a ``LandscapeError`` with its message (the jobs submitted before it
    stay queued and are recorded, so a rerun after the fix submits only the rest)."""
    sbatch = slurm_tool("sbatch") if not dry_run else "sbatch"
    claim_folder(study)
    with lock_folder(study.out, command=f"landscape-study run --executor slurm {study.file}"):
        # trainings first: an analysis depends on its cell's and on its reference cell's, wherever those are
        pairs = sorted(study.pairs(), key=lambda p: p[1].kind != "train")
        states = {(c.name, s.name): state(study, c, s) for c, s in pairs}
        live = job_states([str((st.record or {}).get("job_id")) for st in states.values()
                           if st.record and st.record.get("job_id")])
        jobs: dict[tuple[str, str], str] = {}        # (cell, step) -> live job id, to depend on
        submitted = skipped = 0
        for cell, step in pairs:
            key = (cell.name, step.name)
            st = states[key]
            rec = st.record or {}
            jid = str(rec.get("job_id", ""))
            if st.status == "done":
                skipped += 1
                continue
            if st.status in ("queued", "running") and jid in live and live[jid][0] in ACTIVE:
                print(f"{cell.name} {step.name}: already {live[jid][0].lower()} as job {jid}")
                jobs[key] = jid
                continue
            if st.status == "changed":
                print(f"{cell.name} {step.name}: {st.detail}; it runs again")
            elif st.status == "failed":
                print(f"{cell.name} {step.name}: failed last time ({st.detail}); submitted again")
            deps = [jobs[d] for d in dependencies(study, cell, step) if d in jobs]
            if any(states[d].status not in ("done",) and d not in jobs for d in dependencies(study, cell, step)
                   if d in states):
                print(f"{cell.name} {step.name}: not submitted, a step it needs is neither done nor queued")
                continue
            res = {k: v for k, v in study.resources_of(step).items()}
            for k, v in (("partition", partition), ("account", account), ("time", time_limit), ("qos", qos)):
                if v:
                    res[k] = v
            script = job_script(study, cell, step, res, extra)
            path = study.out / study.cell_dir(cell) / "jobs" / f"{step.name}.sbatch"
            (study.out / study.cell_dir(cell) / "logs").mkdir(parents=True, exist_ok=True)
            write_text(path, script)
            if dry_run:
                jobs[key] = f"DRY{submitted}"
                submitted += 1
                print(f"{cell.name} {step.name}: {path}" + (f" (after {', '.join(deps)})" if deps else ""))
                continue
            argv = [sbatch, "--parsable"] + ([f"--dependency=afterok:{':'.join(deps)}"] if deps else []) + [str(path)]
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                msg = " ".join((proc.stderr or proc.stdout).split())
                raise LandscapeError(f"sbatch refused {cell.name} {step.name}: {msg}")
            jid = proc.stdout.strip().split(";")[0]
            jobs[key] = jid
            submitted += 1
            write_record(study, cell, step, status="queued", digest=study.digest(cell, step), job_id=jid,
                         executor="slurm", command=shlex.join(study.command(cell, step)), last_line="",
                         **({"attempts": 0} if st.status == "changed" else {}))
            print(f"{cell.name} {step.name}: job {jid}" + (f" (after {', '.join(deps)})" if deps else ""))
        print(f"{study.name}: {submitted} job(s) {'written (--dry-run)' if dry_run else 'submitted'}, "
              f"{skipped} step(s) already done; "
              f"landscape-study status {study.file} shows where they stand")
    return 0


def run_job_step(study: Study, cell_name: str, step_name: str) -> int:
    """Inside a SLURM job: run one step, forwarding SIGTERM/SIGUSR1/SIGINT to it; the exit code says what
    the job script does (75: requeue)."""
    cell, step = study.cell(cell_name), study.step(step_name)
    st = state(study, cell, step)
    if st.status == "done":
        print(f"landscape-study: {cell.name} {step.name} is done already; nothing to do", flush=True)
        return 0
    running = Running()

    def forward(signum, _frame):
        print(f"landscape-study: {signal.Signals(signum).name} received; passed to the step", file=sys.stderr,
              flush=True)
        running.stop(signal.SIGTERM if signum == signal.SIGINT else signum)
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(s, forward)
    res = study.resources_of(step)
    extra = {"job_id": os.environ.get("SLURM_JOB_ID"), "restarts": int(os.environ.get("SLURM_RESTART_COUNT", 0))}
    code, after = run_step(study, cell, step, running=running, executor="slurm", extra=extra,
                           nproc=int(res.get("torchrun") or 1))
    if after.status == "failed":
        print(f"landscape-study: {cell.name} {step.name} FAILED (exit {code}), not requeued: {after.detail}",
              file=sys.stderr, flush=True)
    return code
