"""Issue 12: a user's mistake never costs work and never loses anything.

One table of mistakes across the five console scripts: each ends with exit status 2 and exactly one line on
stderr (no traceback). Cases marked ``before="out"`` must be refused before anything is loaded or computed,
``before="work"`` before any data is read or computation started (the checkpoint may be read),
``before="compute"`` before the grid or directions are computed: the functions that would do the work
are replaced by ones that fail the test if called. Unwritable outputs are made in ways that hold for root
too (these tests run as root, for whom a read-only folder is writable and ``os.access`` always says yes): a
parent that is a regular file, a target that is an existing folder, a path under /proc, an unknown image
type.
"""
import json
import os
import stat
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import assert_one_line_error, run_main  # noqa: E402
from landscape import build_model  # noqa: E402
from landscape.checkpoint import save_checkpoint  # noqa: E402
from landscape.cli import eval as eval_cli  # noqa: E402
from landscape.cli import plot as plot_cli  # noqa: E402
from landscape.cli import spectrum as spectrum_cli  # noqa: E402
from landscape.cli import surface as surface_cli  # noqa: E402
from landscape.cli import train as train_cli  # noqa: E402
from landscape.data import dataset_info  # noqa: E402
from landscape.io import LOCK_NAME, lock_folder, save_npz, write_json  # noqa: E402
from landscape.training.config import TrainConfig  # noqa: E402

MAINS = {"train": train_cli.main, "eval": eval_cli.main, "spectrum": spectrum_cli.main,
         "surface": surface_cli.main, "plot": plot_cli.main}
PARSERS = {"train": train_cli.build_parser, "eval": eval_cli.build_parser, "spectrum": spectrum_cli.build_parser,
           "surface": surface_cli.build_parser, "plot": plot_cli.build_parser}


