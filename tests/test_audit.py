"""The evaluation audit (landscape/audit/) and resumable AutoAttack (landscape/autoattack.py).

Robust models (AT, TRADES, SAT on digits, MLPs trained in seconds) get no flag; each deliberately broken
model (saturated logits, non-differentiable input quantization, a randomized defense) is flagged by the check
meant for it. The pieces are checked against closed forms: PGD's traced twin against ``pgd`` bit for bit, the
margin loss, the Wilson bound.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_one_line_error, run_main
from landscape import AttackSpec, load_dataset
from landscape.attacks import batch_generator, per_sample_loss, pgd, pgd_trace
from landscape.audit import Finding, Thresholds, audit, judge, rejudge, wilson_lower
from landscape.errors import ConfigError, DataError


# --- pieces against closed forms ---------------------------------------------------------------------------

def test_pgd_trace_last_iterate_is_pgd_bit_for_bit(tiny_cnn):
    x, y = load_dataset("digits", "test").tensors(24)
    for norm in ("linf", "l2"):
        eps = 0.1 if norm == "linf" else 0.5
        ref = pgd(tiny_cnn, x, y, eps, steps=5, norm=norm, generator=batch_generator(3, 0))
        tr = pgd_trace(tiny_cnn, x, y, eps, steps=5, norm=norm, generator=batch_generator(3, 0))
        assert torch.equal(tr.x_adv, ref)
        assert tr.loss.shape == (6, 24)
        with torch.no_grad():   # the last recorded loss is the loss at the returned point
            torch.testing.assert_close(tr.loss[-1], F.cross_entropy(tiny_cnn.eval()(ref), y, reduction="none"))
        assert bool((tr.ever_adversarial >= tr.final_adversarial).all())


def test_margin_loss_is_the_cw_margin():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, -1.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(per_sample_loss(logits, y, "margin"), torch.tensor([2.5 - 3.0, 4.0 - 0.0]))
    torch.testing.assert_close(per_sample_loss(logits, y, "ce"), F.cross_entropy(logits, y, reduction="none"))
    with pytest.raises(ConfigError, match="unknown attack loss"):
        per_sample_loss(logits, y, "hinge")


@pytest.mark.parametrize("k,m", [(0, 10), (10, 10), (3, 40), (200, 500), (1, 2)])
def test_wilson_lower_bound_solves_its_quadratic(k, m):
    """The lower root p of (k/m - p)^2 = z^2 p (1 - p) / m, solved here directly."""
    z, ph = 2.0, k / m
    a, b, c = 1 + z * z / m, -(2 * ph + z * z / m), ph * ph
    root = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert wilson_lower(k, m, z) == pytest.approx(max(root, 0.0), abs=1e-12)
    assert wilson_lower(k, 0, z) == 0.0


def test_judge_reapplies_thresholds_to_stored_evidence():
    ev = {"count": 30, "of": 100, "summary": ""}
    c = Finding("black_box", True, ev, "")
    assert judge([c], Thresholds(black_box=0.1))[0].passed is False     # lower bound ~0.22 > 0.1
    assert judge([c], Thresholds(black_box=0.3))[0].passed is True
    block = rejudge({"verdict": "ok", "checks": [c.to_dict()]}, Thresholds(black_box=0.1))
    assert block["verdict"] == "suspect"


def test_a_gap_too_small_to_move_the_accuracy_is_not_flagged():
    """AutoAttack broke all 6 of PGD's survivors (a collapsed AT model of the study: PGD-20 1.2%, AutoAttack
    0%): on 500 samples that moves the accuracy by 1.2 points, under min_effect (2): no flag; on 100 samples,
    6 points: flagged. A stored result's n fills in evidence kept without it; its block alone is judged as
    before (share only)."""
    ev = {"count": 6, "of": 6, "summary": ""}
    c = Finding("attack_agreement", False, ev, "")
    assert judge([c], Thresholds())[0].passed is False                       # no n: the share alone
    for n, flagged in ((500, False), (100, True)):
        block = rejudge({"n": n, "audit": {"verdict": "suspect", "checks": [c.to_dict()]}})
        assert (block["verdict"] == "suspect") is flagged, n
    assert judge([Finding("attack_agreement", None, {**ev, "n": 500}, "")], Thresholds(min_effect=0.01))[0].passed \
        is False
    sat = Finding("saturated_softmax", None, {"count": 6, "of": 6, "n": 500, "summary": ""}, "")
    assert judge([sat], Thresholds())[0].passed is False                     # not a gap between attacks


# --- models ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def robust_runs(tmp_path_factory):
    """AT, TRADES and SAT-eps MLPs on digits at eps 0.1 (15 epochs each, a few seconds): their run folders."""
    from landscape.training import TrainConfig, train
    out = tmp_path_factory.mktemp("audit-runs")
    for method in ("at", "trades", "sat-eps"):
        train(TrainConfig(method=method, model="mlp", eps=0.1, epochs=15, lr=0.05, val_samples=200, name=method),
              out=out)
    return out


@pytest.fixture(scope="module")
def robust_mlps(robust_runs):
    from landscape import load_checkpoint
    return {m: load_checkpoint(robust_runs / m / "best.pt").model for m in ("at", "trades", "sat-eps")}


@pytest.fixture(scope="module")
def audit_data():
    return load_dataset("digits", "test").tensors(120)


def quick_audit(model, data, **kw):
    x, y = data
    return audit(model, x, y, AttackSpec(eps=0.1, steps=20), autoattack=False, square_queries=300, effort_restarts=2,
                 eot=4, **kw)


class Saturated(nn.Module):
    """Logits times 1e4: the float32 softmax is exactly one-hot, the cross-entropy's gradient exactly zero."""
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return 1e4 * self.m(x)


