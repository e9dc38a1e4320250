"""landscape-torchrun: torch's launcher (2 CPU processes, gloo) with exit codes a job script can act on:
0 done, 75 preempted (resume), 2 a usage error, 1 anything else; one line, never a traceback of its own."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from landscape.checkpoint import load_checkpoint, read_checkpoint
from landscape.cli import torchrun

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
# a worker: every rank exits $CODE (rank 0 exits 0 when ONLY_RANK1 is set)
EXITS = textwrap.dedent("""
    import os, sys
    code = int(os.environ["CODE"])
    sys.exit(0 if os.environ.get("ONLY_RANK1") and os.environ["RANK"] == "0" else code)
""")
# a worker that stops like landscape-train: SIGTERM / SIGUSR1 set a flag, it exits 75; SIGINT: 130 (IGNORE:
# it never stops)
STOPS = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    got = []
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN if os.environ.get("IGNORE") else lambda n, f: got.append(n))
    Path(os.environ["READY"], os.environ["RANK"]).touch()
    deadline = time.time() + 60
    while not got and time.time() < deadline:
        time.sleep(0.02)
    print("got", signal.Signals(got[0]).name if got else None, flush=True)
    sys.exit(130 if got == [signal.SIGINT] else 75 if got else 1)
""")


def launcher() -> list[str]:
    script = BIN / "landscape-torchrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "landscape.cli.torchrun"]


