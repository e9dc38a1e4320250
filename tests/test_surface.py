"""Loss surfaces: exact centre, closed form on a quadratic, orientation, weights restored, resume, adversarial modes."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import sigkill_surface_run
from landscape import build_model, load_dataset
from landscape.analysis.directions import random_directions
from landscape.analysis.surface import (load_directions, load_surface, loss_and_accuracy, loss_surface,
                                        parse_grid, point_seed)
from landscape.attack_spec import AttackSpec
from landscape.attacks import adversarial_examples
from landscape.errors import LandscapeError


@pytest.fixture(scope="module")
def xy():
    return load_dataset("digits", "test").tensors(48)


@pytest.fixture
def mlp():
    return build_model("mlp", "digits", seed=0).eval()


class Quadratic(nn.Module):
    """A model whose cross-entropy on label 0 equals q(W) = c + 0.5 (w - m)^T A (w - m), w = vec(W).

    logits = [0, log(expm1(q))] gives CE = log(1 + expm1(q)) = q (float64 throughout)."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(2, 3, generator=g, dtype=torch.float64))
        b = torch.randn(6, 6, generator=g, dtype=torch.float64)
        self.register_buffer("A", b @ b.T + 0.5 * torch.eye(6, dtype=torch.float64))
        self.register_buffer("m", torch.randn(6, generator=g, dtype=torch.float64))
        self.c = 0.2

    def q(self, w):
        r = w.reshape(-1) - self.m
        return self.c + 0.5 * r @ self.A @ r

    def forward(self, x):
        z1 = torch.log(torch.expm1(self.q(self.W)))
        return torch.stack([torch.zeros(len(x), dtype=z1.dtype), z1.expand(len(x))], 1)


