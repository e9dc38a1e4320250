"""landscape-surface and landscape-plot end to end: own and foreign checkpoints, resume, bad input."""
import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import assert_one_line_error, run_cli, run_main  # noqa: E402
from landscape import build_model, load_dataset  # noqa: E402
from landscape.analysis.surface import load_surface, loss_and_accuracy  # noqa: E402
from landscape.checkpoint import save_checkpoint  # noqa: E402
from landscape.cli.plot import main as plot_main  # noqa: E402
from landscape.cli.surface import main as surface_main  # noqa: E402
from landscape.data import dataset_info  # noqa: E402

SMALL = ["--samples", "32", "--x", "-1:1:3", "--device", "cpu"]


def _config(**kw):
    return {"model": "mlp", "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(), **kw}


@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "run" / "best.pt"
    save_checkpoint(p, build_model("mlp", "digits", seed=0), _config(eps=0.05, steps=2, step_size=0.03), epoch=3)
    return p


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, path


def test_eigen_adversarial_end_to_end_on_own_checkpoint(ckpt, tmp_path, capsys):
    out, js = tmp_path / "surf", tmp_path / "s.json"
    r = run_main(surface_main, [ckpt, "--dim", "2", "--directions", "eigen", "--loss", "adversarial", "--plot",
                            "--y", "-1:1:3", "--eigen-tol", "1e-2", "--out", out, "--json", js, *SMALL], capsys)
    assert r.returncode == 0, r.stderr
    assert "eigen surface of the adversarial (eps 0.05, 2 PGD steps of 0.03, fixed) loss on 3x3 points" in r.stdout
    for f in ("surface.json", "surface.npz", "directions.pt", "adversarial.npz"):
        assert (out / f).stat().st_size > 0
    _png(out / "surface.png")
    _png(out / "surface_3d.png")
    d = json.loads(js.read_text())
    assert d["complete"] and d["points_done"] == 9 and d["dim"] == 2
    att = d["settings"]["attack"]
    assert (att["eps"], att["steps"], att["step_size"]) == (0.05, 2, 0.03)     # from the checkpoint's config
    assert d["settings"]["directions"]["attack"] == {k: v for k, v in att.items() if k != "mode"}  # one attack
    assert d["settings"]["directions"]["kind"] == "eigen" and len(d["settings"]["directions"]["eigenvalues"]) == 2
    assert d["settings"]["info"]["checkpoint"] == str(ckpt)
    # landscape-plot draws it, in every surface kind that applies
    for kind in ("contour", "contourf", "surface3d"):
        png = tmp_path / f"{kind}.png"
        r = run_main(plot_main, [out / "surface.json", "--kind", kind, "--out", png], capsys)
        assert r.returncode == 0, r.stderr
        _png(png)


def test_foreign_checkpoint_with_module_prefixes(tmp_path, capsys):
    model = build_model("mlp", "digits", seed=1)
    p = tmp_path / "foreign.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, p)
    out = tmp_path / "f"
    argv = [p, "--arch", "mlp", "--dataset", "digits", "--dim", "2", "--directions", "eigen", "--loss",
            "adversarial", "--plot", "--y", "-1:1:3", "--eigen-tol", "1e-2", "--out", out, *SMALL]
    r = run_main(surface_main, argv, capsys)                                     # no eps anywhere: ask for it
    assert_one_line_error(r, contains="pass --eps")
    assert not out.exists()
    r = run_main(surface_main, [*argv, "--eps", "0.1"], capsys)
    assert r.returncode == 0, r.stderr
    _png(out / "surface.png")
    res = load_surface(out)
    assert res.complete and res.settings["attack"]["eps"] == 0.1
    r = run_main(surface_main, [p, *SMALL], capsys)                               # no --arch: one-line error
    assert_one_line_error(r, contains="--arch")


def test_random_1d_resume_and_refusals(ckpt, tmp_path, capsys):
    out = tmp_path / "s"
    base = [ckpt, "--dim", "1", "--out", out, *SMALL]
    assert run_main(surface_main, base, capsys).returncode == 0
    first = load_surface(out)
    x, y = load_dataset("digits", "test").tensors(32)
    from landscape.checkpoint import load_checkpoint
    assert first.loss[1] == loss_and_accuracy(load_checkpoint(ckpt).model, x, y)[0]  # centre: the model's own loss
    assert_one_line_error(run_main(surface_main, base, capsys), contains="--resume")
    r = run_main(surface_main, [*base, "--resume"], capsys)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(load_surface(out).loss, first.loss)
    r = run_main(surface_main, [*base, "--resume", "--norm", "layer"], capsys)
    assert_one_line_error(r, contains="different settings")
    assert run_main(surface_main, [*base, "--overwrite", "--norm", "layer"], capsys).returncode == 0


def test_interpolation_and_pca(ckpt, tmp_path, capsys):
    other = tmp_path / "other.pt"
    m1 = build_model("mlp", "digits", seed=5)
    save_checkpoint(other, m1, _config())
    out = tmp_path / "i"
    r = run_main(surface_main, [ckpt, "--directions", "interpolate", "--to", other, "--out", out, "--plot",
                            "--samples", "32", "--x", "0:1:3"], capsys)
    assert r.returncode == 0, r.stderr
    res = load_surface(out)
    x, y = load_dataset("digits", "test").tensors(32)
    from landscape.checkpoint import load_checkpoint
    assert res.loss[0] == loss_and_accuracy(load_checkpoint(ckpt).model, x, y)[0]
    assert abs(res.loss[2] - loss_and_accuracy(m1.eval(), x, y)[0]) < 1e-5
    assert res.settings["directions"]["buffers"] == "interpolate" and res.settings["buffers"] == "none"
    _png(out / "surface.png")
    # a trajectory: epoch files around the final model
    traj = ckpt.parent
    for e in range(1, 4):
        save_checkpoint(traj / f"epoch_{e:03d}.pt", build_model("mlp", "digits", seed=10 + e), _config(), epoch=e)
    out = tmp_path / "p"
    r = run_main(surface_main, [ckpt, "--directions", "pca", "--y", "-1:1:2", "--out", out, *SMALL], capsys)
    assert r.returncode == 0, r.stderr
    meta = load_surface(out).settings["directions"]
    assert meta["kind"] == "pca" and len(meta["coords"]) == 3


@pytest.mark.parametrize("argv, contains", [
    (["--x", "1:2"], "start:stop:num"),
    (["--x", "-1:1:0"], "at least 1"),
    (["--directions", "interpolate"], "--to"),
    (["--dim", "1", "--y", "0:1:3"], "--y"),
    (["--samples", "100000"], "samples"),
    (["--loss", "hinge"], "--loss"),
    (["--eps", "2", "--loss", "adversarial"], "eps"),
    (["--directions", "pca", "--trajectory", "/nonexistent"], "trajectory"),
])
def test_bad_input_is_one_line_exit_2(ckpt, tmp_path, capsys, argv, contains):
    r = run_main(surface_main, [ckpt, "--out", tmp_path / "o", "--device", "cpu", *argv], capsys)
    assert_one_line_error(r, contains=contains)


def test_console_behaviour_in_a_subprocess(ckpt, tmp_path):
    assert_one_line_error(run_cli("surface", str(tmp_path / "missing.pt")), contains="not found")
    assert_one_line_error(run_cli("plot", str(ckpt), "--kind", "contour"))
    h = run_cli("surface", "--help")
    assert h.returncode == 0 and "filter" in h.stdout and "--adv-mode" in h.stdout and "--resume" in h.stdout


@pytest.mark.slow
def test_end_to_end_on_a_trainedrun_main(trained_digits, tmp_path):
    """The issue's acceptance command on a checkpoint written by landscape-train (slow: trains first)."""
    best = trained_digits / "best.pt"
    r = run_cli("surface", str(best), "--dim", "2", "--directions", "eigen", "--loss", "adversarial", "--plot",
                "--samples", "64", "--x", "-1:1:5", "--y", "-1:1:5", "--out", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    _png(tmp_path / "s" / "surface.png")
    res = load_surface(tmp_path / "s")
    assert res.complete and res.settings["attack"]["eps"] > 0


def test_explicit_eps_zero_is_kept(ckpt, tmp_path, capsys):
    """--eps 0 is the user's choice, not a missing eps: no dataset default, no note."""
    out = tmp_path / "e0"
    r = run_main(surface_main, [ckpt, "--loss", "adversarial", "--eps", "0", "--dim", "1", "--out", out, *SMALL],
                 capsys)
    assert r.returncode == 0, r.stderr
    assert "note" not in r.stderr
    assert load_surface(out).settings["attack"]["eps"] == 0.0


def test_resume_takes_the_checkpoint_and_settings_stored_in_the_folder(ckpt, tmp_path, capsys):
    """landscape-surface --resume DIR continues from DIR's own settings (issue 22: every original flag had to be
    repeated, or the run was 'made with different settings'); a flag given still wins and is checked."""
    out = tmp_path / "s"
    flags = ["--dim", "1", "--x=-0.5:0.5:3", "--loss", "adversarial", "--adv-mode", "reattack", "--steps", "2",
             "--eps", "0.08", "--samples", "12", "--seed", "3", "--normalization", "layer", "--out", str(out)]
    assert run_main(surface_main, [ckpt, *flags], capsys).returncode == 0
    first = load_surface(out)
    r = run_main(surface_main, ["--resume", str(out)], capsys)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(load_surface(out).loss, first.loss)
    assert "eps 0.08, 2 PGD steps" in r.stdout and "reattack" in r.stdout
    assert_one_line_error(run_main(surface_main, ["--resume", str(out), "--normalization", "filter"], capsys),
                          contains="different settings")
