"""A real one-node SLURM on this machine for the study's tests (shared/SLURM_LOCAL.md's recipe): munged,
slurmctld and slurmd from Debian's packages, started as root with a slurm.conf naming this host, and stopped
by their pids. ``start`` skips (returns None) where the packages are missing or we are not root."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")


@dataclass
class Cluster:
    state: Path
    pids: list[int]

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True)   # jobs of a test
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        for pid in self.pids:
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)


def available() -> str | None:
    """Why SLURM cannot be started here (None when it can)."""
    if os.geteuid() != 0:
        return "not root"
    missing = [t for t in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol")
               if not shutil.which(t) and not Path(f"/usr/sbin/{t}").exists()]
    return f"missing {', '.join(missing)} (apt-get install slurm-wlm munge)" if missing else None


def _pid(path: Path, timeout: float = 20.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"no pid file {path}")


def start(state: Path) -> Cluster:
    """Start munged, slurmctld and slurmd with their state under ``state``; wait until the node is idle."""
    running = subprocess.run(["pgrep", "-x", "slurmctld|slurmd"], capture_output=True, text=True).stdout.split()
    if running:
        raise RuntimeError(f"SLURM daemons already run here (pids {', '.join(running)}); stop them first")
    state.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool", "log"):
        (state / d).mkdir(exist_ok=True)
    pids = []
    run = Path("/run/munge")
    run.mkdir(parents=True, exist_ok=True)
    shutil.chown(run, "munge", "munge")
    if not Path("/etc/munge/munge.key").exists() or not Path("/etc/munge/munge.key").stat().st_size:
        subprocess.run(["mungekey", "--create"], check=True)
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode != 0:
        # munged runs as the munge user, which cannot enter pytest's root-only temporary folders: its pid
        # file goes where the package puts it, in /run/munge (owned by munge)
        pidfile = run / "munged.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c",
                        f"/usr/sbin/munged --pid-file={pidfile} --force"], check=True)
        pids.append(_pid(pidfile))
        deadline = time.time() + 10
        while time.time() < deadline and subprocess.run("munge -n | unmunge", shell=True,
                                                        capture_output=True).returncode:
            time.sleep(0.1)
    host = socket.gethostname()
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(f"""ClusterName=local
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MinJobAge=3600
NodeName={host} CPUs={os.cpu_count()} RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    for f in ("slurmctld.pid", "slurmd.pid"):
        (state / f).unlink(missing_ok=True)
    subprocess.run(["/usr/sbin/slurmctld", "-c"], check=True)      # -c: a clean start, no old jobs
    pids.append(_pid(state / "slurmctld.pid"))
    subprocess.run(["/usr/sbin/slurmd"], check=True)
    pids.append(_pid(state / "slurmd.pid"))
    cluster = Cluster(state, pids)
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.strip()
        if out in ("idle", "mix", "alloc"):
            return cluster
        time.sleep(0.3)
    cluster.stop()
    raise RuntimeError(f"SLURM node not idle after 60 s (sinfo: {out!r}); logs in {state}/log")
