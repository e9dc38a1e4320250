"""Lanczos top-k, Hutchinson / Hutch++ trace and SLQ density against exact spectra."""
import json

import numpy as np
import pytest
import torch
from scipy.stats import t as t_dist

from landscape import __version__, build_model, load_dataset
from landscape.analysis import (DensityResult, EigenResult, HessianOperator, TraceResult, hessian_trace,
                                spectral_density, top_eigenvalues)
from landscape.analysis.pyhessian_backend import pyhessian_spectrum
from landscape.errors import ConfigError
from landscape.io import write_json
from cases import MatrixOp, decaying_spd, exact_case




@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def mlp_case(request):
    """``exact_case`` in float64 and in float32: every exact-Hessian test runs on both (the Lanczos basis is
    kept in the operator's dtype)."""
    return exact_case(request.param)


def f32(op) -> bool:
    return op.dtype == torch.float32


@pytest.mark.parametrize("k", [1, 5, 10])
def test_top_k_matches_eigvalsh(mlp_case, k):
    op, H, ev = mlp_case
    tol = 1e-3
    res = top_eigenvalues(op, k=k, tol=tol, seed=0, return_vectors=True)
    true = ev[::-1][:k]
    assert isinstance(res, EigenResult) and res.all_converged
    np.testing.assert_allclose(res.values, true, rtol=tol)
    assert np.all(np.diff(res.values) <= 0)
    assert res.hvps < 10 * k + 40           # Lanczos, not power iteration
    V = res.vectors
    assert V.shape == (k, op.num_params) and V.dtype == op.dtype
    torch.testing.assert_close(V @ V.T, torch.eye(k, dtype=V.dtype), atol=1e-5 if f32(op) else 1e-8, rtol=0)
    true_res = np.array([float((H @ v.double() - lam * v.double()).norm()) for v, lam in zip(V, res.values)])
    assert np.all(true_res <= tol * np.abs(res.values) * 1.01)
    # the reported residuals are true ones (of the operator, in its dtype)
    np.testing.assert_allclose(true_res, res.residuals, rtol=0.05, atol=1e-5 if f32(op) else 1e-9)


@pytest.mark.parametrize("which", ["SA", "LM"])
def test_smallest_and_largest_magnitude(mlp_case, which):
    op, _, ev = mlp_case
    assert ev[0] < -1e-2                    # the spectrum has a negative part to find
    res = top_eigenvalues(op, k=5, tol=1e-3, which=which, seed=1)
    true = ev[:5] if which == "SA" else ev[np.argsort(-np.abs(ev))][:5]
    assert res.all_converged
    np.testing.assert_allclose(res.values, true, rtol=1e-3)


def test_eigsh_backend_agrees(mlp_case):
    op, _, ev = mlp_case
    res = top_eigenvalues(op, k=5, tol=1e-6, method="eigsh", seed=0)
    np.testing.assert_allclose(res.values, ev[::-1][:5], rtol=1e-5)
    assert res.all_converged and res.settings["method"] == "eigsh"


def test_budget_warm_start_and_seed(mlp_case):
    op, _, ev = mlp_case
    short = top_eigenvalues(op, k=5, tol=1e-8, max_hvps=3)
    assert short.settings["lanczos_steps"] == 3 and short.hvps == 3 + 3   # + one true residual per pair
    assert not short.converged.any() and np.isnan(short.values[3:]).all()
    top = top_eigenvalues(op, k=1, tol=1e-6, return_vectors=True)
    warm = top_eigenvalues(op, k=1, tol=1e-3, v0=top.vectors[0])
    assert warm.settings["lanczos_steps"] <= 2 and warm.hvps <= 3 and warm.all_converged and warm.settings["warm_start"]
    np.testing.assert_allclose(warm.values, ev[-1:], rtol=1e-4)
    a, b = top_eigenvalues(op, k=3, seed=7), top_eigenvalues(op, k=3, seed=7)
    assert np.array_equal(a.values, b.values) and a.hvps == b.hvps
    c = top_eigenvalues(op, k=3, seed=8)
    assert not np.array_equal(a.values, c.values)
    with pytest.raises(ConfigError):
        top_eigenvalues(op, k=0)
    with pytest.raises(ConfigError):
        top_eigenvalues(op, k=2, which="BE")
    with pytest.raises(ConfigError):
        top_eigenvalues(op, k=2, v0=torch.zeros(op.num_params))


