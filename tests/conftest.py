import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def have_fashion_mnist() -> bool:
    return any((FMNIST_DIR / n).exists() for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run ``python -m landscape.cli.X args`` in a subprocess; returns CompletedProcess."""
    module, *rest = args
    e = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", f"landscape.cli.{module}", *rest], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def run_main(main, argv, capsys) -> subprocess.CompletedProcess:
    """Call a console script's ``main(argv)`` in-process; argparse's exit becomes the return code, and the
    captured output is returned as a subprocess would return it (for ``assert_one_line_error``)."""
    argv = [str(a) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    cap = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, cap.out, cap.err)


def assert_one_line_error(proc, code: int = 2, contains: str | None = None):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    if contains:
        assert contains.lower() in lines[0].lower(), lines[0]


def sigkill_surface_run(cmd: list, out: Path, at_least: int, env: dict | None = None, timeout: float = 120):
    """Start ``cmd`` (a surface run writing to ``out``) in its own process group and SIGKILL the whole group
    once ``out/surface.json`` holds at least ``at_least`` points; returns the killed process."""
    import json
    import signal
    import time
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline, done = time.time() + timeout, 0
        while time.time() < deadline and proc.poll() is None:
            try:
                done = json.loads((Path(out) / "surface.json").read_text())["points_done"]
            except (OSError, ValueError, KeyError):
                pass
            if done >= at_least:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return proc


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test models are tiny: they run fastest, and steadiest on a shared machine, on one thread
    (subprocesses started by ``run_cli`` get OMP_NUM_THREADS=1 too)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_test():
    from landscape import load_dataset
    return load_dataset("digits", "test")


@pytest.fixture
def tiny_cnn():
    from landscape import build_model
    return build_model("cnn-small", "digits", seed=0)


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A briefly trained PGD-AT (``method="at"``, eps 0.1, 3 epochs) run on digits: its run dir, shared by the
    tests that need a robust checkpoint."""
    from landscape.training import TrainConfig, train
    out = tmp_path_factory.mktemp("runs")
    res = train(TrainConfig(method="at", epochs=3, lr=0.05, name="at-digits"), out=out)
    return res.run_dir
