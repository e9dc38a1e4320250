"""Issue 33, class 6: files that are not ours. A file landscape did not write is never replaced without
``--overwrite``; every output is locked while it is written (a second process on it is refused, naming the
first); the API answers a bad output path with ``OutputError``, never ``NotADirectoryError``/``FileExistsError``.

"Ours" is a mark in the content (``landscape.io.written_by_landscape``): ``landscape_version`` in a JSON object,
the Creator metadata of a PNG/PDF/SVG/PS figure, a generator meta tag in the report's page. Each refusal is
exit status 2 and one line, before any work, with the user's file byte-identical afterwards and nothing left
beside it (no lock file, no folder made for the lock)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import landscape as ls  # noqa: E402
from conftest import assert_one_line_error, run_main  # noqa: E402
from landscape.checkpoint import save_checkpoint  # noqa: E402
from landscape.cli import eval as eval_cli  # noqa: E402
from landscape.cli import plot as plot_cli  # noqa: E402
from landscape.cli import report as report_cli  # noqa: E402
from landscape.cli import spectrum as spectrum_cli  # noqa: E402
from landscape.cli import surface as surface_cli  # noqa: E402
from landscape.cli import train as train_cli  # noqa: E402
from landscape.data import dataset_info  # noqa: E402
from landscape.errors import BusyError, OutputError  # noqa: E402
from landscape.plots.save import save_figure  # noqa: E402
from landscape.io import (file_lock_path, lock_file, lock_folder, mark_html, save_npz,  # noqa: E402
                          write_json, written_by_landscape)

MAINS = {"train": train_cli.main, "eval": eval_cli.main, "spectrum": spectrum_cli.main,
         "surface": surface_cli.main, "plot": plot_cli.main, "report": report_cli.main}
ROOT = Path(__file__).resolve().parents[1]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` (hidden ones too), with the files' hashes."""
    return {str(p.relative_to(folder)): (digest(p) if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """An untrained cnn-small checkpoint on digits (eps 0.1 in its config) and a finished 1D surface."""
    d = tmp_path_factory.mktemp("ours")
    cfg = {"model": "cnn-small", "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(),
           "method": "at", "eps": 0.1}
    save_checkpoint(d / "run" / "best.pt", ls.build_model("cnn-small", "digits", seed=0), cfg, epoch=1)
    x = np.linspace(-1, 1, 3)
    save_npz(d / "surf" / "surface.npz", x=x, y=np.zeros(0), loss=x ** 2, accuracy=np.ones(3), mask=np.ones(3, bool))
    write_json(d / "surf" / "surface.json", {"kind": "surface", "dim": 1, "x": x.tolist(), "y": None,
                                             "loss": (x ** 2).tolist(), "accuracy": [1.0] * 3, "mask": [1, 1, 1]})
    return d


USER_FILES = {   # a user's files, none written by landscape
    "photo.png": b"\x89PNG\r\n\x1a\n" + b"a holiday photo" * 10,
    "photo.jpg": b"\xff\xd8\xff\xe0 a jpeg",
    "notes.pdf": b"%PDF-1.4\n% my thesis\n%%EOF\n",
    "drawing.svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>\n',
    "notes.html": b"<!DOCTYPE html><html><head><title>my notes</title></head><body>written by landscape? no, "
                  b"by me</body></html>\n",
    "report.html": b"<html><body>my own report.html</body></html>\n",
    "user.json": b'{"mine": 1, "kind": "surface"}\n',
    "data.csv": b"a,b\n1,2\n",
    "fig.png": b"\x89PNG\r\n\x1a\nmy figure",
    "surf/surf-curve.png": b"\x89PNG\r\n\x1a\nmy curve, named like landscape's default",
    "s2/surface.png": b"\x89PNG\r\n\x1a\nmy surface picture",
    "in2/input_surface.png": b"\x89PNG\r\n\x1a\nmy input picture",
    "view_3d.png": b"\x89PNG\r\n\x1a\nmy 3D view, named like the one a 2D surface draws beside --plot",
}


@pytest.fixture
def user(tmp_path, ck):
    """A user's folder: ``USER_FILES`` and a copy of the surface (whose default figure name is taken)."""
    shutil.copytree(ck / "surf", tmp_path / "surf")
    for name, data in USER_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.fixture
def no_work(monkeypatch):
    """Everything past the output checks fails the test: loading a checkpoint, training, drawing, the page."""
    import landscape.plots as plots
    import landscape.report as report
    import landscape.training.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("work started before the output was refused")
    for mod in (eval_cli, spectrum_cli, surface_cli):
        if hasattr(mod, "load_checkpoint"):
            monkeypatch.setattr(mod, "load_checkpoint", boom)
    monkeypatch.setattr(trainer.Trainer, "_setup", boom)
    monkeypatch.setattr(plots, "draw", boom)
    monkeypatch.setattr(report, "build_report", boom)


def _argv(args, t, ck):
    return [a.format(t=t, ck=ck / "run" / "best.pt", surf=ck / "surf") for a in args]


SPEC = ["--samples", "4", "--top-k", "1"]
SURF = ["--samples", "4", "--dim", "1", "--x=-1:1:3"]
INPUT = ["--space", "input", "--samples", "4", "--x=-1:1:3", "--y=-1:1:3", "--curvature-iters", "0"]
TRAIN = ["--method", "standard", "--train-samples", "32", "--val-samples", "16", "--batch-size", "32", "--epochs",
         "1", "--quiet", "--runs-dir", "{t}/runs"]

# (script, arguments, the user's file it names); {t}: the user's folder, {ck}: a checkpoint, {surf}: a surface
USERS = [
    ("plot", ["{t}/surf", "--out", "{t}/photo.png"], "photo.png"),
    ("plot", ["{t}/surf", "--out", "{t}/notes.pdf"], "notes.pdf"),
    ("plot", ["{t}/surf", "--out", "{t}/drawing.svg"], "drawing.svg"),
    ("plot", ["{t}/surf", "--out", "{t}/photo.jpg"], "photo.jpg"),
    ("plot", ["{t}/surf"], "surf/surf-curve.png"),                       # the default NAME-KIND.png
    ("plot", ["{t}/surf", "--out", "{t}/new.png", "--json", "{t}/user.json"], "user.json"),
    ("plot", ["{t}/surf", "--out", "{t}/new.png", "--json", "{t}/data.csv"], "data.csv"),
    ("report", ["{t}/surf", "--out", "{t}/notes.html"], "notes.html"),
    ("report", ["{t}/surf"], "report.html"),                             # the default ./report.html
    ("report", ["{t}/surf", "--out", "{t}/new.html", "--json", "{t}/data.csv"], "data.csv"),
    ("report", ["{t}/surf", "--out", "{t}/new.html", "--json", "{t}/user.json"], "user.json"),
    ("eval", ["{ck}", "--samples", "4", "--json", "{t}/user.json"], "user.json"),
    ("eval", ["{ck}", "--samples", "4", "--json", "{t}/data.csv"], "data.csv"),
    ("eval", ["{ck}", "--samples", "4", "--json", "{t}/notes.html"], "notes.html"),
    ("spectrum", ["{ck}", *SPEC, "--json", "{t}/user.json"], "user.json"),
    ("spectrum", ["{ck}", *SPEC, "--plot", "{t}/photo.png"], "photo.png"),
    ("spectrum", ["{ck}", *SPEC, "--json", "{t}/fig.json", "--plot"], "fig.png"),   # --plot beside --json
    ("surface", ["{ck}", *SURF, "--out", "{t}/s", "--json", "{t}/user.json"], "user.json"),
    ("surface", ["{ck}", *SURF, "--out", "{t}/s", "--plot", "{t}/notes.pdf"], "notes.pdf"),
    ("surface", ["{ck}", *SURF, "--out", "{t}/s2", "--plot"], "s2/surface.png"),    # the default in --out
    ("surface", ["{ck}", "--samples", "4", "--x=-1:1:3", "--y=-1:1:3", "--out", "{t}/s", "--plot", "{t}/view.png"],
     "view_3d.png"),                                                                 # the 2D surface's 3D view
    ("surface", ["{ck}", *INPUT, "--out", "{t}/in", "--json", "{t}/data.csv"], "data.csv"),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/in", "--plot", "{t}/photo.png"], "photo.png"),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/in2", "--plot"], "in2/input_surface.png"),
    ("train", [*TRAIN, "--json", "{t}/user.json"], "user.json"),
    ("train", [*TRAIN, "--json", "{t}/data.csv"], "data.csv"),
]


