"""Trace estimators (Hutchinson, Hutch++, XTrace) against exact traces and their stated errors over seeds."""
import json
from pathlib import Path
import math

import numpy as np
import pytest
import torch
from scipy.stats import t as t_dist

from landscape import __version__
from landscape.analysis import HessianOperator, TraceResult, hessian_trace
from landscape.analysis import spectrum
from landscape.analysis.memory import AUTO_RULE
from landscape.analysis.trace import _sphere, _xtrace_estimates
from landscape.errors import ConfigError, ResourceError
from cases import MatrixOp, decaying_spd, exact_case

METHODS = ("hutchinson", "hutch++", "xtrace")


def decaying(n: int, seed: int = 0, flat: bool = False) -> torch.Tensor:
    return decaying_spd(n, seed, flat)[0]


@pytest.fixture(scope="module")
def mlp_case():
    """A 910-weight tanh MLP on 32 digits: its operator and exact Hessian (float64)."""
    op, H, _ = exact_case(torch.float64)
    return op, H


def test_xtrace_estimates_equal_the_naive_leave_one_out_formula():
    """The O(n s^2) algebra against Algorithm 1.2 written out: for each i, an orthonormal basis of the
    sketch without column i, the exact trace on it, and the normalized Hutchinson term of omega_i."""
    n, s = 40, 7
    A = decaying(n, seed=1)
    Om = _sphere(n, s, torch.Generator().manual_seed(2), torch.device("cpu"))
    Y = A @ Om
    Q, R = torch.linalg.qr(Y)
    fast = _xtrace_estimates(Om, (Om * Y).sum(0), Q, R, A @ Q)
    naive = []
    for i in range(s):
        Qi, _ = torch.linalg.qr(torch.cat([Y[:, :i], Y[:, i + 1:]], 1))
        c = Om[:, i] - Qi @ (Qi.T @ Om[:, i])
        naive.append(float(torch.trace(Qi.T @ A @ Qi) + (n - s + 1) * (c @ A @ c) / (c @ c)))
    np.testing.assert_allclose(fast.numpy(), naive, rtol=1e-10)


def test_closed_forms():
    # the low-rank part is exact when H has rank < s: XTrace and Hutch++ return the trace with zero error
    g = torch.Generator().manual_seed(3)
    B = torch.randn(60, 4, generator=g, dtype=torch.float64)
    low = MatrixOp(B @ B.T)
    exact = float(torch.trace(B @ B.T))
    x = hessian_trace(low, method="xtrace", tol=0, max_hvps=20)
    assert x.stderr == 0 and x.converged and x.estimate == pytest.approx(exact, rel=1e-10) and x.hvps <= 20
    # s = n: Hutch++ sees the whole matrix
    A = decaying(30)
    h = hessian_trace(MatrixOp(A), method="hutch++", sketch_size=30, max_hvps=60)
    assert h.stderr == 0 and h.estimate == pytest.approx(float(torch.trace(A)), rel=1e-10)
    # c I: every Rademacher term is exactly c n, so Hutchinson has no error at all
    eye = hessian_trace(MatrixOp(2.5 * torch.eye(50, dtype=torch.float64)), method="hutchinson", tol=0,
                        max_hvps=12)
    assert eye.estimate == pytest.approx(125.0, rel=1e-12) and eye.stderr == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_exact_trace_of_a_tiny_network(mlp_case, method):
    op, H = mlp_case
    exact = float(torch.trace(H))
    tr = hessian_trace(op, method=method, tol=0, max_hvps=90, seed=3)
    assert isinstance(tr, TraceResult) and tr.hvps == 90 and tr.stderr > 0
    assert abs(tr.estimate - exact) <= 3 * tr.stderr, (method, tr.estimate, exact, tr.stderr)
    again = hessian_trace(op, method=method, tol=0, max_hvps=90, seed=3)
    assert again.estimate == tr.estimate