def run(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """landscape-torchrun --standalone --nproc-per-node 2 ARGS; stdout and stderr together in .stdout."""
    return run_all([(args, env)], timeout)[0]


def run_all(cases: list[tuple[list[str], dict | None]], timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """``run`` of each (args, env), all at the same time (most of a launch is waiting and importing)."""
    procs = [subprocess.Popen([*launcher(), "--standalone", "--nproc-per-node", "2", *args],
                              env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for args, env in cases]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
        return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def last_line(out: str) -> str:
    return out.strip().splitlines()[-1]


def start_and_signal(cmd: list[str], ready, sig: signal.Signals, env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd``; once ``ready()`` is true, send ``sig`` to it (the launcher only, as SLURM does)."""
    proc = subprocess.Popen(cmd, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def stop_when(cmd: list[str], ready, sig: signal.Signals, env: dict | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
    return finish(start_and_signal(cmd, ready, sig, env), timeout)


# --- exit codes of workers that exit by themselves ------------------------------------------------------

def test_worker_exit_codes_become_the_job_scripts(tmp_path):
    """75 on every rank -> 75; 3 on rank 1 -> 1 naming it; 2 -> 2; 0 -> 0. One line of ours, no traceback."""
    (tmp_path / "w.py").write_text(EXITS)
    cases = [(75, False, 75, "landscape-torchrun: the workers stopped with exit 75 (preempted; they saved their "
                             "state): rerun with --resume"),
             (3, True, 1, "landscape-torchrun: failed: rank 1 exited 3"),
             (2, False, 2, "exited 2 (a usage or input error: see above)"),
             (0, False, 0, None)]
    results = run_all([([str(tmp_path / "w.py")], {"CODE": str(code), **({"ONLY_RANK1": "1"} if only1 else {})})
                       for code, only1, _, _ in cases])
    for (code, _, expect, says), res in zip(cases, results):
        assert res.returncode == expect, (code, res.stdout)
        assert "Traceback" not in res.stdout, res.stdout
        ours = [l for l in res.stdout.splitlines() if l.startswith("landscape-torchrun")]
        assert ours == ([] if says is None else [last_line(res.stdout)]), res.stdout
        assert says is None or says in ours[0], (says, res.stdout)


@pytest.mark.slow
def test_a_recorded_error_is_named_and_the_stopped_rank_is_not(tmp_path):
    """A worker under torch's @record: its exception's message (not its traceback) is on the line. Rank 0,
    if still importing torch when rank 1 failed, is stopped by torch (-15): not named, not counted."""
    (tmp_path / "rec.py").write_text(textwrap.dedent("""
        import os
        from torch.distributed.elastic.multiprocessing.errors import record
        @record
        def main():
            if os.environ["RANK"] == "1":
                raise ValueError("no such\\nthing")
        main()
    """))
    res = run([str(tmp_path / "rec.py")])
    assert res.returncode == 1, res.stdout
    assert last_line(res.stdout) == "landscape-torchrun: failed: rank 1 exited 1: ValueError: no such thing"


def test_exit_code_of_mixed_failures():
    """Only all-75 is a preemption; 2 (with 75s) a usage error; a signal or any other code a failure; the
    workers torch stopped itself (their pids) do not count unless no other failed."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def fails(*codes):
        return {r: ProcessFailure(local_rank=r, pid=100 + r, exitcode=c, error_file="<N/A>")
                for r, c in enumerate(codes)}
    assert torchrun.failure_exit_code(fails(75, 75))[0] == 75
    assert torchrun.failure_exit_code(fails(75, 2))[0] == 2
    assert torchrun.failure_exit_code(fails(75, 3)) == (1, "landscape-torchrun: failed: rank 1 exited 3 (and 1 more rank(s))")
    code, line = torchrun.failure_exit_code(fails(-9))
    assert code == 1 and "rank 0 was killed by SIGKILL" in line
    assert torchrun.failure_exit_code(fails(-15, 2), stopped_pids={100})[0] == 2
    assert torchrun.failure_exit_code(fails(1, 75), stopped_pids={100})[0] == 75
    assert torchrun.failure_exit_code(fails(1, 75), stopped_pids={100, 101})[0] == 1
    assert torchrun.STOP_SIGNALS == __import__("landscape.training.trainer", fromlist=["x"]).STOP_SIGNALS


def test_torchruns_usage_errors_exit_2(capsys):
    assert torchrun.main(["--nproc-per-node"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# --- the launcher gets the signal (what SLURM's scancel --signal / --signal=SIG@T does) ---------------

def test_a_stop_signal_is_forwarded_and_exits_75(tmp_path):
    """SIGTERM (torch forwards it) and SIGUSR1 (plain torchrun dies of it, leaving its workers running):
    the workers get it, stop with 75, and the launcher exits 75 with one line; SIGINT gives 130."""
    (tmp_path / "w.py").write_text(STOPS)
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        ready = tmp_path / sig.name
        ready.mkdir()
        procs[sig] = start_and_signal([*launcher(), "--standalone", "--nproc-per-node", "2", str(tmp_path / "w.py")],
                                      lambda r=ready: len(list(r.iterdir())) == 2, sig, env={"READY": str(ready)})
    for sig, proc in procs.items():
        res = finish(proc)
        assert "Traceback" not in res.stdout, res.stdout
        if sig == signal.SIGINT:
            assert res.returncode == 130, res.stdout
            assert last_line(res.stdout) == "landscape-torchrun: stopped by SIGINT (forwarded to the workers)"
            continue
        assert res.returncode == 75, res.stdout
        assert last_line(res.stdout) == (f"landscape-torchrun: stopped by {sig.name}; the workers saved their "
                                         f"state (exit 75): rerun with --resume")
        assert res.stdout.count(f"got {sig.name}") == 2, res.stdout     # both workers had it


@pytest.mark.slow
def test_workers_that_outlive_the_shutdown_timeout_are_killed_and_said_so(tmp_path):
    (tmp_path / "w.py").write_text(STOPS)
    ready = tmp_path / "ready"
    ready.mkdir()
    res = stop_when([*launcher(), "--standalone", "--nproc-per-node", "2", "--shutdown-timeout", "1",
                     str(tmp_path / "w.py")], lambda: len(list(ready.iterdir())) == 2, signal.SIGTERM,
                    env={"READY": str(ready), "IGNORE": "1"})
    assert res.returncode == 75, res.stdout
    assert "Traceback" not in res.stdout
    assert "2 worker(s) did not stop within the shutdown timeout (1 s" in last_line(res.stdout)


# --- the real thing: landscape-train under landscape-torchrun, preempted and resumed ------------------

def _rows(run: Path) -> list[list[str]]:
    keys = ("epoch", "lr", "lam", "eps_t", "train_loss", "train_acc", "val_clean", "val_pgd", "val_loss")
    with open(run / "metrics.csv") as f:
        return [[r[k] for k in keys] for r in csv.DictReader(f)]


def test_landscape_train_preempted_under_torchrun_resumes_to_the_uninterrupted_run(tmp_path):
    """SIGTERM to the launcher early in epoch 2 of 3: the workers write last.pt mid-epoch and the launcher
    exits 75, no traceback; --resume under landscape-torchrun finishes with the same metrics rows and
    bit-identical best.pt / last.pt weights as an uninterrupted 2-process run (~25 s on 2 busy cores)."""
    train = str(BIN / "landscape-train") if (BIN / "landscape-train").exists() else None
    if train is None:
        pytest.skip("the landscape-train console script is not installed next to this Python")
    flags = ["--method", "at", "--dataset", "digits", "--epochs", "3", "--train-samples", "1024",
             "--batch-size", "32", "--quiet", "--device", "cpu", "--name", "r"]
    ref = run([train, *flags, "--runs-dir", str(tmp_path / "ref")], timeout=300)
    assert ref.returncode == 0 and "Traceback" not in ref.stdout, ref.stdout

    run_dir = tmp_path / "stopped" / "r"
    stopped = stop_when([*launcher(), "--standalone", "--nproc-per-node", "2", train, *flags,
                         "--runs-dir", str(tmp_path / "stopped")],
                        lambda: (run_dir / "metrics.csv").exists(), signal.SIGTERM, timeout=300)  # after epoch 1
    assert stopped.returncode == 75, stopped.stdout
    assert "Traceback" not in stopped.stdout, stopped.stdout
    assert last_line(stopped.stdout).startswith("landscape-torchrun: stopped by SIGTERM; the workers saved")
    assert "landscape-train: stopped by SIGTERM in epoch" in stopped.stdout
    mid = read_checkpoint(run_dir / "last.pt")["metrics"]["mid_epoch"]
    assert mid["epoch"] in (2, 3) and 0 < mid["batch"] <= mid["of"], mid
    assert len(_rows(run_dir)) == mid["epoch"] - 1

    resumed = run([train, "--resume", str(run_dir), "--quiet", "--device", "cpu"], timeout=300)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stdout, resumed.stdout
    assert _rows(run_dir) == _rows(tmp_path / "ref" / "r") and len(_rows(run_dir)) == 3
    for name in ("best.pt", "last.pt"):
        a, b = (load_checkpoint(d / name).model.state_dict() for d in (tmp_path / "ref" / "r", run_dir))
        assert all(torch.equal(a[k], b[k]) for k in a), name
