"""Run one (cell, step): its console command in a subprocess, in the study's folder, its output appended to
the step's log, its record written before and after. Shared by the local executor (one call per worker
slot) and by SLURM jobs (``landscape-study step``), so that a step is the same command with the same files
wherever it runs; ``dependencies`` says which steps both executors wait for.

Exit codes: 0 done; 75 stopped by a signal (SIGTERM/SIGUSR1/SIGINT, what SLURM sends before a time limit
or on preemption): rerun to continue; anything else: failed, with the last line of the log recorded."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from ..errors import EXIT_REQUEUE
from .spec import Cell, Step, Study
from .state import StepState, argv_to_run, describe_host, last_line, log_path, state, write_record

STOPPED_CODES = {EXIT_REQUEUE, 130, -signal.SIGTERM, -signal.SIGINT, -signal.SIGUSR1}


def executable(script: str) -> str:
    """A console script of this installation (beside this Python), else the name as found on PATH."""
    here = Path(sys.executable).parent / script
    return str(here) if here.exists() else script


class Running:
    """The child processes of this process's running steps, so that a stop signal reaches each of them."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self.stopping: int | None = None       # the signal being forwarded, once asked to stop

    def add(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs[p.pid] = p
            if self.stopping is not None:
                _signal_group(p, self.stopping)

    def remove(self, p: subprocess.Popen) -> None:
        with self._lock:
            self._procs.pop(p.pid, None)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Ask every running step to stop (a training writes last.pt and exits 75)."""
        with self._lock:
            self.stopping = sig
            for p in self._procs.values():
                _signal_group(p, sig)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def dependencies(study: Study, cell: Cell, step: Step) -> list[tuple[str, str]]:
    """The (cell, step) pairs that must be done before this one: its cell's training, and the reference
    cell's training when the step reads {reference}."""
    deps = []
    if step.kind != "train":
        if cell.trained:
            deps.append((cell.name, "train"))
        if step.uses_reference and cell.reference and study.cell(cell.reference).trained:
            deps.append((cell.reference, "train"))
    return deps


def run_step(study: Study, cell: Cell, step: Step, env: Mapping[str, str] | None = None,
             running: Running | None = None, executor: str = "local", extra: Mapping | None = None,
             started: Callable[[list[str]], None] | None = None, nproc: int = 1) -> tuple[int, StepState]:
    """Run one step to its end; returns (exit code, its state after). A training with ``nproc`` > 1 runs
    under ``landscape-torchrun`` (one process per GPU of the node). Cost: the step's own."""
    digest = study.digest(cell, step)
    before = state(study, cell, step, digest)
    argv = argv_to_run(study, cell, step, before)
    log = log_path(study, cell, step)
    log.parent.mkdir(parents=True, exist_ok=True)
    attempts = int((before.record or {}).get("attempts", 0)) + 1 if before.status != "changed" else 1
    write_record(study, cell, step, status="running", digest=digest, command=shlex.join(study.command(cell, step)),
                 ran=shlex.join(argv), attempts=attempts, host=describe_host(), executor=executor,
                 started=time.strftime("%Y-%m-%d %H:%M:%S"), last_line="", **(extra or {}))
    if started:
        started(argv)
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"# landscape-study {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempts}: "
                f"(cd {study.out} && {shlex.join(argv)})\n".encode())
        f.flush()
        try:
            launch = [executable(argv[0]), *argv[1:]]
            if step.kind == "train" and nproc > 1:
                launch = [executable("landscape-torchrun"), "--standalone", "--nproc-per-node", str(nproc), *launch]
            proc = subprocess.Popen(launch, cwd=study.out, stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        except OSError as e:
            code = 127
            f.write(f"landscape-study: cannot start {argv[0]}: {e}\n".encode())
        else:
            if running is not None:
                running.add(proc)
            try:
                code = proc.wait()
            finally:
                if running is not None:
                    running.remove(proc)
    seconds = time.perf_counter() - t0
    result = study.out / study.outputs(cell, step)["result"]
    asked = running is not None and running.stopping is not None
    if code == 0 and result.exists():
        status = "done"
    elif code == 0:
        status, code = "failed", 1
        with open(log, "a") as f:
            f.write(f"landscape-study: {argv[0]} exited 0 but wrote no {result.name}\n")
    elif code in STOPPED_CODES or (asked and code < 0):
        status, code = "stopped", EXIT_REQUEUE
    else:
        status = "failed"
    line = last_line(log)
    prev = float((before.record or {}).get("seconds") or 0.0) if before.status != "changed" else 0.0
    rec = write_record(study, cell, step, status=status, exit_code=code, seconds=prev + seconds,
                       finished=time.strftime("%Y-%m-%d %H:%M:%S"), last_line=line)
    return code, StepState(status, line if status != "done" else "", rec)