class Quantized(nn.Module):
    """Inputs rounded to 5 grey levels before the model: not differentiable (the gradient of round is 0)."""
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(torch.round(x * 4) / 4)


class Randomized(nn.Module):
    """Gaussian noise on the input at every forward pass (a randomized defense)."""
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m
        self.g = torch.Generator().manual_seed(0)

    def forward(self, x):
        return self.m((x + 0.1 * torch.randn(x.shape, generator=self.g)).clamp(0, 1))


def test_robust_models_get_no_flag(robust_mlps, audit_data):
    for method, model in robust_mlps.items():
        res = quick_audit(model, audit_data)
        assert res.verdict == "ok", (method, res.table())
        acc = res.accuracies
        assert acc["pgd"] < acc["clean"] and acc["worst_case"] <= min(acc["pgd"], acc["pgd_margin"], acc["fgsm"])
        d = res.to_dict()
        assert d["kind"] == "audit" and d["audit"]["verdict"] == "ok"
        assert {c["name"] for c in d["audit"]["checks"]} >= {"attack_agreement", "more_effort", "eps_sweep",
                                                             "loss_traces", "gradients", "saturated_softmax",
                                                             "randomized", "black_box", "fgsm_vs_pgd", "transfer"}
        json.dumps(d)


@pytest.mark.slow
@pytest.mark.parametrize("method,eps", [("at", 0.05), ("at", 0.2), ("trades", 0.05), ("trades", 0.2),
                                        ("sat-eps", 0.05)])
def test_robust_models_at_other_budgets_get_no_flag(method, eps, tmp_path, audit_data):
    """The calibration of docs/audit.md beyond eps 0.1 (the default run's): MLPs on digits, 15 epochs."""
    from landscape import load_checkpoint
    from landscape.training import TrainConfig, train
    train(TrainConfig(method=method, model="mlp", eps=eps, epochs=15, lr=0.05, val_samples=200, name="m"),
          out=tmp_path)
    x, y = audit_data
    res = audit(load_checkpoint(tmp_path / "m" / "best.pt").model, x, y, AttackSpec(eps=eps, steps=20),
                autoattack=False, square_queries=300, effort_restarts=2)
    assert res.verdict == "ok", res.table()


@pytest.mark.parametrize("wrapper,meant", [(Saturated, {"saturated_softmax", "gradients"}),
                                           (Quantized, {"gradients", "eps_sweep"}),
                                           (Randomized, {"randomized"})])
def test_each_broken_model_is_flagged_by_its_check(robust_mlps, audit_data, wrapper, meant):
    res = quick_audit(wrapper(robust_mlps["at"]).eval(), audit_data)
    assert res.verdict == "suspect"
    assert meant <= set(res.failed), res.table()
    if wrapper is Randomized:   # flagged, and then every gradient attack averaged 4 draws (EOT)
        assert next(c for c in res.checks if c.name == "randomized").evidence["eot"] == 4


class Collapsed(nn.Module):
    """A collapsed model (AT at too large an eps): class 3 wins everywhere, its logits still move with x."""
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 64 * 10).view(10, 64) / 64)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + 8.0 * F.one_hot(torch.tensor(3), 10)


def test_a_collapsed_model_is_not_called_masked(audit_data):
    """Its samples of class 3 survive every budget because no input is predicted as anything else (no witness
    in the unbounded ball): eps_sweep passes and says so; the same evidence without that count would flag."""
    res = quick_audit(Collapsed(), audit_data)
    sweep = next(c for c in res.checks if c.name == "eps_sweep")
    ev = sweep.evidence
    assert ev["unbounded_robust"] == ev["unbounded_without_witness"] == int((audit_data[1] == 3).sum()) > 0
    assert sweep.passed is True and "collapsed" in ev["summary"]
    old = {k: v for k, v in ev.items() if k != "unbounded_without_witness"}
    assert judge([Finding("eps_sweep", True, old, "")], Thresholds())[0].passed is False
    res = quick_audit(Quantized(Collapsed()), audit_data)   # a witness-free model is still judged by the rest
    assert "gradients" in res.failed


def test_transfer_check_uses_the_surrogate(robust_mlps, audit_data):
    res = quick_audit(robust_mlps["at"], audit_data, surrogate=robust_mlps["trades"])
    tr = next(c for c in res.checks if c.name == "transfer")
    assert tr.passed is not None and "transfer" in res.accuracies
    assert res.accuracies["worst_case"] <= res.accuracies["transfer"]