def test_parse_grid():
    np.testing.assert_array_equal(parse_grid("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    assert parse_grid("-1:1:21")[10] == 0.0
    assert parse_grid("0.5:0.5:1").tolist() == [0.5]
    np.testing.assert_array_equal(parse_grid([0, 1, 3]), [0, 1, 3])
    for bad in ("-1:1", "a:1:3", "-1:1:0", "-1:1:2.5", "1:1:3", "-inf:1:3"):
        with pytest.raises(LandscapeError):
            parse_grid(bad)


def test_centre_equals_model_loss_exactly(mlp, xy):
    x, y = xy
    with torch.no_grad():
        logits = mlp(x)
        ref_loss = F.cross_entropy(logits, y, reduction="sum").double().item() / len(x)
        ref_acc = (logits.argmax(1) == y).double().mean().item()
    d = random_directions(mlp, 2, seed=0)
    r = loss_surface(mlp, (x, y), d, "-1:1:5", "-2:2:3")
    assert r.loss[1, 2] == ref_loss and r.accuracy[1, 2] == ref_acc
    assert r.at(0.0, 0.0) == (ref_loss, ref_acc)
    assert r.to_dict()["center"]["loss"] == ref_loss
    assert np.all(r.loss[:, [0, 1, 3, 4]] != ref_loss)   # elsewhere the weights really moved
    assert loss_and_accuracy(mlp, x, y) == (ref_loss, ref_acc)
    # batches of unequal size give the same centre up to float summation
    r2 = loss_surface(mlp, (x, y), d, [0.0], [0.0], batch_size=20)
    assert abs(r2.loss[0, 0] - ref_loss) < 1e-6


def test_quadratic_model_matches_closed_form_on_non_square_grid():
    model = Quadratic()
    g = torch.Generator().manual_seed(1)
    d1 = {"W": torch.randn(2, 3, generator=g, dtype=torch.float64)}
    d2 = {"W": torch.randn(2, 3, generator=g, dtype=torch.float64)}
    xs, ys = parse_grid("-1:2:7"), parse_grid("-0.5:0.5:4")
    x, y = torch.zeros(5, 1), torch.zeros(5, dtype=torch.long)
    r = loss_surface(model, (x, y), [d1, d2], "-1:2:7", "-0.5:0.5:4")
    assert r.loss.shape == r.accuracy.shape == r.mask.shape == (4, 7)     # (len(y), len(x)): x along columns
    np.testing.assert_array_equal(r.x, xs)
    np.testing.assert_array_equal(r.y, ys)
    A, m, w0 = model.A.numpy(), model.m.numpy(), model.W.detach().numpy().reshape(-1)
    u, v = d1["W"].numpy().reshape(-1), d2["W"].numpy().reshape(-1)
    expected = np.empty((len(ys), len(xs)))
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            res = w0 + a * u + b * v - m
            expected[j, i] = model.c + 0.5 * res @ A @ res
    np.testing.assert_allclose(r.loss, expected, rtol=1e-10)
    assert not np.allclose(r.loss, expected.T.reshape(r.loss.shape))     # orientation matters here
    # label 0 is predicted exactly where q < log 2
    clear = np.abs(expected - np.log(2)) > 1e-9
    np.testing.assert_array_equal(r.accuracy[clear], (expected < np.log(2))[clear].astype(float))
    # a 1D run along d2 is the column x = 0 of the closed form
    r1 = loss_surface(model, (x, y), d2, "-0.5:0.5:4")
    assert r1.loss.shape == (4,) and r1.y is None
    col = [model.c + 0.5 * (w0 + b * v - m) @ A @ (w0 + b * v - m) for b in ys]
    np.testing.assert_allclose(r1.loss, col, rtol=1e-10)
    frame = r.to_frame()
    assert len(frame) == 28 and {"x", "y", "loss", "accuracy"} <= set(frame.columns)
    row = frame[(frame.x == xs[6]) & (frame.y == ys[0])]
    assert float(row.loss.iloc[0]) == r.loss[0, 6]


def test_weights_bit_identical_after_run_and_after_error():
    model = build_model("cnn-small-bn", "digits", seed=0)
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    x, y = load_dataset("digits", "test").tensors(8)
    d = random_directions(model, 2, include_bn=True, seed=0)
    loss_surface(model, (x, y), d, "-1:1:3", "-1:1:2", loss="adversarial", adv_mode="reattack", attack=AttackSpec(eps=0.1, steps=1))

    def same():
        after = model.state_dict()
        return all(torch.equal(before[n], after[n]) and before[n].dtype == after[n].dtype for n in before)

    assert same() and model.training
    assert all(p.data_ptr() == ptrs[n] and p.requires_grad for n, p in model.named_parameters())

    def boom(done, total):
        if done == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        loss_surface(model, (x, y), d, "-1:1:3", "-1:1:2", callback=boom)
    assert same() and all(p.data_ptr() == ptrs[n] for n, p in model.named_parameters())


def test_interrupted_then_resumed_equals_uninterrupted(mlp, xy, tmp_path):
    d = random_directions(mlp, 2, seed=0)
    kw = dict(loss="adversarial", adv_mode="fixed", attack=AttackSpec(eps=0.1, steps=2), seed=3)
    full = loss_surface(mlp, xy, d, "-1:1:4", "-1:1:3", **kw)

    class Stop(Exception):
        pass

    def stop_after_5(done, total):
        if done == 5:
            raise Stop

    out = tmp_path / "s"
    with pytest.raises(Stop):
        loss_surface(mlp, xy, d, "-1:1:4", "-1:1:3", out=out, save_every=2, callback=stop_after_5, **kw)
    part = load_surface(out)
    assert 0 < part.mask.sum() < 12 and np.isnan(part.loss[~part.mask]).all()
    assert json.loads((out / "surface.json").read_text())["complete"] is False
    # without resume: refused; with other settings: refused, naming what differs
    with pytest.raises(LandscapeError, match="resume"):
        loss_surface(mlp, xy, d, "-1:1:4", "-1:1:3", out=out, **kw)
    with pytest.raises(LandscapeError, match="eps"):
        loss_surface(mlp, xy, d, "-1:1:4", "-1:1:3", out=out, resume=True, **{**kw, "attack": AttackSpec(eps=0.2, steps=2)})
    with pytest.raises(LandscapeError, match="different settings"):
        loss_surface(mlp, xy, d, "-1:1:5", "-1:1:3", out=out, resume=True, **kw)
    seen = []
    res = loss_surface(mlp, xy, d, "-1:1:4", "-1:1:3", out=out, resume=True, callback=lambda a, b: seen.append(a), **kw)
    assert seen[0] == part.mask.sum() + 1 and seen[-1] == 12          # only the missing points were computed
    for r in (res, load_surface(out), load_surface(out / "surface.json")):
        np.testing.assert_array_equal(r.loss, full.loss)
        np.testing.assert_array_equal(r.accuracy, full.accuracy)
        assert r.complete
    stored = load_directions(out)
    assert all(torch.equal(stored[k][n], d[k][n]) for k in range(2) for n in d[k])
    assert stored.meta["seed"] == 0


def test_fixed_mode_centre_is_clean_loss_at_stored_examples(mlp, xy, tmp_path):
    x, y = xy
    d = random_directions(mlp, 2, seed=0)
    r = loss_surface(mlp, xy, d, "-1:1:3", "-1:1:3", loss="adversarial", adv_mode="fixed", attack=AttackSpec(eps=0.2, steps=3),
                     out=tmp_path, seed=7)
    with np.load(tmp_path / "adversarial.npz") as z:
        x_adv = torch.from_numpy(z["x_adv"])
        np.testing.assert_array_equal(z["y"], y.numpy())
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and not torch.equal(x_adv, x)
    with torch.no_grad():
        logits = mlp(x_adv)
        ref = F.cross_entropy(logits, y, reduction="sum").double().item() / len(x)
        acc = (logits.argmax(1) == y).double().mean().item()
    assert r.at(0.0, 0.0) == (ref, acc)
    clean = loss_and_accuracy(mlp, x, y)[0]
    assert ref > clean    # the examples are adversarial
    assert r.settings["attack"]["mode"] == "fixed" and r.settings["attack"]["eps"] == 0.2


def test_reattack_is_seeded_per_point(mlp, xy):
    x, y = xy
    d = random_directions(mlp, 1, seed=0)
    kw = dict(loss="adversarial", adv_mode="reattack", attack=AttackSpec(eps=0.2, steps=3, batch_size=32), seed=1,
              batch_size=32)
    r = loss_surface(mlp, xy, d, "-1:1:3", **kw)
    x_adv = adversarial_examples(mlp, x, y, 0.2, None, 3, batch_size=32, seed=point_seed(1, 1))
    assert r.loss[1] == loss_and_accuracy(mlp, x_adv, y, batch_size=32)[0]
    fixed = loss_surface(mlp, xy, d, "-1:1:3", **{**kw, "adv_mode": "fixed"})
    assert not np.array_equal(r.loss, fixed.loss)
    # a sub-grid, evaluated alone: points keep their index (0, 1) and so their attack seed and numbers ...
    sub = loss_surface(mlp, xy, d, [-1.0, 0.0], **kw)
    np.testing.assert_array_equal(sub.loss, r.loss[:2])
    # ... while the same coordinate at another index is attacked with another seed (the seed is per index)
    shifted = loss_surface(mlp, xy, d, [0.0], **kw)
    assert shifted.loss[0] != r.loss[1]


def test_bad_input(mlp, xy):
    d = random_directions(mlp, 2, seed=0)
    with pytest.raises(LandscapeError, match="y grid"):
        loss_surface(mlp, xy, d, "-1:1:3")
    with pytest.raises(LandscapeError, match="eps"):
        loss_surface(mlp, xy, d[0], "-1:1:3", loss="adversarial")
    with pytest.raises(LandscapeError, match="does not fit"):
        loss_surface(mlp, xy, {"nope": torch.zeros(1)}, "-1:1:3")
    with pytest.raises(LandscapeError, match="loss"):
        loss_surface(mlp, xy, d[0], "-1:1:3", loss="hinge")


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from landscape import AttackSpec, build_model, load_dataset
    from landscape.analysis.directions import random_directions
    from landscape.analysis.surface import loss_surface
    torch.set_num_threads(1)
    out, pause = sys.argv[1], float(sys.argv[2])
    m = build_model("mlp", "digits", seed=0).eval()
    xy = load_dataset("digits", "test").tensors(32)
    d = random_directions(m, 2, seed=0)
    cb = (lambda done, total: time.sleep(pause)) if pause else None
    loss_surface(m, xy, d, "-1:1:5", "-1:1:4", loss="adversarial", adv_mode="reattack", attack=AttackSpec(eps=0.1, steps=2),
                 seed=0, out=out, resume=True, save_every=1, callback=cb)
""")


def test_sigkill_then_resume_gives_identical_arrays(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(ref), "0"], check=True, env=env, timeout=120)
    out = tmp_path / "killed"
    proc = sigkill_surface_run([sys.executable, str(script), str(out), "0.3"], out, 4, env)
    assert proc.returncode == -signal.SIGKILL
    part = load_surface(out)
    assert 4 <= part.mask.sum() < 20
    subprocess.run([sys.executable, str(script), str(out), "0"], check=True, env=env, timeout=120)
    a, b = load_surface(ref), load_surface(out)
    assert a.complete and b.complete
    np.testing.assert_array_equal(a.loss, b.loss)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)


def _bn_pair():
    """Two cnn-small-bn models on digits with different weights AND different running statistics."""
    x, y = load_dataset("digits", "train").tensors(96)
    models = []
    for seed, n in ((0, 1), (1, 3)):
        m = build_model("cnn-small-bn", "digits", seed=seed).train()
        with torch.no_grad():
            [*m.modules()][-1].weight.mul_(30)      # confident logits: the loss feels the statistics
            for i in range(n):                      # moves running_mean/var and num_batches_tracked
                m(x[32 * i:32 * (i + 1)] * (1 + seed))
        models.append(m.eval())
    return models


def test_interpolation_endpoints_are_the_two_models_with_batchnorm(xy):
    """a = 0 and a = 1 give each model's own loss to float round-off: the BatchNorm buffers move too.
    Before (weights only) a = 1 kept model 0's running statistics and missed model 1's loss by far."""
    from landscape.analysis.directions import interpolation_direction
    m0, m1 = _bn_pair()
    x, y = xy
    own0, own1 = loss_and_accuracy(m0, x, y)[0], loss_and_accuracy(m1, x, y)[0]
    before = {k: v.clone() for k, v in m0.state_dict().items()}
    d = interpolation_direction(m0, m1)
    assert any(k.endswith("running_var") for k in d) and any(k.endswith("num_batches_tracked") for k in d)
    r = loss_surface(m0, xy, [d], [-0.5, 0.0, 0.5, 1.0, 1.5])
    assert r.settings["buffers"] == "moved" and np.isfinite(r.loss).all()
    assert r.loss[1] == own0
    assert abs(r.loss[3] - own1) <= 1e-5 * own1, (r.loss[3], own1)
    assert all(torch.equal(v, m0.state_dict()[k]) for k, v in before.items())   # weights and buffers restored
    # the old behaviour, still available, is not the other model at a = 1
    fixed = loss_surface(m0, xy, [interpolation_direction(m0, m1, buffers="fixed")], [0.0, 1.0])
    assert fixed.settings["buffers"] == "fixed" and abs(fixed.loss[1] - own1) > 1e-2


def test_surface_stored_with_the_old_norm_key_loads_and_resumes(mlp, xy, tmp_path):
    """A run stored before the rename (directions meta "norm") loads in today's words and resumes with the
    directions made today (meta "normalization"): the same arrays as an uninterrupted run."""
    from landscape.analysis.directions import DirectionSet
    from landscape.results import axis_names
    d = random_directions(mlp, 2, normalization="layer", seed=0)
    full = loss_surface(mlp, xy, d, "-1:1:4", "-1:1:3")
    old_meta = {"kind": "random", "norm": "layer", "include_bn": False, "seed": 0}   # what older files hold
    out = tmp_path / "old"

    class Stop(Exception):
        pass

    def stop_after_5(done, total):
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        loss_surface(mlp, xy, DirectionSet(list(d), old_meta), "-1:1:4", "-1:1:3", out=out, save_every=2,
                     callback=stop_after_5)
    assert json.loads((out / "surface.json").read_text())["settings"]["directions"]["norm"] == "layer"
    part = load_surface(out)
    assert part.settings["directions"]["normalization"] == "layer" and "norm" not in part.settings["directions"]
    assert load_directions(out).meta["normalization"] == "layer"
    assert axis_names(part) == ("layer-normalized random dir. 1", "layer-normalized random dir. 2")
    assert 0 < part.mask.sum() < 12
    res = loss_surface(mlp, xy, d, "-1:1:4", "-1:1:3", out=out, resume=True)
    np.testing.assert_array_equal(res.loss, full.loss)
    np.testing.assert_array_equal(res.accuracy, full.accuracy)
    assert res.settings_hash == full.settings_hash == load_surface(out).settings_hash
    # another normalization is still refused
    with pytest.raises(LandscapeError, match="different settings"):
        loss_surface(mlp, xy, random_directions(mlp, 2, seed=0), "-1:1:4", "-1:1:3", out=out, resume=True)


def test_committed_surfaces_load():
    root = os.path.join(os.path.dirname(__file__), "..", "results", "sat")
    folders = sorted(f for f in os.listdir(root) if f.startswith("surface_") and os.path.isdir(os.path.join(root, f)))
    assert folders
    for f in folders:
        r = load_surface(os.path.join(root, f))
        stored = json.loads(open(os.path.join(root, f, "surface.json")).read())
        assert r.complete and r.settings_hash == stored["settings_hash"] and r.settings == stored["settings"]


def test_one_public_evaluate():
    import landscape
    import landscape.analysis.surface as S
    assert "evaluate" not in S.__all__ and "loss_and_accuracy" in S.__all__
    assert not hasattr(S, "evaluate")                     # one public function of that name: landscape.evaluate
    assert landscape.evaluate is not S.loss_and_accuracy
