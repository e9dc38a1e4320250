"""The local executor: N steps at once on this machine, each its console command in a subprocess (its log in
its cell's folder), at most one step per cell at a time, an analysis only after its cell's training and,
when it reads {reference}, the reference cell's. Threads are shared out between the workers
(OMP_NUM_THREADS), one GPU per worker when ``gpus`` are given (CUDA_VISIBLE_DEVICES).

SIGINT or SIGTERM stops cleanly: every running step is sent SIGTERM (a training writes last.pt mid-epoch),
and a rerun continues where it stopped. A second ``run`` of the same study folder is refused while the
first holds its lock (``landscape.io.lock_folder``), naming it.

Why no scheduler library: the work is a handful of long subprocesses with two kinds of dependency; a
thread per worker waiting on its subprocess is all it takes (and SLURM is the scheduler for clusters)."""
from __future__ import annotations

import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import EXIT_REQUEUE, BusyError
from ..io import lock_folder
from .estimate import StepEstimate, fmt_seconds
from .execute import Running, dependencies, run_step
from .spec import Cell, Step, Study
from .squeue import ACTIVE, refresh
from .state import claim_folder, state


@dataclass
class Outcome:
    done: int = 0
    failed: int = 0
    blocked: int = 0
    skipped: int = 0
    stopped: bool = False

    @property
    def code(self) -> int:
        return EXIT_REQUEUE if self.stopped else 1 if (self.failed or self.blocked) else 0


def run_local(study: Study, workers: int = 1, gpus: Sequence[str] = (), threads: int | None = None,
              estimates: Sequence[StepEstimate] = (), say: Callable[[str], None] = print) -> Outcome:
    """Run every step that is not done; returns the counts. Cost: the steps' own (see ``plan``)."""
    claim_folder(study)
    with lock_folder(study.out, command=f"landscape-study run {study.file}"):
        return _run(study, max(1, workers), list(gpus), threads, estimates, say)


