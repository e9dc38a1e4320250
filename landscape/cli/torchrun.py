"""landscape-torchrun: torchrun with exit codes that a job script can act on.

``landscape-torchrun`` takes exactly torchrun's arguments and runs torch's own launcher
(``torch.distributed.run.main``) in this process; only its outcome is translated:

====  ==========================================================================================
0     every worker finished with 0
75    preempted, resume me: this process got SIGTERM or SIGUSR1 (the agent forwarded it to the
      workers, which finish their batch, write ``last.pt`` and exit 75), or the workers that
      ended by themselves all exited 75 (they got the signal directly, e.g. from SLURM)
2     a worker exited 2 (``landscape-*``'s one-line usage and data errors) and none of those that
      ended by themselves exited other than 2 or 75
130   this process got SIGINT (Ctrl-C; forwarded to the workers, which stop without a mid-epoch
      ``last.pt``); SIGHUP and SIGQUIT likewise give 128 + the signal's number
1     anything else: a worker crashed or was killed, or the launcher itself failed
====  ==========================================================================================

Each outcome other than 0 is one line on stderr, ``landscape-torchrun: ...``, with no Python traceback
(plain torchrun turns all of them into exit 1 and a ``ChildFailedError`` or ``SignalException``
traceback). torch's own warning lines (``W... Received 15 death signal, shutting down workers``,
``E... failed (exitcode: 75) local_rank: 1``) still appear above it.

What torch does (2.14), and what this adds:

- The agent handles the signals in ``--signals-to-handle`` (torch's default SIGTERM, SIGINT, SIGHUP,
  SIGQUIT) by raising ``SignalException`` in its monitoring loop; ``LocalElasticAgent`` then sends that
  same signal to every worker's process group, waits for them, and re-raises. Plain torchrun does *not*
  handle SIGUSR1 (what SLURM's ``--signal=USR1@...`` sends): it dies of it at once and its workers run on,
  orphaned. So unless ``--signals-to-handle`` (or ``PET_SIGNALS_TO_HANDLE``) is given, SIGUSR1 is added to
  the list. The same handler is installed here before the launcher starts, so a signal during the
  rendezvous (no worker yet) is a clean 75 too.
- The wait: after forwarding the signal the agent waits ``--shutdown-timeout`` seconds
  (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, default **30 s**) for all workers together, then SIGKILLs those
  still alive. A worker of ``landscape-train`` needs the rest of its batch plus the writing of ``last.pt``:
  raise the timeout if that can take longer (a slow file system, a large model, H-SAT's calibration
  batches). When torch reports such a kill, the exit is still 75 (the stop came from outside, the run
  resumes from the ``last.pt`` written before) but the line says so.
- When one worker fails, torch's agent stops the others (SIGTERM, the same wait) and raises
  ``ChildFailedError``, whose ``.failures`` maps the global rank of each failed worker to a
  ``ProcessFailure`` (``.exitcode``: negative for a signal; ``.message``: the error that torch's
  ``@record`` wrote for that worker, if the worker used it). The workers torch stopped are in it too,
  with the code they ended with after its SIGTERM (-15; -9 after the timeout; 75 from a landscape-train
  that saved on it): the exit code here is judged on the workers that ended by themselves, telling the
  others by the pids in torch's warning ``Sending process PID closing signal SIGTERM`` (if that warning
  is missing, e.g. ``LOGLEVEL=ERROR``, on all of them).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Collection, Sequence

from ..errors import EXIT_REQUEUE

PROG = "landscape-torchrun"
EXIT_BAD_INPUT = 2          # landscape.cli.common's; the workers' one-line usage and data errors
EXIT_FAILED = 1
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")   # landscape-train's (training.trainer.STOP_SIGNALS): write last.pt, exit 75
_TORCH_DEFAULT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
_CLOSING = ("Sending process %s closing signal", "Closing process %s via signal")  # torch stops a running worker
_KILLED = "Unable to shutdown process"  # ... and when that worker outlives --shutdown-timeout (then SIGKILL)
_MP_LOGGER = "torch.distributed.elastic.multiprocessing.api"


class _Watch(logging.Handler):
    """Reads two of torch's warnings: the workers it sends a closing signal to (``stopped``: their pids; it
    stops all of them when one fails or when it got a signal) and those it SIGKILLs after the shutdown
    timeout (``killed``). If torch words them otherwise one day, only the attribution below gets coarser."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.stopped: set[int] = set()
        self.killed = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if msg.startswith(_CLOSING) and record.args:
            self.stopped.add(record.args[0])
        elif msg.startswith(_KILLED):
            self.killed += 1


def _with_sigusr1(argv: list[str]) -> list[str]:
    """``argv`` with ``--signals-to-handle`` torch's default plus SIGUSR1, unless the caller chose a list."""
    from torch.distributed.run import parse_args
    args = parse_args(argv)
    if "PET_SIGNALS_TO_HANDLE" in os.environ or args.signals_to_handle != _TORCH_DEFAULT_SIGNALS:
        return argv
    return [f"--signals-to-handle={_TORCH_DEFAULT_SIGNALS},SIGUSR1", *argv]


