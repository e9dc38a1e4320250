"""One attack specification: validation, round trip, the one step-size rule, the one eps rule, and the same
adversarial examples in the Hessian (eigen directions) and the surface of one run."""
import json

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_main
from landscape import build_model, load_dataset
from landscape.analysis.hessian import HessianOperator
from landscape.analysis.surface import loss_surface
from landscape.attack_spec import AttackSpec, MissingEpsError, config_attack, resolve_attack
from landscape.checkpoint import save_checkpoint
from landscape.data import dataset_info
from landscape.errors import ConfigError
from landscape.evaluate import evaluate


@pytest.fixture(scope="module")
def mlp():
    return build_model("mlp", "digits", seed=0).eval()


def _config(**kw):
    return {"model": "mlp", "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(), **kw}


def test_spec_validates_and_round_trips():
    a = AttackSpec(eps=0.1, steps=4)
    assert a.alpha == 2.5 * 0.1 / 4 and a.step_size is None
    d = a.to_dict()
    assert d["step_size"] == a.alpha and d["step_size_default"] is True
    assert AttackSpec.from_dict(json.loads(json.dumps(d))) == a
    b = AttackSpec(eps=8 / 255, norm="l2", steps=7, step_size=0.01, random_start=False, restarts=3,
                   batch_size=17, bn="batch")
    assert AttackSpec.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    assert a.replace(steps=10).alpha == 0.025                        # the rule follows the steps
    for bad in (dict(eps=-1), dict(eps=2), dict(eps=0.1, norm="l3"), dict(eps=0.1, steps=-1), dict(eps=0.1, steps=0),
                dict(eps=0.1, restarts=0), dict(eps=0.1, batch_size=0), dict(eps=0.1, step_size=0),
                dict(eps=0.1, bn="train"), dict(eps=None)):
        with pytest.raises(ConfigError):
            AttackSpec(**bad)
    with pytest.raises(AttributeError):
        a.eps = 0.2                                                   # frozen


def test_default_step_size_is_the_same_in_eval_hessian_and_surface(mlp):
    """Before: evaluation took eps/4 (0.025 here), the Hessian and the surface 2.5*eps/steps (0.0125)."""
    x, y = load_dataset("digits", "test").tensors(16)
    eps, steps, rule = 0.1, 20, 2.5 * 0.1 / 20
    spec = AttackSpec(eps=eps, steps=steps)
    ev = evaluate(mlp, x, y, spec)
    op = HessianOperator(mlp, (x, y), loss="adversarial", attack=spec)
    d = {n: torch.zeros_like(p) for n, p in mlp.named_parameters()}
    surf = loss_surface(mlp, (x, y), d, [0.0], loss="adversarial", attack=spec)
    assert ev.step_size == op.step_size == surf.settings["attack"]["step_size"] == rule
    assert ev.to_dict()["settings"]["attack"] == op.describe()["attack"] == \
        {k: v for k, v in surf.settings["attack"].items() if k != "mode"}


def test_eigen_directions_and_surface_attack_the_same_examples(tmp_path, capsys, monkeypatch):
    """landscape-surface --directions eigen --loss adversarial: the Hessian (eigenvectors) and the surface
    use identical adversarial examples. Before: batches of 256 vs 512 made samples 256+ differ."""
    from landscape.cli.surface import main as surface_main
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, build_model("mlp", "digits", seed=0), _config(method="at", eps=0.1, steps=2, step_size=0.05))
    from landscape.analysis.samples import SampleSet
    seen = []
    make = SampleSet.make

    def spy(*a, **k):
        out = make(*a, **k)
        if out.attack is not None:      # the Hessian's adversarial sample set
            seen.append(out.tensors()[0].clone())
        return out

    monkeypatch.setattr(SampleSet, "make", spy)
    out = tmp_path / "s"
    r = run_main(surface_main, [ck, "--dim", "1", "--directions", "eigen", "--loss", "adversarial", "--samples",
                                "300", "--x", "0:1:2", "--eigen-tol", "1e-1", "--out", out], capsys)
    assert r.returncode == 0, r.stderr
    with np.load(out / "adversarial.npz") as z:
        x_surface = torch.from_numpy(z["x_adv"])
    assert len(seen) == 1 and x_surface.shape[0] == 300
    torch.testing.assert_close(seen[0], x_surface, rtol=0, atol=0)