def test_repeated_eigenvalues_need_restarts():
    """Single-vector Lanczos sees one copy of a repeated eigenvalue per Krylov space; the restarts after
    each breakdown find the others."""
    d = torch.tensor([5.0] * 4 + [2.0] * 10 + [1.0] * 36, dtype=torch.float64)
    op = MatrixOp(torch.diag(d))
    res = top_eigenvalues(op, k=5, tol=1e-6)
    np.testing.assert_allclose(res.values, [5, 5, 5, 5, 2], rtol=1e-8)
    assert res.settings["restarts"] >= 3 and res.all_converged
    small = MatrixOp(torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)))
    full = top_eigenvalues(small, k=6, which="SA")           # k = n: the whole spectrum, exactly
    np.testing.assert_allclose(full.values, np.arange(1.0, 7.0), rtol=1e-12)
    assert full.settings["lanczos_steps"] == 6


def test_trace_within_three_stderr(mlp_case):
    op, H, _ = mlp_case
    exact = float(torch.trace(H))
    for method in ("hutchinson", "hutch++"):
        tr = hessian_trace(op, method=method, tol=0, max_hvps=90, seed=3)
        assert isinstance(tr, TraceResult) and tr.hvps == 90 and tr.stderr > 0
        assert abs(tr.estimate - exact) <= 3 * tr.stderr, (method, tr.estimate, exact, tr.stderr)
    again = hessian_trace(op, method="hutch++", tol=0, max_hvps=90, seed=3)
    assert again.estimate == tr.estimate


def test_trace_stopping_rule_and_hutchpp_beats_hutchinson():
    A, lam = decaying_spd()
    exact = float(lam.sum())
    op = MatrixOp(A)
    tr = hessian_trace(op, tol=0.02, max_hvps=400, seed=0)
    assert tr.converged and tr.hvps < 400
    assert tr.half_width <= 0.02 * abs(tr.estimate)
    assert abs(tr.estimate - exact) <= 3 * tr.stderr
    # the rule is applied after every probe: it fails for every shorter prefix of the probes
    hu = hessian_trace(op, method="hutchinson", tol=0.1, max_hvps=400, seed=0)
    assert hu.converged and 10 < hu.hvps < 400
    for p in range(10, hu.hvps + 1):
        terms = hu.samples[:p]
        est = terms.mean()
        half = t_dist.ppf(0.975, p - 1) * terms.std(ddof=1) / np.sqrt(p)
        assert (half <= 0.1 * abs(est)) == (p == hu.hvps), p
    assert hu.half_width == pytest.approx(half)
    errs = {m: np.mean([abs(hessian_trace(op, method=m, tol=0, max_hvps=60, seed=s).estimate - exact)
                        for s in range(5)]) for m in ("hutchinson", "hutch++")}
    assert errs["hutch++"] < 0.5 * errs["hutchinson"], errs
    small = MatrixOp(A[:30, :30])
    ex = hessian_trace(small, method="hutch++", sketch_size=30, max_hvps=60)
    assert ex.stderr == 0 and ex.estimate == pytest.approx(float(torch.trace(A[:30, :30])), rel=1e-10)
    with pytest.raises(ConfigError):
        hessian_trace(op, method="exact")