def _config():
    info = dataset_info("digits")
    train = TrainConfig(method="at", dataset="digits", model="cnn-small").resolved().to_dict()
    return {"model": "cnn-small", "dataset": "digits", "dataset_info": info.to_dict(), "method": "at",
            "eps": 0.1, "steps": 2, "step_size": 0.1, "train": train}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An untrained cnn-small checkpoint on digits, a small finished surface, and broken inputs."""
    d = tmp_path_factory.mktemp("bad")
    ck = d / "run" / "best.pt"
    save_checkpoint(ck, build_model("cnn-small", "digits", seed=0), _config(), epoch=1)
    (d / "afile").write_text("I am a file, not a folder\n")
    (d / "adir").mkdir()
    (d / "text.pt").write_text("this is a text file, not a checkpoint\n")
    torch.save({"format": "landscape-checkpoint", "config": _config()}, d / "noweights.pt")
    surf = d / "surf"
    x = np.linspace(-1, 1, 3)
    save_npz(surf / "surface.npz", x=x, y=np.zeros(0), loss=x ** 2, accuracy=np.ones(3), mask=np.ones(3, bool))
    write_json(surf / "surface.json", {"kind": "surface", "dim": 1, "x": x.tolist(), "y": None,
                                       "loss": (x ** 2).tolist(), "accuracy": [1.0] * 3, "mask": [1, 1, 1]})
    trunc = d / "trunc"
    trunc.mkdir()
    (trunc / "surface.npz").write_bytes((surf / "surface.npz").read_bytes()[:100])
    (trunc / "surface.json").write_bytes((surf / "surface.json").read_bytes())
    return d


# (script, arguments, words the one line must contain, what must not have started)
# {d}: the fixture's folder; {ck}: the checkpoint; {t}: this test's own tmp folder.
CK = "{d}/run/best.pt"
SURF = "{d}/surf"
CASES = [
    # --- 1. outputs checked before the work ----------------------------------------------------------
    ("train", ["--json", "{d}/afile/m.json"], "is a file", "out"),
    ("train", ["--json", "{d}/adir"], "is a folder", "out"),
    ("train", ["--runs-dir", "{d}/afile"], "not a folder", "out"),
    ("train", ["--out", "{d}/afile/runs"], "is a file", "out"),
    ("train", ["--out", "/proc/landscape-runs"], "not writable", "out"),
    ("train", ["--json", "/proc/landscape.json"], "not writable", "out"),
    ("eval", [CK, "--json", "{d}/adir"], "is a folder", "out"),
    ("eval", [CK, "--json", "{d}/afile/e.json"], "is a file", "out"),
    ("eval", [CK, "--json", "/proc/e.json"], "not writable", "out"),
    ("spectrum", [CK, "--json", "{d}/adir"], "is a folder", "out"),
    ("spectrum", [CK, "--json", "{d}/afile/s.json"], "is a file", "out"),
    ("spectrum", [CK, "--json", "/proc/s.json"], "not writable", "out"),
    ("spectrum", [CK, "--plot", "{t}/spec.xyz"], "unknown file type", "out"),
    ("spectrum", [CK, "--plot", "{d}/adir"], "is a folder", "out"),
    ("spectrum", [CK, "--plot", "{d}/afile/s.png"], "is a file", "out"),
    ("spectrum", ["--plot", CK, "--json", "{d}/afile/s.json"], "is a file", "out"),   # bare --plot before CKPT
    ("surface", [CK, "--plot", "{t}/s.xyz"], "unknown file type", "out"),
    ("surface", [CK, "--resume", "{d}/adir", "--out", "{t}/other"], "name different runs", "out"),
    ("eval", [CK, "--samples", "0"], "--samples", "out"),
    ("train", ["--resume", "{d}/run", "--runs-dir", "{t}"], "drop --runs-dir", "out"),
    ("surface", [CK, "--out", "{d}/afile"], "not a folder", "out"),
    ("surface", [CK, "--out", "{d}/afile/sub"], "is a file", "out"),
    ("surface", [CK, "--out", "/proc/landscape-surface"], "not writable", "out"),
    ("surface", [CK, "--out", "{t}/s", "--json", "{d}/adir"], "is a folder", "out"),
    ("plot", [SURF, "--out", "{t}/p.xyz"], "unknown file type", "out"),
    ("plot", [SURF, "--out", "{d}/adir"], "is a folder", "out"),
    ("plot", [SURF, "--out", "{d}/afile/p.png"], "is a file", "out"),
    ("plot", [SURF, "--out", "/proc/p.png"], "not writable", "out"),
    ("plot", [SURF, "--out", "{t}/p.png", "--json", "{d}/adir"], "is a folder", "out"),
    # --- 2. every failure a user can cause is one line ---------------------------------------------
    ("eval", ["{d}/text.pt"], "corrupt", "work"),
    ("spectrum", ["{d}/text.pt"], "corrupt", "work"),
    ("surface", ["{d}/text.pt", "--out", "{t}/s"], "corrupt", "work"),
    ("eval", ["{d}/noweights.pt"], "without its weights", "work"),
    ("surface", ["{d}/noweights.pt", "--out", "{t}/s"], "without its weights", "work"),
    ("plot", ["{d}/trunc/surface.npz", "--out", "{t}/p.png"], "cannot read", None),
    ("plot", ["{d}/trunc", "--out", "{t}/p.png"], "cannot read", None),
    ("surface", [CK, "--dim", "1", "--x", "-1:1:3", "--samples", "16", "--out", "{d}/trunc", "--resume"],
     "cannot resume", None),
    ("eval", [CK, "--dataset", "fashion-mnist"], "built for digits", "work"),
    ("spectrum", [CK, "--dataset", "fashion-mnist"], "built for digits", "work"),
    ("surface", [CK, "--dataset", "cifar10", "--out", "{t}/s"], "built for digits", "work"),
    ("eval", [CK, "--dataset", "cifar100"], "classes", "work"),
    ("plot", [SURF, "--out", "{t}/p.png", "--dpi", "100000"], "100000 must be in [10, 1200]", "out"),
    ("eval", [CK, "--samples-typo", "3"], "unrecognized", "out"),
    # --- 3. numbers are validated -------------------------------------------------------------------
    ("train", ["--step-size", "-0.1"], "--step-size", "out"),
    ("train", ["--step-size", "nan"], "finite", "out"),
    ("train", ["--steps", "-1"], "--steps", "out"),
    ("train", ["--batch-size", "-1"], "--batch-size", "out"),
    ("train", ["--train-samples", "-5"], "--train-samples", "out"),
    ("train", ["--lr", "1e300"], "--lr: 1e+300 must be in (0, 10]", "out"),
    ("train", ["--lr", "0"], "--lr", "out"),
    ("train", ["--lr", "nan"], "finite", "out"),
    ("train", ["--epochs", "0"], "--epochs", "out"),
    ("train", ["--ramp", "2"], "--ramp", "out"),
    ("train", ["--weight-decay", "-1"], "--weight-decay", "out"),
    ("train", ["--val-samples", "0"], "--val-samples", "out"),
    ("train", ["--eps", "nan"], "finite", "out"),
    ("eval", [CK, "--step-size", "-0.01"], "--step-size", "out"),
    ("eval", [CK, "--step-size", "nan"], "finite", "out"),
    ("eval", [CK, "--steps", "-1"], "--steps", "out"),
    ("eval", [CK, "--batch-size", "-1"], "--batch-size", "out"),
    ("eval", [CK, "--n-samples", "0"], "--n-samples", "out"),
    ("eval", [CK, "--restarts", "0"], "--restarts", "out"),
    ("eval", [CK, "--eps", "inf"], "finite", "out"),
    ("spectrum", [CK, "--density", "--density-steps", "1"], "--density-steps", "out"),
    ("spectrum", [CK, "--top-k", "-1"], "--top-k", "out"),
    ("spectrum", [CK, "--tol", "0"], "--tol", "out"),
    ("spectrum", [CK, "--samples", "-5"], "--samples", "out"),
    ("spectrum", [CK, "--batch-size", "0"], "--batch-size", "out"),
    ("spectrum", [CK, "--step-size", "-1"], "--step-size", "out"),
    ("spectrum", [CK, "--sigma", "-1", "--density"], "--sigma", "out"),
    ("spectrum", [CK, "--max-hvps", "0"], "--max-hvps", "out"),
    ("surface", [CK, "--x", "-1e308:1e308:5", "--out", "{t}/s"], "within", "out"),
    ("surface", [CK, "--dim", "2", "--y", "-1:1e308:3", "--out", "{t}/s"], "within", "out"),
    ("surface", [CK, "--x", "-1:1:0", "--out", "{t}/s"], "num", "out"),
    ("surface", [CK, "--steps", "-1", "--out", "{t}/s"], "--steps", "out"),
    ("surface", [CK, "--step-size", "nan", "--out", "{t}/s"], "finite", "out"),
    ("surface", [CK, "--batch-size", "-1", "--out", "{t}/s"], "--batch-size", "out"),
    ("surface", [CK, "--samples", "0", "--out", "{t}/s"], "--samples", "out"),
    ("surface", [CK, "--eigen-tol", "-1", "--out", "{t}/s"], "--eigen-tol", "out"),
    ("surface", [CK, "--max-hours", "0", "--out", "{t}/s"], "--max-hours", "out"),
    ("plot", [SURF, "--out", "{t}/p.png", "--dpi", "0"], "--dpi", "out"),
    # --- 4. requests that cannot finish are refused with an estimate --------------------------------
    ("spectrum", [CK, "--top-k", "100000"], "cannot fit in memory", "work"),
    ("spectrum", [CK, "--top-k", "200000", "--max-hvps", "10"], "weights", "work"),
    ("surface", [CK, "--x", "-1:1:100000", "--y", "-1:1:100000", "--out", "{t}/s"], "GiB", "out"),
    ("surface", [CK, "--dim", "1", "--x", "-1:1:10000000000", "--out", "{t}/s"], "GiB", "out"),
    ("surface", [CK, "--x", "-1:1:300", "--y", "-1:1:300", "--max-hours", "1e-6", "--samples", "64",
                 "--out", "{t}/s"], "hours", "compute"),
    # --- 5. names are names ---------------------------------------------------------------------------
    ("train", ["--name", "../../escape"], "plain name", "out"),
    ("train", ["--name", "a/b"], "plain name", "out"),
    ("train", ["--name", ".."], "plain name", "out"),
    ("train", ["--name", ".hidden"], "plain name", "out"),
]


@pytest.fixture
def no_work(monkeypatch):
    """``no_work(level)``: make everything past ``level`` fail the test if it is called."""
    import landscape.analysis.hessian as hessian
    import landscape.analysis.surface as surface
    import landscape.training.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("work started before the bad input was refused")

    def apply(level):
        if level is None:
            return
        monkeypatch.setattr(surface, "loss_surface", boom)
        monkeypatch.setattr(surface_cli, "_directions", boom)
        if level == "compute":  # data may be read (e.g. to time one point), nothing computed
            return
        for mod in (eval_cli, spectrum_cli, surface_cli):  # "work": nothing past reading the checkpoint
            monkeypatch.setattr(mod, "load_dataset", boom)
        monkeypatch.setattr(eval_cli, "evaluate", boom)
        monkeypatch.setattr(hessian.HessianOperator, "from_checkpoint", boom)
        monkeypatch.setattr(surface, "loss_surface", boom)
        monkeypatch.setattr(surface_cli, "_directions", boom)
        monkeypatch.setattr(trainer.Trainer, "_setup", boom)
        if level == "out":  # nothing read at all
            for mod in (eval_cli, spectrum_cli, surface_cli):
                monkeypatch.setattr(mod, "load_checkpoint", boom)
            monkeypatch.setattr(plot_cli, "save_figure", boom)
            import landscape.plots as plots
            monkeypatch.setattr(plots, "resolve_plot", boom)
    return apply


def _fill(args, d, t):
    return [a.format(d=d, t=t) for a in args]


@pytest.mark.parametrize("script,args,contains,before", CASES,
                         ids=[f"{c[0]}-{i}-{'_'.join(c[1][1:3] if c[1][0].startswith('{') else c[1][:2])}"
                              for i, c in enumerate(CASES)])
def test_mistake_is_one_line(script, args, contains, before, files, tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here, not in the repository
    no_work(before)
    argv = _fill(args, files, tmp_path)
    if script == "train":
        placed = {"--out", "--runs-dir", "--resume"} & set(argv)
        argv += ["--quiet"] + ([] if placed else ["--runs-dir", str(tmp_path / "runs")])
    proc = run_main(MAINS[script], argv, capsys)
    assert_one_line_error(proc, contains=contains)


def test_table_covers_every_script_and_gap():
    assert len(CASES) >= 60
    assert {c[0] for c in CASES} == set(MAINS)
    assert sum(c[3] == "out" and any("/proc" in a or "afile" in a or "adir" in a or ".xyz" in a for a in c[1])
               for c in CASES) >= 20


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_number_option_has_a_range(script):
    """No int/float option is left with a bare ``int``/``float`` type (nan, -1, 1e300 would pass)."""
    bare = [a.option_strings[0] for a in PARSERS[script]()._actions
            if a.type in (int, float) and a.option_strings and not a.choices]
    assert not bare, f"landscape-{script}: options without a range: {bare}"


# --- out of memory becomes one line; real bugs keep their traceback ----------------------------------

@pytest.mark.parametrize("exc", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")])
def test_out_of_memory_is_one_line(exc, files, tmp_path, capsys, monkeypatch):
    def oom(*a, **k):
        raise exc
    monkeypatch.setattr(eval_cli, "evaluate", oom)
    proc = run_main(eval_cli.main, [files / "run" / "best.pt", "--n-samples", "8"], capsys)
    assert_one_line_error(proc, contains="out of")
    assert "--batch-size" in proc.stderr


def test_a_bug_keeps_its_traceback(files, capsys, monkeypatch):
    def bug(*a, **k):
        raise ZeroDivisionError("a real bug")
    monkeypatch.setattr(eval_cli, "evaluate", bug)
    with pytest.raises(ZeroDivisionError):
        eval_cli.main([str(files / "run" / "best.pt"), "--n-samples", "8"])


# --- locks: one writer per folder -------------------------------------------------------------------

def test_second_writer_on_a_locked_folder_is_refused(files, tmp_path, capsys):
    out = tmp_path / "s"
    with lock_folder(out, command="landscape-surface first"):
        proc = run_main(surface_cli.main, [files / "run" / "best.pt", "--dim", "1", "--x", "-1:1:3", "--samples",
                                           "16", "--out", out], capsys)
        assert_one_line_error(proc, contains=f"in use by pid {os.getpid()} (landscape-surface first)")
        assert not (out / "surface.json").exists()
        proc = run_main(train_cli.main, ["--method", "standard", "--train-samples", "32", "--val-samples", "16",
                                         "--epochs", "1", "--quiet", "--out", tmp_path, "--name", "s"], capsys)
        assert_one_line_error(proc, contains="in use by pid")
        assert not (out / "last.pt").exists()
    # released: the folder is usable again
    proc = run_main(surface_cli.main, [files / "run" / "best.pt", "--dim", "1", "--x", "-1:1:3", "--samples", "16",
                                       "--out", out], capsys)
    assert proc.returncode == 0, proc.stderr


def test_two_concurrent_surface_runs_end_with_one_result_and_one_refusal(files, tmp_path, capsys):
    """Two ``landscape-surface --overwrite`` runs on one folder: the first completes, the second is refused
    (exit 2, one line naming the first's pid) and leaves the first's files alone."""
    from landscape.analysis.surface import load_surface
    out = tmp_path / "s"
    ck = str(files / "run" / "best.pt")
    args = [ck, "--x", "-1:1:25", "--y", "-1:1:25", "--samples", "8", "--out", str(out), "--overwrite", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    first = subprocess.Popen([sys.executable, "-m", "landscape.cli.surface", *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and first.poll() is None:
            lock = out / LOCK_NAME
            if lock.exists() and lock.read_text().startswith("pid"):
                break
            time.sleep(0.02)
        assert first.poll() is None, "the first run finished before the second could start"
        second = run_main(surface_cli.main, args, capsys)
        assert_one_line_error(second, contains=f"in use by pid {first.pid}")
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    res = load_surface(out)
    assert res.complete and res.loss.shape == (25, 25)
    assert json.loads((out / "surface.json").read_text())["settings"]["info"]["checkpoint"] == ck


# --- files follow the umask ---------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, mask):
    from landscape.io import write_text
    from landscape.plots.save import save_figure
    import matplotlib.pyplot as plt
    old = os.umask(mask)
    try:
        fig = plt.figure()
        paths = [write_json(tmp_path / "a.json", {"a": 1}), write_text(tmp_path / "a.txt", "x"),
                 save_npz(tmp_path / "a.npz", a=np.zeros(2)), save_figure(fig, tmp_path / "a.png"),
                 save_checkpoint(tmp_path / "a.pt", build_model("mlp", "digits", seed=0), _config())]
        plt.close(fig)
    finally:
        os.umask(old)
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, (p, oct(p.stat().st_mode))


# --- names are names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escape", "../escape", "sub/../../escape", "/tmp/escape", ".."])
def test_name_cannot_leave_out(name, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "runs"
    out.mkdir(parents=True)
    proc = run_main(train_cli.main, ["--name", name, "--out", out, "--quiet", "--epochs", "1"], capsys)
    assert_one_line_error(proc, contains="plain name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "runs"]  # nothing written anywhere
    with pytest.raises(Exception, match="plain name"):  # the library refuses too
        TrainConfig(name=name).resolved()


# --- progress in logs, Ctrl-C says how to resume, NaN names a real checkpoint --------------------------

def test_progress_lines_when_stderr_is_not_a_terminal(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "0")
    proc = run_main(surface_cli.main, [files / "run" / "best.pt", "--dim", "1", "--x", "-1:1:5", "--samples", "16",
                                       "--out", tmp_path / "s"], capsys)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and lines[-1].startswith("surface: 5/5 pt (100%)"), proc.stderr
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "3600")  # a short run under the interval stays silent
    proc = run_main(surface_cli.main, [files / "run" / "best.pt", "--dim", "1", "--x", "-1:1:5", "--samples", "16",
                                       "--out", tmp_path / "s2"], capsys)
    assert proc.returncode == 0 and proc.stderr == ""


def test_ctrl_c_in_surface_prints_the_resume_command(files, tmp_path, capsys, monkeypatch):
    import shlex

    import landscape.analysis.surface as surface
    real = surface.loss_surface

    def interrupted(*a, callback=None, **k):
        def cb(done, total):
            if done >= 2:
                raise KeyboardInterrupt
        return real(*a, callback=cb, save_every=1, **k)
    monkeypatch.setattr(surface, "loss_surface", interrupted)
    ck, out = files / "run" / "best.pt", tmp_path / "s"
    argv = [ck, "--dim", "1", "--x", "-1:1:5", "--samples", "16", "--overwrite"]
    proc = run_main(surface_cli.main, [*argv, "--out", out], capsys)
    assert proc.returncode == 130 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    cmd = proc.stderr.split("continue with: ")[1].strip()
    words = shlex.split(cmd)
    assert words[0] == "landscape-surface" and "--resume" in words and "--overwrite" not in words
    monkeypatch.setattr(surface, "loss_surface", real)
    proc = run_main(surface_cli.main, words[1:], capsys)  # the printed command continues the run
    assert proc.returncode == 0, proc.stderr
    from landscape.analysis.surface import load_surface
    assert load_surface(out).complete


def _tiny_train(tmp_path, *extra):
    return ["--method", "standard", "--train-samples", "64", "--val-samples", "16", "--batch-size", "32",
            "--quiet", "--out", str(tmp_path), "--name", "r", *extra]


def test_ctrl_c_in_training_prints_the_resume_command(tmp_path, capsys, monkeypatch):
    import landscape.training.trainer as trainer
    real, stop_at = trainer.Trainer._train_epoch, {"epoch": 1}

    def epoch(self, bar):
        if self.epoch == stop_at["epoch"]:  # Ctrl-C during the second epoch
            raise KeyboardInterrupt
        return real(self, bar)
    monkeypatch.setattr(trainer.Trainer, "_train_epoch", epoch)
    proc = run_main(train_cli.main, _tiny_train(tmp_path, "--epochs", "3"), capsys)
    assert proc.returncode == 130, proc.stderr
    assert f"continue with: landscape-train --resume {tmp_path / 'r'} --epochs 3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    stop_at["epoch"] = None  # the resumed run is not interrupted
    proc = run_main(train_cli.main, ["--resume", str(tmp_path / "r"), "--epochs", "3", "--quiet"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert "3 epochs" in proc.stdout


@pytest.mark.parametrize("bad_epoch", [1, 2])
def test_nan_loss_names_a_checkpoint_that_exists(bad_epoch, tmp_path, capsys, monkeypatch):
    import landscape.training.trainer as trainer
    real = trainer.Trainer._train_epoch

    def epoch(self, bar):
        if self.epoch + 1 == bad_epoch:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return real(self, bar)
    monkeypatch.setattr(trainer.Trainer, "_train_epoch", epoch)
    proc = run_main(train_cli.main, _tiny_train(tmp_path, "--epochs", "2"), capsys)
    assert_one_line_error(proc, contains="loss became nan")
    named = [w.rstrip(",;()") for w in proc.stderr.split() if w.endswith((".pt", ".pt,", ".pt;"))]
    if bad_epoch == 1:
        assert "no checkpoint was written" in proc.stderr and not named
    else:
        assert named and all(os.path.exists(p) for p in named), proc.stderr


# --- outputs: folders made the same way for every output; a read-only folder refused up front -----------

def test_plot_and_json_outputs_create_their_folders(files, tmp_path, capsys):
    png, js = tmp_path / "a" / "b" / "p.png", tmp_path / "c" / "d" / "p.json"
    proc = run_main(plot_cli.main, [files / "surf", "--out", png, "--json", js], capsys)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG" and json.loads(js.read_text())["out"] == str(png)


def test_read_only_folder_is_refused_before_work(files, tmp_path, capsys, monkeypatch, no_work):
    """A read-only folder: really one when not root; as root (for whom it is writable) the failed write is
    simulated where check_output tries it."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        import landscape.cli.common as common

        def denied(*a, **k):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(common.tempfile, "mkstemp", denied)
    else:
        ro.chmod(0o555)
    no_work("out")
    try:
        proc = run_main(spectrum_cli.main, [files / "run" / "best.pt", "--json", ro / "s.json"], capsys)
        assert_one_line_error(proc, contains="not writable (Permission denied)")
    finally:
        ro.chmod(0o755)


def test_training_progress_in_a_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "0")
    argv = [a for a in _tiny_train(tmp_path, "--epochs", "1") if a != "--quiet"]
    proc = run_main(train_cli.main, argv, capsys)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) >= 2 and all(line.startswith("r: ") for line in lines), proc.stderr
    assert lines[-1].startswith("r: 2/2 it (100%)") and "val_clean=" in lines[-1]