@pytest.mark.parametrize("script,args,target", USERS, ids=[f"{s}-{t}-{i}" for i, (s, a, t) in enumerate(USERS)])
def test_a_users_file_is_never_replaced_without_overwrite(user, ck, capsys, monkeypatch, no_work, script, args,
                                                           target):
    monkeypatch.chdir(user)
    before = snapshot(user)
    proc = run_main(MAINS[script], _argv(args, user, ck), capsys)
    assert_one_line_error(proc, contains="landscape did not write it")
    assert target in proc.stderr
    assert snapshot(user) == before          # byte-identical, and no lock file or folder left beside it


@pytest.mark.parametrize("script,args,target", [
    ("plot", ["{t}/surf", "--out", "{t}/photo.png", "--json", "{t}/data.csv"], "photo.png"),
    ("plot", ["{t}/surf", "--out", "{t}/notes.pdf"], "notes.pdf"),
    ("report", ["{t}/surf", "--out", "{t}/notes.html", "--json", "{t}/user.json"], "notes.html"),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/in", "--plot", "{t}/photo.png", "--json", "{t}/user.json"],
     "photo.png"),
    ("train", [*TRAIN, "--json", "{t}/user.json"], "user.json"),
], ids=["plot", "plot-pdf", "report", "surface-input", "train"])
def test_overwrite_replaces_a_users_file(user, ck, capsys, script, args, target):
    proc = run_main(MAINS[script], [*_argv(args, user, ck), "--overwrite"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert digest(user / target) != hashlib.sha256(USER_FILES[target]).hexdigest()
    assert written_by_landscape(user / target)       # now ours: the next run replaces it without --overwrite
    assert not list(user.glob(".*.lock"))


def test_our_own_earlier_output_is_replaced_by_a_rerun(user, ck, capsys):
    t = user
    for fmt in ("png", "pdf", "svg", "svgz", "eps", "ps"):
        for _ in range(2):
            proc = run_main(plot_cli.main, [t / "surf", "--out", t / f"ours.{fmt}", "--json", t / "ours.json"], capsys)
            assert proc.returncode == 0, (fmt, proc.stderr)
        assert written_by_landscape(t / f"ours.{fmt}"), fmt
    assert json.loads((t / "ours.json").read_text())["landscape_version"] == ls.__version__
    for _ in range(2):                                          # the default figure beside the result, too
        assert run_main(plot_cli.main, [ck / "surf", "--out", t / "again.png"], capsys).returncode == 0
    for _ in range(2):
        proc = run_main(report_cli.main, [t / "surf", "--out", t / "ours.html", "--json", t / "ours-r.json"], capsys)
        assert proc.returncode == 0, proc.stderr
    assert '<meta name="generator" content="written by landscape' in (t / "ours.html").read_text()[:300]
    for _ in range(2):
        proc = run_main(eval_cli.main, [ck / "run" / "best.pt", "--samples", "4", "--json", t / "ours-eval.json"],
                        capsys)
        assert proc.returncode == 0, proc.stderr
    for out in ("s1", "s2-new"):                                 # two surfaces, one --json and one --plot
        proc = run_main(surface_cli.main, [ck / "run" / "best.pt", *SURF, "--out", t / out, "--json",
                                           t / "ours-surface.json", "--plot", t / "ours-surface.png"], capsys)
        assert proc.returncode == 0, proc.stderr
    assert not list(t.rglob(".*.lock")), "a lock file was left behind"


def test_a_study_plan_json(user, capsys, monkeypatch):
    """``landscape-study plan --json``: a user's file is refused (the study has no --overwrite: "move it
    away"); the plan's own JSON, which has no ``landscape_version`` of its own, is marked by ``write_json`` as a
    command output, so the next plan replaces it."""
    from landscape.cli.study import main as study_main
    monkeypatch.chdir(user)
    (user / "tiny.toml").write_text((ROOT / "studies" / "tiny.toml").read_text())
    before = snapshot(user)
    proc = run_main(study_main, ["plan", "tiny.toml", "--json", user / "data.csv"], capsys)
    assert_one_line_error(proc, contains="landscape did not write it")
    assert "move it away" in proc.stderr and snapshot(user) == before
    for _ in range(2):
        proc = run_main(study_main, ["plan", "tiny.toml", "--json", user / "plan.json"], capsys)
        assert proc.returncode == 0, proc.stderr
    assert written_by_landscape(user / "plan.json")


def test_a_report_written_before_the_mark_is_still_ours(user, ck, capsys):
    """A page of an older landscape-report (no generator tag) is recognised by its own "N runs · landscape"
    line, so upgrading does not turn the user's earlier report into a refusal."""
    old = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>r</title></head><body><h1>r</h1>" \
          "<div class='meta'>2 runs · landscape 0.0.9 · 2024-01-01 10:00</div></body></html>"
    (user / "old.html").write_text(old, encoding="utf-8")
    assert written_by_landscape(user / "old.html")
    assert run_main(report_cli.main, [user / "surf", "--out", user / "old.html"], capsys).returncode == 0


def test_the_rule_for_ours(tmp_path):
    """What carries the mark and what does not (``written_by_landscape``)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    for fmt in ("png", "pdf", "svg", "svgz", "eps", "ps"):
        save_figure(fig, tmp_path / f"a.{fmt}")
        assert written_by_landscape(tmp_path / f"a.{fmt}"), fmt
        fig.savefig(tmp_path / f"user.{fmt}", format=fmt)          # the same figure saved by the user
        assert not written_by_landscape(tmp_path / f"user.{fmt}"), fmt
    save_figure(fig, tmp_path / "a.jpg")                            # JPEG cannot carry the mark
    assert not written_by_landscape(tmp_path / "a.jpg")
    plt.close(fig)
    write_json(tmp_path / "r.json", {"landscape_version": "0.1.0", "kind": "x"})
    write_json(tmp_path / "u.json", {"kind": "surface"})
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "page.html").write_text(mark_html("<html><head><title>t</title></head><body></body></html>"))
    (tmp_path / "text.html").write_text("<html><body>written by landscape 0.1.0</body></html>")
    (tmp_path / "notes.txt").write_text("written by landscape 0.1.0\n")
    (tmp_path / "bad.json").write_text('{"landscape_version": ')
    save_npz(tmp_path / "ours.npz", a=np.zeros(2), landscape_version=np.asarray("0.1.0"))
    save_npz(tmp_path / "user.npz", a=np.zeros(2))
    verdict = {p.name: written_by_landscape(p) for p in tmp_path.iterdir() if p.suffix in (".json", ".html", ".txt",
                                                                                         ".npz")}
    assert verdict == {"r.json": True, "u.json": False, "list.json": False, "page.html": True, "text.html": False,
                       "notes.txt": False, "bad.json": False, "ours.npz": True, "user.npz": False}
    assert not written_by_landscape(tmp_path / "missing.png") and not written_by_landscape(tmp_path)


# --- a folder where a file is expected, and the reverse; a device; a read-only folder -----------------------

SHAPES = [
    ("plot", ["{surf}", "--out", "{t}/adir"], "is a folder"),
    ("plot", ["{surf}", "--out", "{t}/adir.png"], "is a folder"),
    ("report", ["{surf}", "--out", "{t}/adir.html"], "is a folder"),
    ("report", ["{surf}", "--out", "{t}/afile/r.html"], "is a file, not a folder"),
    ("eval", ["{ck}", "--samples", "4", "--json", "{t}/adir"], "is a folder"),
    ("eval", ["{ck}", "--samples", "4", "--json", "{t}/afile/x.json"], "is a file, not a folder"),
    ("eval", ["{ck}", "--samples", "4", "--json", "/dev/null"], "not a regular file"),
    ("spectrum", ["{ck}", *SPEC, "--plot", "{t}/adir.png"], "is a folder"),
    ("spectrum", ["{ck}", *SPEC, "--json", "{t}/afile/deeper/x.json"], "is a file, not a folder"),
    ("surface", ["{ck}", *SURF, "--out", "{t}/afile"], "is not a folder"),
    ("surface", ["{ck}", *SURF, "--out", "{t}/afile/s"], "is a file, not a folder"),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/afile"], "is not a folder"),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/in", "--json", "{t}/adir"], "is a folder"),
    ("train", ["--method", "standard", "--epochs", "1", "--runs-dir", "{t}/afile"], "is not a folder"),
    ("train", ["--method", "standard", "--epochs", "1", "--json", "{t}/adir"], "is a folder"),
]


@pytest.mark.parametrize("script,args,words", SHAPES, ids=[f"{s}-{i}" for i, (s, a, w) in enumerate(SHAPES)])
def test_a_folder_where_a_file_is_expected_and_the_reverse(tmp_path, ck, capsys, no_work, script, args, words):
    (tmp_path / "afile").write_text("a user's file\n")
    for name in ("adir", "adir.png", "adir.html"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "keep.txt").write_text("a user's folder\n")
    before = snapshot(tmp_path)
    null = os.stat("/dev/null")
    proc = run_main(MAINS[script], _argv(args, tmp_path, ck), capsys)
    assert_one_line_error(proc, contains=words)
    assert snapshot(tmp_path) == before
    after = os.stat("/dev/null")
    assert (after.st_rdev, after.st_mode) == (null.st_rdev, null.st_mode)


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A read-only folder holding a user's file: really one when not root; as root (for whom it is writable)
    the refused write is simulated where a new file is made (``tempfile.mkstemp``)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "photo.png").write_bytes(USER_FILES["photo.png"])
    if os.geteuid() == 0:
        import tempfile
        real = tempfile.mkstemp

        def denied(*a, dir=None, **k):
            if dir is not None and Path(dir).resolve() == ro.resolve():
                raise PermissionError(13, "Permission denied")
            return real(*a, dir=dir, **k)
        monkeypatch.setattr(tempfile, "mkstemp", denied)
    else:
        ro.chmod(0o555)
    yield ro
    ro.chmod(0o755)


@pytest.mark.parametrize("script,args", [
    ("plot", ["{surf}", "--out", "{t}/ro/new.png"]),
    ("plot", ["{surf}", "--out", "{t}/ro/photo.png", "--overwrite"]),
    ("report", ["{surf}", "--out", "{t}/ro/r.html"]),
    ("eval", ["{ck}", "--samples", "4", "--json", "{t}/ro/x.json"]),
    ("spectrum", ["{ck}", *SPEC, "--plot", "{t}/ro/x.png"]),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/in", "--json", "{t}/ro/x.json"]),
    ("train", [*TRAIN, "--json", "{t}/ro/x.json"]),
], ids=["plot", "plot-overwrite", "report", "eval", "spectrum", "surface-input", "train"])
def test_a_read_only_folder_is_one_line(read_only, tmp_path, ck, capsys, no_work, script, args):
    before = snapshot(tmp_path)
    proc = run_main(MAINS[script], _argv(args, tmp_path, ck), capsys)
    assert_one_line_error(proc, contains="not writable")
    assert snapshot(tmp_path) == before


def test_the_api_raises_our_errors_for_outputs(read_only, tmp_path, ck):
    """A file given as an output folder, a folder given as an output file, a read-only folder: each is an
    ``OutputError`` with one line, where the API used to answer NotADirectoryError / FileExistsError."""
    from landscape.analysis.directions import random_directions
    from landscape.analysis.surface import loss_surface
    from landscape.report import write_report
    from landscape.training import TrainConfig
    from landscape.training.trainer import Trainer
    afile, adir = tmp_path / "afile", tmp_path / "adir"
    afile.write_text("a user's file\n")
    adir.mkdir()
    model = ls.build_model("mlp", "digits", seed=0)
    x, y = ls.load_dataset("digits", "test").tensors(8)
    d = random_directions(model, 1)

    def held(p):
        with lock_folder(p):
            pass

    def held_file(p):
        with lock_file(p):
            pass
    cases = {
        "lock_folder on a file": lambda: held(afile),
        "lock_folder under a file": lambda: held(afile / "sub"),
        "lock_file under a file": lambda: held_file(afile / "x.json"),
        "write_json under a file": lambda: write_json(afile / "x.json", {}),
        "write_json deep under a file": lambda: write_json(afile / "a" / "b" / "x.json", {}),
        "write_json onto a folder": lambda: write_json(adir, {}),
        "write_json onto a device": lambda: write_json("/dev/null", {}),
        "save_npz onto a folder": lambda: save_npz(adir, a=np.zeros(1)),
        "save_checkpoint under a file": lambda: ls.save_checkpoint(afile / "c.pt", model, {}, {}, 1),
        "loss_surface out= a file": lambda: loss_surface(model, (x, y), d, "-1:1:3", out=afile),
        "loss_surface out= under a file": lambda: loss_surface(model, (x, y), d, "-1:1:3", out=afile / "s"),
        "Trainer out= a file": lambda: Trainer(TrainConfig(method="standard", epochs=1, train_samples=32,
                                                           val_samples=8), afile),
        "write_report onto a folder": lambda: write_report([str(ck / "surf")], adir),
        "write_json into a read-only folder": lambda: write_json(read_only / "x.json", {}),
        "save_npz into a read-only folder": lambda: save_npz(read_only / "x.npz", a=np.zeros(1)),
    }
    before = snapshot(tmp_path)
    for name, call in cases.items():
        with pytest.raises(OutputError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and ("folder" in msg or "not a regular file" in msg or "writable" in msg), (name, msg)
    assert snapshot(tmp_path) == before


# --- locks: one writer per output ---------------------------------------------------------------------

HOLDER = """
import sys
from contextlib import ExitStack
from landscape.io import lock_file, lock_folder
kind, cmd, *paths = sys.argv[1:]
with ExitStack() as stack:
    for p in paths:
        stack.enter_context(lock_file(p, command=cmd) if kind == "file" else lock_folder(p, command=cmd))
    print("ready", flush=True)
    sys.stdin.read()
"""


@contextmanager
def holder(kind: str, command: str, *paths):
    """Another process that holds the locks of ``paths`` (files or folders) until the block ends."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, command, *map(str, paths)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_a_second_process_on_one_output_file_is_refused_naming_the_first(tmp_path, ck, capsys, no_work):
    """Another process holds each output (as a first landscape command would, from its check to its end): every
    console script is refused at once, naming it, and leaves the file (ours, from an earlier run) alone."""
    t = tmp_path
    for name in ("e.json", "s.json", "s.png", "f.json", "p.png", "p.json", "r.html", "r.json", "tr.json",
                 "i.json"):
        write_json(t / name, {"landscape_version": "0.1.0"})     # an earlier result of ours: replaceable
    cases = [
        ("eval", ["{ck}", "--samples", "4", "--json", "{t}/e.json"]),
        ("spectrum", ["{ck}", *SPEC, "--json", "{t}/s.json"]),
        ("spectrum", ["{ck}", *SPEC, "--plot", "{t}/s.png"]),
        ("surface", ["{ck}", *SURF, "--out", "{t}/sf", "--json", "{t}/f.json"]),
        ("surface", ["{ck}", *INPUT, "--out", "{t}/in", "--json", "{t}/i.json"]),
        ("plot", ["{surf}", "--out", "{t}/p.png"]),
        ("plot", ["{surf}", "--out", "{t}/q.png", "--json", "{t}/p.json"]),
        ("report", ["{surf}", "--out", "{t}/r.html"]),
        ("report", ["{surf}", "--out", "{t}/r2.html", "--json", "{t}/r.json"]),
        ("train", [*TRAIN, "--json", "{t}/tr.json"]),
        ("eval", ["{ck}", "--samples", "4", "--json", "{t}/new/deeper/n.json"]),   # not there yet, nor its folder
    ]
    paths = [t / n for n in ("e.json", "s.json", "s.png", "f.json", "i.json", "p.png", "p.json", "r.html", "r.json",
                             "tr.json", "new/deeper/n.json")]
    with holder("file", "landscape-eval first", *paths) as first:
        before = snapshot(t)
        for script, args in cases:
            proc = run_main(MAINS[script], _argv(args, t, ck), capsys)
            assert_one_line_error(proc, contains=f"being written by pid {first.pid} (landscape-eval first)")
            assert snapshot(t) == before, script
    assert not (t / "new").exists()                                 # the first's folder, removed when it ended
    assert not list(t.rglob(".*.lock"))


def test_two_evaluations_on_one_json(tmp_path, ck, capsys):
    """Two real ``landscape-eval`` processes with one ``--json``: the first runs to its end and writes its
    result; the second, started while the first works, is refused at once naming the first's pid."""
    js = tmp_path / "eval.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    first = subprocess.Popen([sys.executable, "-m", "landscape.cli.eval", str(ck / "run" / "best.pt"), "--samples",
                              "128", "--steps", "60", "--json", str(js), "--device", "cpu"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock, deadline = file_lock_path(js), time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().startswith("pid"):
                break
            time.sleep(0.02)
        assert first.poll() is None, "the first evaluation ended before the second could start"
        second = run_main(eval_cli.main, [ck / "run" / "best.pt", "--samples", "4", "--json", js], capsys)
        assert_one_line_error(second, contains=f"being written by pid {first.pid}")
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    assert written_by_landscape(js) and json.loads(js.read_text())["checkpoint"] == str(ck / "run" / "best.pt")
    assert not lock.exists()


def test_two_input_space_surfaces_on_one_out(tmp_path, ck, capsys, no_work):
    """The input-space surface's folder is locked like the weight-space one's: a second run on it is refused
    before any work, naming the first; after the first, a rerun without --overwrite is refused."""
    out = tmp_path / "in"
    with holder("folder", "landscape-surface --space input first", out) as first:
        proc = run_main(surface_cli.main, [ck / "run" / "best.pt", *INPUT, "--out", out], capsys)
        assert_one_line_error(proc, contains=f"in use by pid {first.pid} (landscape-surface --space input first)")
    assert not (out / "input_surface.json").exists()


def test_input_space_rerun_needs_overwrite(tmp_path, ck, capsys):
    out = tmp_path / "in"
    assert run_main(surface_cli.main, [ck / "run" / "best.pt", *INPUT, "--out", out], capsys).returncode == 0
    before = digest(out / "input_surface.json")
    proc = run_main(surface_cli.main, [ck / "run" / "best.pt", *INPUT, "--out", out, "--seed", "1"], capsys)
    assert_one_line_error(proc, contains="--overwrite")
    assert digest(out / "input_surface.json") == before


def test_one_file_for_two_outputs_of_one_command(user, ck, capsys, no_work):
    before = snapshot(user)
    proc = run_main(plot_cli.main, [user / "surf", "--json", user / "x.png", "--out", user / "x.png"], capsys)
    assert_one_line_error(proc, contains="are one file")
    assert snapshot(user) == before


# --- an output that would replace one of the command's own files ------------------------------------------

@pytest.mark.parametrize("script,args,words", [
    ("train", [*TRAIN, "--name", "NEW", "--json", "{t}/runs/NEW/config.json"], "config.json that this command"),
    ("train", [*TRAIN, "--name", "NEW", "--json", "{t}/runs/NEW/metrics.csv"], "metrics.csv that this command"),
    ("train", [*TRAIN, "--name", "NEW", "--json", "{t}/runs/NEW/last.pt"], "last.pt"),
    ("surface", ["{ck}", *SURF, "--out", "{t}/s", "--json", "{t}/s/surface.json"], "surface.json that this"),
    ("surface", ["{ck}", *SURF, "--out", "{t}/s", "--json", "{t}/s/directions.pt"], "directions.pt"),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/i", "--json", "{t}/i/input_surface.json"], "input_surface.json"),
    ("surface", ["{ck}", *INPUT, "--out", "{t}/i", "--json", "{t}/i/input_surface.npz"], "input_surface.npz"),
], ids=["train-config", "train-metrics", "train-last", "surface-json", "surface-directions", "input-json",
        "input-npz"])
def test_an_output_never_replaces_a_file_of_the_run_it_makes(tmp_path, ck, capsys, monkeypatch, script, args,
                                                              words):
    """``landscape-train --json runs/NEW/config.json`` used to replace the new run's own config at its end."""
    import landscape.training.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(trainer.Trainer, "fit", boom)
    monkeypatch.setattr(surface_cli, "_directions", boom)
    before = snapshot(tmp_path)
    proc = run_main(MAINS[script], _argv(args, tmp_path, ck), capsys)
    assert_one_line_error(proc, contains="write the output elsewhere")
    assert words in proc.stderr
    assert snapshot(tmp_path) == before                  # no run folder, no surface folder left


def test_overwrite_never_replaces_an_input_or_a_protected_file(ck, tmp_path, capsys):
    surf = tmp_path / "surf"
    shutil.copytree(ck / "surf", surf)
    before = snapshot(tmp_path)
    for argv in ([surf, "--out", surf / "surface.npz", "--overwrite"],
                 [surf / "surface.json", "--out", tmp_path / "x.png", "--json", surf / "surface.json", "--overwrite"]):
        proc = run_main(plot_cli.main, argv, capsys)
        assert_one_line_error(proc, contains="write the output elsewhere")
    assert snapshot(tmp_path) == before