def _signals(argv: list[str]) -> list[signal.Signals]:
    from torch.distributed.run import parse_args
    names = parse_args(argv).signals_to_handle.split(",")
    return [getattr(signal, n.strip()) for n in names if isinstance(getattr(signal, n.strip(), None), signal.Signals)]


def _message(failure) -> str:
    """The error torch recorded for a failed worker (its ``@record`` error file), on one line; '' if none."""
    if not failure.error_file or not os.path.isfile(failure.error_file):
        return ""
    msg = failure.message
    if isinstance(msg, dict):  # {"message": "Type: text", "extraInfo": {"py_callstack": ...}}: no traceback
        msg = msg.get("message", "")
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _describe(rank, failure) -> str:
    code = failure.exitcode
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited {code}"
    msg = _message(failure)
    return f"rank {rank} {how}" + (f": {msg}" if msg else "")


def failure_exit_code(failures: dict, stopped_pids: Collection[int] = ()) -> tuple[int, str]:
    """The exit code and one line for a ``ChildFailedError``'s ``failures`` (global rank -> ProcessFailure).
    Judged on the workers that ended by themselves: those whose pid is in ``stopped_pids`` were still running
    when the first failure was seen and were stopped by torch (their code is a consequence: -15, -9, or 75
    from landscape-train saving on that SIGTERM); if that leaves none, on all of them."""
    root = {r: f for r, f in failures.items() if f.pid not in stopped_pids} or dict(failures)
    codes = {f.exitcode for f in root.values()}
    if codes == {EXIT_REQUEUE}:
        return EXIT_REQUEUE, (f"{PROG}: the workers stopped with exit {EXIT_REQUEUE} (preempted; they saved "
                              f"their state): rerun with --resume")
    if EXIT_BAD_INPUT in codes and codes <= {EXIT_BAD_INPUT, EXIT_REQUEUE}:
        rank = min(r for r, f in root.items() if f.exitcode == EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT, f"{PROG}: {_describe(rank, root[rank])} (a usage or input error: see above)"
    first = min((r for r, f in root.items() if f.exitcode != EXIT_REQUEUE), key=lambda r: (root[r].timestamp, r))
    others = f" (and {len(root) - 1} more rank(s))" if len(root) > 1 else ""
    return EXIT_FAILED, f"{PROG}: failed: {_describe(first, root[first])}{others}"


def _signal_exit(sig: signal.Signals, killed: int, timeout: int | None) -> tuple[int, str]:
    if sig.name in STOP_SIGNALS:
        if killed:
            return EXIT_REQUEUE, (f"{PROG}: stopped by {sig.name}; {killed} worker(s) did not stop within the "
                                  f"shutdown timeout ({timeout} s; --shutdown-timeout) and were killed: "
                                  f"rerun with --resume to continue from the last last.pt written")
        return EXIT_REQUEUE, (f"{PROG}: stopped by {sig.name}; the workers saved their state (exit "
                              f"{EXIT_REQUEUE}): rerun with --resume")
    return 128 + int(sig), f"{PROG}: stopped by {sig.name} (forwarded to the workers)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``torch.distributed.run`` with ``argv`` (torchrun's arguments); the exit code as the module says."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        from torch.distributed import run as torchrun
        from torch.distributed.elastic.multiprocessing.api import SignalException, _terminate_process_handler
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        argv = _with_sigusr1(argv)
        args = torchrun.parse_args(argv)
    except SystemExit as e:         # argparse: --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_BAD_INPUT)
    # torch installs this handler when it starts the workers; from now on, so that a signal during the
    # rendezvous ends as cleanly (SignalException, nothing to forward yet)
    old = {sig: signal.signal(sig, _terminate_process_handler) for sig in _signals(argv)}
    watch = _Watch()
    logging.getLogger(_MP_LOGGER).addHandler(watch)
    code, line = 0, None
    try:
        torchrun.main(argv)
    except SignalException as e:
        timeout = args.shutdown_timeout or int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30"))
        code, line = _signal_exit(signal.Signals(e.sigval), watch.killed, timeout)
    except ChildFailedError as e:
        code, line = failure_exit_code(e.failures, watch.stopped)
    except KeyboardInterrupt:      # SIGINT before the handler above was in place
        code, line = 130, f"{PROG}: interrupted"
    except SystemExit as e:
        if e.code not in (None, 0):
            code, line = EXIT_FAILED, f"{PROG}: the launcher exited with {e.code}"
    except Exception as e:          # the launcher itself failed (rendezvous, bad --nnodes, ...)
        code, line = EXIT_FAILED, f"{PROG}: error: {type(e).__name__}: {' '.join(str(e).split())}"
    finally:
        for sig in old:             # the workers are gone and the outcome known: a second signal changes nothing
            signal.signal(sig, signal.SIG_IGN)
        logging.getLogger(_MP_LOGGER).removeHandler(watch)
    if line:
        print(line, file=sys.stderr, flush=True)
    for sig, handler in old.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