def test_density_quadrature_is_exact_for_moments_of_a_diagonal():
    """With a normalized Rademacher probe, v^T D^p v = tr(D^p) / n exactly for diagonal D, and the Gauss
    quadrature from m >= 2 Lanczos steps reproduces moments 1 and 2: so every probe must match."""
    d = torch.linspace(-1.0, 4.0, 60, dtype=torch.float64) ** 3
    op = MatrixOp(torch.diag(d))
    rho = spectral_density(op, n_probes=3, lanczos_steps=12, grid_points=2000, seed=0)
    assert isinstance(rho, DensityResult) and rho.hvps == 36
    np.testing.assert_allclose(rho.moment(1), float(d.mean()), rtol=1e-10)
    np.testing.assert_allclose(rho.moment(2), float((d ** 2).mean()), rtol=1e-10)
    assert rho.weights.sum() == pytest.approx(1.0)
    assert np.trapezoid(rho.density, rho.grid) == pytest.approx(1.0, abs=1e-9)
    assert rho.nodes.min() >= float(d.min()) - 1e-9 and rho.nodes.max() <= float(d.max()) + 1e-9
    mean_of_density = np.trapezoid(rho.grid * rho.density, rho.grid)
    assert mean_of_density == pytest.approx(float(d.mean()), abs=1e-3 * float(d.abs().max()))


def test_density_moments_match_hessian(mlp_case):
    op, H, ev = mlp_case
    n = op.num_params
    rho = spectral_density(op, n_probes=8, lanczos_steps=30, seed=0)
    for p, exact in ((1, float(torch.trace(H)) / n), (2, float(torch.trace(H @ H)) / n)):
        m = rho.moment(p)
        se = m.std(ddof=1) / np.sqrt(len(m))
        assert abs(m.mean() - exact) <= 4 * se, (p, m.mean(), exact, se)
    # the density's trace estimate is n times the first moment: within 4 standard errors of the exact trace
    # (and not merely equal to its own definition: a wrong scale or a dropped probe misses it)
    se1 = rho.moment(1).std(ddof=1) / np.sqrt(len(rho.moment(1)))
    assert abs(rho.trace_estimate - float(torch.trace(H))) <= 4 * se1 * n
    assert abs(rho.trace_estimate - float(torch.trace(H))) < 0.5 * abs(float(torch.trace(H)))
    # 30 Lanczos steps resolve the extreme eigenvalues
    assert rho.nodes.max() == pytest.approx(ev[-1], rel=1e-5 if f32(op) else 1e-6)
    assert rho.nodes[rho.weights > 0].min() == pytest.approx(ev[0], rel=1e-3)


def test_results_to_dict_and_frame(mlp_case, tmp_path):
    op, _, _ = mlp_case
    eig = top_eigenvalues(op, k=3)
    tr = hessian_trace(op, max_hvps=30)
    rho = spectral_density(op, n_probes=2, lanczos_steps=10, grid_points=50)
    for r in (eig, tr, rho):
        d = r.to_dict()
        assert d["landscape_version"] == __version__ and d["hvps"] == r.hvps
        assert d["settings"]["operator"]["num_params"] == op.num_params
        write_json(tmp_path / "r.json", d)
        json.loads((tmp_path / "r.json").read_text())
        assert len(r.to_frame()) > 0
    assert eig.to_dict()["settings"]["tol"] == 1e-3 and eig.to_dict()["settings"]["which"] == "LA"
    assert tr.to_dict()["settings"]["tol"] == 1e-2 and tr.to_dict()["settings"]["method"] == "auto"
    assert rho.to_dict()["settings"]["lanczos_steps"] == 10 and len(rho.to_dict()["grid"]) == 50
    assert list(eig.to_frame().columns) == ["rank", "eigenvalue", "residual", "converged"]


def test_agrees_with_pyhessian_on_small_cnn():
    pytest.importorskip("pyhessian")
    model = build_model("cnn-small", "digits", seed=0)
    x, y = load_dataset("digits", "test").tensors(64)
    op = HessianOperator(model, (x, y))
    ours = top_eigenvalues(op, k=1, tol=1e-4, seed=0)
    ph = pyhessian_spectrum(model, op.batches, top_n=1, seed=0)
    assert ours.all_converged and ph["eigenvalue_hvps"] > 1
    lam = ph["eigenvalues"][0]
    assert lam == pytest.approx(ours.values[0], rel=1e-2)
    assert lam <= ours.values[0] * (1 + 1e-4)    # a Rayleigh quotient never exceeds the top eigenvalue
    assert all(p.grad is None for p in model.parameters())