def test_xtrace_beats_hutchpp_and_hutchinson_on_a_decaying_spectrum():
    A = decaying(300)
    exact = float(torch.trace(A))
    op = MatrixOp(A)
    err = {m: np.mean([abs(hessian_trace(op, method=m, tol=0, max_hvps=60, seed=s).estimate - exact)
                       for s in range(10)]) for m in METHODS}
    assert err["xtrace"] < 0.7 * err["hutch++"] < 0.5 * err["hutchinson"], err


def _check_calibration(est: np.ndarray, stderr: np.ndarray, half: np.ndarray, exact: float) -> tuple:
    """Coverage of the stated 95% intervals, and the stated stderr over the observed spread (seeds)."""
    coverage = float(np.mean(np.abs(est - exact) <= half))
    ratio = float(np.sqrt(np.mean(stderr ** 2)) / np.sqrt(np.mean((est - exact) ** 2)))
    return coverage, ratio


def _calibrated(coverage: float, ratio: float) -> bool:
    return 0.88 <= coverage <= 0.99 and 0.75 <= ratio <= 1.33


@pytest.mark.parametrize("method", METHODS)
def test_stated_error_is_calibrated_over_seeds(method):
    """Issue 11.11: over 200 seeds the true trace lies within the stated 95% half-width about 95% of the
    time, and the stated standard error matches the estimates' spread; an error reported twice too large
    (coverage ~100%, ratio 2) or half too small (coverage ~68%, ratio 0.5) fails the same check."""
    A = decaying(120, seed=4)
    exact = float(torch.trace(A))
    op = MatrixOp(A)
    res = [hessian_trace(op, method=method, tol=0, max_hvps=30, seed=s) for s in range(200)]
    est = np.array([r.estimate for r in res])
    se = np.array([r.stderr for r in res])
    half = np.array([r.half_width for r in res])
    coverage, ratio = _check_calibration(est, se, half, exact)
    assert _calibrated(coverage, ratio), (method, coverage, ratio)
    for wrong in (2.0, 0.5):
        assert not _calibrated(*_check_calibration(est, wrong * se, wrong * half, exact)), (method, wrong)


def test_auto_and_stopping_rule():
    A = decaying(300)
    exact = float(torch.trace(A))
    op = MatrixOp(A)
    for budget in (10, 30, 300):
        tr = hessian_trace(op, tol=0, max_hvps=budget, seed=1)
        assert tr.settings["method"] == "auto"
        assert tr.method == tr.settings["chosen"] == [m for b, m in AUTO_RULE if b <= budget][-1]
    for method in METHODS:
        tr = hessian_trace(op, method=method, tol=0.1, max_hvps=600, seed=0)
        assert tr.converged and tr.hvps < 600 and tr.half_width <= 0.1 * abs(tr.estimate), method
        assert abs(tr.estimate - exact) <= 3 * tr.stderr, method
    hu = hessian_trace(op, method="hutchinson", tol=0.1, max_hvps=400, seed=0)
    for p in range(10, hu.hvps + 1):  # one probe at a time (no matmat): the rule first holds at the end
        terms = hu.samples[:p]
        halfw = t_dist.ppf(0.975, p - 1) * terms.std(ddof=1) / np.sqrt(p)
        assert (halfw <= 0.1 * abs(terms.mean())) == (p == hu.hvps), p
    with pytest.raises(ConfigError):
        hessian_trace(op, method="exact")
    with pytest.raises(ConfigError):
        hessian_trace(op, max_hvps=0)
    with pytest.raises(ConfigError):
        hessian_trace(op, method="xtrace", max_hvps=3)


def test_memory_cap_limits_the_sketch():
    """auto falls back by its rule (Hutch++ with the largest sketch that fits) and records why; a method named
    that does not fit is refused with what would (issue 33, class 4), never silently cut."""
    op = MatrixOp(decaying(300))
    budget = f"{40 * 8 * 300}B"      # forty float64 n-vectors beside an HVP that needs nothing
    tr = hessian_trace(op, tol=0, max_hvps=90, max_memory=budget, hvp_peak=0)
    assert tr.settings["chosen"] == "hutch++" and tr.sketch_size == 10 and tr.hvps == 90
    assert "hutch++ with a sketch of 10" in tr.settings["auto_reason"]
    with pytest.raises(ResourceError, match="at most 10 probes fit"):
        hessian_trace(op, method="xtrace", tol=0, max_hvps=90, max_memory=budget, hvp_peak=0)
    x = hessian_trace(op, method="xtrace", tol=0, max_hvps=20, max_memory=budget, hvp_peak=0)
    assert x.sketch_size == 10 and x.hvps == 20


