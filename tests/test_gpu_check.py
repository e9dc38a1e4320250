"""benchmarks/gpu_check.sh: its syntax, its refusal without a GPU, and its --cpu dry run (~2 min)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _run(*args, timeout=120, env=None):
    e = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=e)


def test_syntax_and_bad_argument():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    proc = _run("--gpus")
    assert proc.returncode == 2 and "unknown argument --gpus" in proc.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is present")
def test_fails_clearly_without_a_gpu(tmp_path):
    proc = _run(env={"WORK": str(tmp_path)})
    assert proc.returncode == 1 and "no NVIDIA GPU" in proc.stderr and "--cpu" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.slow   # 2-3 minutes on 2 cores: the default run stays under CI's 20 minutes (make test-slow runs it)
def test_cpu_dry_run(tmp_path):
    """Every console-script step and every measurement of benchmarks/gpu_check.py runs (tiny, on the CPU)."""
    proc = _run("--cpu", timeout=900, env={"WORK": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    for step in ("train", "spectrum", "surface", "torchrun", "eval", "top eigenvalues", "preempt"):
        assert step in summary, summary
    assert "TF32 False" in summary
    assert "exit 75 then 0" in summary   # SIGTERM mid-epoch: checkpointed, then resumed
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    tasks = {r["task"] for r in rows}
    assert {"hvp-graphs", "floor", "train", "ours-top5", "ours-trace", "ours-density", "ref-top5"} <= tasks
    assert not [r for r in rows if "error" in r], rows
    report = (tmp_path / "report.md").read_text()
    for table in ("s / HVP rebuilt", "TF32 on", "bf16 autocast img/s", "| mlp | ours-top5 |"):
        assert table in report, report