def test_audit_refuses_bad_arguments_before_any_work(robust_mlps, audit_data):
    x, y = audit_data
    m = robust_mlps["at"]
    with pytest.raises(ConfigError, match="AttackSpec"):
        audit(m, x, y, 0.1)
    with pytest.raises(ConfigError, match="moves the inputs"):
        audit(m, x, y, AttackSpec(eps=0.0))
    with pytest.raises(ConfigError, match="effort_restarts"):
        audit(m, x, y, AttackSpec(eps=0.1), effort_restarts=0)
    with pytest.raises(DataError, match="not \\[0, 1\\]"):
        audit(m, x * 255, y, AttackSpec(eps=0.1))


# --- AutoAttack: resumable, per sample -----------------------------------------------------------------------

pyautoattack = pytest.importorskip("pyautoattack")


def test_autoattack_resumes_after_a_stop_with_the_same_outcome(robust_mlps, audit_data, tmp_path, monkeypatch):
    from landscape import autoattack as aa
    x, y = audit_data[0][:24], audit_data[1][:24]
    m = robust_mlps["at"]
    kw = dict(chunk=8, attacks=("apgd-ce", "square"), square_queries=100)
    whole = aa.run_autoattack(m, x, y, 0.1, **kw)
    real, calls = aa._member, []

    def stop_on_the_fourth(*a, **k):
        calls.append(a[3])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(aa, "_member", stop_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        aa.run_autoattack(m, x, y, 0.1, state_dir=tmp_path / "state", **kw)
    assert len(list((tmp_path / "state").glob("chunk-*.json"))) == 2   # chunk 2 saved after its first member
    calls.clear()
    monkeypatch.setattr(aa, "_member", lambda *a, **k: (calls.append(a[3]), real(*a, **k))[1])
    again = aa.run_autoattack(m, x, y, 0.1, state_dir=tmp_path / "state", **kw)
    assert again.broken_by == whole.broken_by and again.resumed_chunks == 2
    assert calls == ["square", "apgd-ce", "square"]        # only what was left
    assert 0 < whole.accuracy < whole.clean_acc
    with pytest.raises(ConfigError, match="other settings"):
        aa.run_autoattack(m, x, y, 0.2, state_dir=tmp_path / "state", **kw)


def test_cli_audit_json_and_table(trained_digits, tmp_path, capsys):
    from landscape.cli.eval import main
    out = tmp_path / "audit.json"
    proc = run_main(main, [str(trained_digits / "best.pt"), "--audit", "--no-autoattack", "--samples", "40",
                           "--steps", "5", "--square-queries", "50", "--json", str(out)], capsys)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out.read_text())
    assert d["kind"] == "audit" and d["audit"]["verdict"] in ("ok", "suspect")
    assert all({"name", "passed", "evidence", "advice"} <= set(c) for c in d["audit"]["checks"])
    assert "audit:" in proc.stdout and "attack_agreement" in proc.stdout


def test_cli_audit_mistakes(trained_digits, tmp_path, capsys):
    from landscape.cli.eval import main
    ck = str(trained_digits / "best.pt")
    assert_one_line_error(run_main(main, [ck, "--autoattack-state", str(tmp_path / "s")], capsys),
                          contains="--autoattack")
    assert_one_line_error(run_main(main, [ck, "--surrogate", ck], capsys), contains="--audit")
    assert_one_line_error(run_main(main, [ck, "--audit", "--no-autoattack", "--surrogate",
                                          str(tmp_path / "missing.pt")], capsys))


_AA_SCRIPT = """
import json, os, sys, torch
import torch.distributed as dist
from landscape import load_checkpoint, load_dataset
from landscape.autoattack import run_autoattack
torch.set_num_threads(1)
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    dist.init_process_group("gloo")
m = load_checkpoint(sys.argv[1]).model
x, y = load_dataset("digits", "test").tensors(24)
r = run_autoattack(m, x, y, 0.1, chunk=8, attacks=("apgd-ce", "square"), square_queries=100)
rank = dist.get_rank() if dist.is_initialized() else 0
with open(sys.argv[2] + f".{rank}", "w") as f:
    json.dump(r.broken_by, f)
"""


@pytest.mark.slow
def test_autoattack_shared_out_under_torchrun_equals_one_process(robust_runs, tmp_path):
    """Two processes (gloo) take every other chunk; each ends with the whole per-sample outcome, equal to one
    process's."""
    import os
    import subprocess
    import sys
    script = tmp_path / "aa.py"
    script.write_text(_AA_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ck = str(robust_runs / "at" / "best.pt")
    one = subprocess.run([sys.executable, str(script), ck, str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), ck, str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    single = json.loads((tmp_path / "one.0").read_text())
    assert json.loads((tmp_path / "two.0").read_text()) == single == json.loads((tmp_path / "two.1").read_text())
    assert len(single) == 24 and {None, "apgd-ce"} <= set(single), single   # survivors and broken ones