def test_resolve_attack_one_eps_rule():
    cfg = _config(method="at", eps=0.05, steps=2, step_size=0.03)
    assert resolve_attack(cfg) == AttackSpec(eps=0.05, steps=2, step_size=0.03)
    assert resolve_attack(cfg, steps=4).alpha == 2.5 * 0.05 / 4       # another attack: the rule, not 0.03
    assert resolve_attack(cfg, eps=0.1).alpha == 2.5 * 0.1 / 2
    assert resolve_attack(cfg, batch_size=64, bn="batch", restarts=2).batch_size == 64
    # no eps: a standard run (its old configs recorded the dataset default), a new one (attack: null), foreign
    for no_eps in (_config(method="standard", eps=0.1, steps=10), _config(method="standard", attack=None),
                   _config(foreign=True), {}):
        assert config_attack(no_eps) == {}
        with pytest.raises(MissingEpsError, match="pass --eps"):
            resolve_attack(no_eps)
        assert resolve_attack(no_eps, eps=0.2).eps == 0.2
    new = _config(method="at", eps=0.1, attack=AttackSpec(eps=0.1, steps=5).to_dict())
    assert resolve_attack(new) == AttackSpec(eps=0.1, steps=5)


def test_a_standard_run_records_no_eps():
    from landscape.training import TrainConfig
    c = TrainConfig(method="standard").resolved()
    assert c.eps is None and c.step_size is None and c.attack() is None and "eps" not in c.name
    at = TrainConfig(method="at").resolved()
    assert at.eps == 0.1 and at.attack() == AttackSpec(eps=0.1, steps=10, step_size=0.025, batch_size=128)
    assert at.attack(steps=20).alpha == 2.5 * 0.1 / 20


@pytest.mark.parametrize("cli", ["eval", "spectrum", "surface"])
def test_every_cli_asks_for_eps_when_the_checkpoint_has_none(cli, tmp_path, capsys):
    """Before: landscape-eval printed the clean accuracy as 'PGD-20 (eps 0)', landscape-surface took the
    dataset's default eps; only landscape-spectrum refused."""
    import importlib
    main = importlib.import_module(f"landscape.cli.{cli}").main
    ck = tmp_path / "std.pt"
    save_checkpoint(ck, build_model("mlp", "digits", seed=0), _config(method="standard", attack=None))
    extra = {"eval": [], "spectrum": ["--loss", "adversarial"],
             "surface": ["--loss", "adversarial", "--dim", "1", "--x", "0:1:2", "--out", tmp_path / "o"]}[cli]
    r = run_main(main, [ck, "--device", "cpu", *extra], capsys)
    assert_one_line_error(r, contains="pass --eps")
    assert not r.stdout


def test_eval_result_is_json_ready_with_kind_settings_and_the_attack(mlp):
    x, y = load_dataset("digits", "test").tensors(8)
    d = json.loads(json.dumps(evaluate(mlp, x, y, attack=AttackSpec(eps=0.1, steps=2), seed=3).to_dict()))
    assert d["kind"] == "evaluation" and d["seconds"] >= 0 and "landscape_version" in d
    assert d["settings"]["attack"]["step_size"] == 0.125 and d["settings"]["seed"] == 3
    assert d["settings"]["samples"] == 8 and d["eps"] == 0.1 and d["steps"] == 2
    clean = evaluate(mlp, x, y).to_dict()                             # no attack: clean only
    assert clean["pgd_acc"] is None and clean["settings"]["attack"] is None


def test_attack_bn_batch_uses_batch_statistics_and_leaves_the_buffers():
    m = build_model("cnn-small-bn", "digits", seed=0).eval()
    x, y = load_dataset("digits", "test").tensors(32)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    a = AttackSpec(eps=0.1, steps=3)
    x_eval, x_batch = a.examples(m, x, y), a.replace(bn="batch").examples(m, x, y)
    assert not torch.equal(x_eval, x_batch)                           # other statistics, other gradients
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    assert not m.training and all(getattr(b, "track_running_stats", True) for b in m.modules())