def test_matmat_blocks_give_the_same_numbers(mlp_case):
    """Through HessianOperator.matmat with graphs rebuilt (several batches, no graph budget), in blocks,
    each method gives what one vector at a time gives."""
    op, H = mlp_case
    x, y = op.batches[0]
    multi = HessianOperator(op.model, (x, y), batch_size=12, max_graph_memory=0)
    for method in METHODS:
        multi.matmat_block = 1
        one = hessian_trace(multi, method=method, tol=0, max_hvps=40, seed=5)
        calls = []
        hook = multi.model.register_forward_hook(lambda *a: calls.append(1))
        multi.matmat_block = 16
        blocked = hessian_trace(multi, method=method, tol=0, max_hvps=40, seed=5)
        hook.remove()
        assert blocked.estimate == pytest.approx(one.estimate, rel=1e-9) and blocked.hvps == one.hvps == 40
        assert len(calls) < 40 * 3 / 4                        # graphs built once per block, not per HVP


def test_result_is_json_ready_and_reexported(mlp_case, tmp_path):
    op, _ = mlp_case
    assert spectrum.hessian_trace is hessian_trace and spectrum.TraceResult is TraceResult
    tr = hessian_trace(op, max_hvps=30)
    d = tr.to_dict()
    assert d["kind"] == "trace" and d["landscape_version"] == __version__ and d["hvps"] == 30
    assert d["settings"]["max_hvps"] == 30 and d["settings"]["operator"]["num_params"] == op.num_params
    assert d["seconds"] > 0 and math.isfinite(d["half_width_95"])
    json.loads(json.dumps(d))
    assert len(tr.to_frame()) == len(tr.samples)


def test_tol_stops_the_trace_early_and_the_old_rtol_is_gone():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(60, 60, generator=g, dtype=torch.float64)
    op = MatrixOp(B @ B.T)
    for method in METHODS:
        new = hessian_trace(op, method=method, tol=0.2, max_hvps=60, seed=2)
        assert new.converged and new.hvps < 60      # the tolerance was used (it stopped early)
        assert new.settings["tol"] == 0.2 and "rtol" not in new.settings
    with pytest.raises(TypeError, match="rtol"):
        hessian_trace(op, rtol=0.1)


def test_trace_takes_the_one_memory_budget_and_stays_within_it(tmp_path):
    """``max_memory="1GB"`` (the analysis's budget, as --max-memory writes it): the probes get what is left
    of it beside what the process holds, and the whole process's peak stays under it (a fresh process: the
    test runner's own memory is not the trace's)."""
    import subprocess
    import sys
    code = """
import json, torch
from landscape import load_dataset
from landscape.analysis import HessianOperator, hessian_trace
from landscape.analysis.memory import PeakMemory
from cases import tiny_mlp
x, y = load_dataset("digits", "test").tensors(64)
op = HessianOperator(tiny_mlp(torch.float32), (x, y), max_graph_memory="1GB")
with PeakMemory("cpu") as pk:
    tr = hessian_trace(op, max_memory="1GB", max_hvps=60, tol=0)
print(json.dumps({"peak": pk.peak, "settings": {k: tr.settings[k] for k in ("max_memory", "max_memory_default",
                  "probe_memory", "chosen")}, "hvps": tr.hvps}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    s = out["settings"]
    assert s["max_memory"] == 10 ** 9 and s["max_memory_default"] is False and 0 < s["probe_memory"] < 10 ** 9
    assert out["hvps"] == 60 and out["peak"] <= 10 ** 9