def _run(study: Study, workers: int, gpus: list[str], threads: int | None, estimates: Sequence[StepEstimate],
         say: Callable[[str], None]) -> Outcome:
    pairs = study.pairs()
    _refuse_live_slurm_jobs(study, pairs)
    est = {(e.cell, e.step): e.seconds for e in estimates}
    status: dict[tuple[str, str], str] = {}
    todo: list[tuple[Cell, Step]] = []
    out = Outcome()
    for cell, step in pairs:
        st = state(study, cell, step)
        key = (cell.name, step.name)
        if st.status == "done":
            status[key] = "done"
            out.skipped += 1
            continue
        if st.status == "changed":
            say(f"{cell.name} {step.name}: {st.detail}; it runs again")
        elif st.status in ("failed", "stopped"):
            say(f"{cell.name} {step.name}: {st.status} last time ({st.detail or 'no log line'}); it runs again")
        elif st.status in ("running", "queued"):
            say(f"{cell.name} {step.name}: recorded as {st.status} by an earlier run that is gone; it runs again")
        status[key] = "todo"
        todo.append((cell, step))
    # a changed training changes its analyses (their digests include it); nothing more to propagate here
    if not todo:
        say(f"nothing to do: all {len(pairs)} steps of {len(study.cells)} cells are done ({study.out})")
        return out
    cpu = threads or max(1, (os.cpu_count() or 1) // workers)
    say(f"{study.name}: {len(todo)} of {len(pairs)} steps to run ({out.skipped} done), {workers} worker(s), "
        f"{cpu} thread(s) each" + (f", GPUs {','.join(gpus)}" if gpus else "") + f"; logs in {study.out}/cells/*/logs")
    running = Running()
    events: queue.Queue = queue.Queue()
    busy_cells: set[str] = set()
    free_slots = list(range(workers))
    t_start = time.perf_counter()
    spent_est = 0.0
    spent_real = 0.0

    def worker(slot: int, cell: Cell, step: Step) -> None:
        env = {"OMP_NUM_THREADS": str(cpu), "MKL_NUM_THREADS": str(cpu), "LANDSCAPE_PROGRESS_SECONDS": "30"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        try:
            code, st = run_step(study, cell, step, env=env, running=running, executor="local")
        except Exception as e:  # noqa: BLE001 - a bug in one step's bookkeeping must not hang the others
            code, st = 1, None
            say(f"{cell.name} {step.name}: {type(e).__name__}: {e}")
        events.put((slot, cell, step, code, st))

    def on_signal(signum, _frame):
        if running.stopping is None:
            say(f"stopping: {signal.Signals(signum).name} sent to the running steps (a training saves last.pt); "
                "rerun the same command to continue")
        running.stop(signal.SIGTERM)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    live = 0
    try:
        while True:
            if running.stopping is None:
                for cell, step in sorted(todo, key=lambda p: p[1].kind != "train"):   # trainings unlock the rest
                    if not free_slots:
                        break
                    key = (cell.name, step.name)
                    deps = dependencies(study, cell, step)
                    if any(status.get(d) in ("failed", "blocked") for d in deps):
                        status[key] = "blocked"
                        out.blocked += 1
                        todo.remove((cell, step))
                        say(f"{cell.name} {step.name}: not run, its training failed")
                        continue
                    if cell.name in busy_cells or any(status.get(d, "done") != "done" for d in deps):
                        continue
                    slot = free_slots.pop(0)
                    busy_cells.add(cell.name)
                    status[key] = "running"
                    todo.remove((cell, step))
                    live += 1
                    say(f"{_counts(status)} | {cell.name} {step.name}: started"
                        + (f" (est. {fmt_seconds(est[key])})" if key in est else ""))
                    threading.Thread(target=worker, args=(slot, cell, step), daemon=True).start()
            if live == 0:
                break
            slot, cell, step, code, st = events.get()
            live -= 1
            free_slots.append(slot)
            busy_cells.discard(cell.name)
            key = (cell.name, step.name)
            secs = float((st.record or {}).get("seconds") or 0.0) if st else 0.0
            if st is not None and st.status == "done":
                status[key] = "done"
                out.done += 1
                spent_real += secs
                spent_est += est.get(key, secs)
                left = sum(est.get((c.name, s.name), 0.0) for c, s in todo) * \
                    (spent_real / spent_est if spent_est > 0 else 1.0) / workers
                say(f"{_counts(status)} | {cell.name} {step.name}: done in {fmt_seconds(secs)}"
                    + (f"; about {fmt_seconds(left)} left" if todo else ""))
            elif st is not None and st.status == "stopped":
                status[key] = "stopped"
                out.stopped = True
                say(f"{cell.name} {step.name}: stopped (rerun to continue)")
            else:
                status[key] = "failed"
                out.failed += 1
                say(f"{_counts(status)} | {cell.name} {step.name}: FAILED (exit {code}): "
                    f"{(st.detail if st else '') or 'see its log'}")
            if running.stopping is not None:
                out.stopped = True
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if running.stopping is not None:
        out.stopped = True
    took = time.perf_counter() - t_start
    say(f"{study.name}: {out.done} steps done, {out.failed} failed, {out.blocked} not run, {out.skipped} were done "
        f"before; {fmt_seconds(took)}" + ("; stopped: rerun the same command to continue" if out.stopped else ""))
    return out


def _refuse_live_slurm_jobs(study: Study, pairs) -> None:
    """A study whose steps are queued or running on SLURM is not run here at the same time."""
    recs = [state(study, c, s).record or {} for c, s in pairs]
    if not any(r.get("executor") == "slurm" and r.get("status") in ("queued", "running", "stopped") for r in recs):
        return
    live = sorted(f"{c} {s} (job {j})" for (c, s), (st, _) in refresh(study).items() if st in ACTIVE
                  for j in [next(r.get("job_id") for r in recs if r.get("cell") == c and r.get("step") == s)])
    if live:
        raise BusyError(f"{study.out}: {len(live)} step(s) of this study are queued or running on SLURM "
                        f"({', '.join(live[:3])}{', ...' if len(live) > 3 else ''}); wait for them or scancel them")


def _counts(status: dict) -> str:
    vals = list(status.values())
    return (f"[{vals.count('done')}/{len(vals)} done, {vals.count('running')} running, "
            f"{vals.count('failed') + vals.count('blocked')} failed]")
