"""Directions: filter normalization, zero bias/BN entries, seeding, orthogonalization, interpolation, PCA."""
import pytest
import torch

from landscape import AttackSpec, build_model
from landscape.analysis.directions import (current_meta, direction_norm, dot, interpolation_direction,
                                           orthogonalize, pca_directions, random_direction, random_directions)
from landscape.errors import LandscapeError


@pytest.fixture
def bn_model():
    return build_model("cnn-small-bn", "digits", seed=0)


def _filter_norms(t):
    return t.reshape(t.shape[0], -1).norm(dim=1)


def test_filter_norms_match_weights_and_vectors_are_zero(bn_model):
    d = random_direction(bn_model, normalization="filter", seed=3)
    params = dict(bn_model.named_parameters())
    assert set(d) == set(params)
    n_filters = 0
    for name, p in params.items():
        assert d[name].shape == p.shape and d[name].dtype == p.dtype
        if p.dim() > 1:
            torch.testing.assert_close(_filter_norms(d[name]), _filter_norms(p.detach()), rtol=1e-5, atol=1e-7)
            n_filters += p.shape[0]
            assert not torch.equal(d[name], p.detach())          # a random direction, not the weights
        else:
            assert torch.count_nonzero(d[name]) == 0, name      # biases and BatchNorm scale/shift
    assert n_filters > 100
    assert any("1.weight" == n for n in params) and params["1.weight"].dim() == 1  # a BatchNorm weight is there


def test_layer_norm_and_none(bn_model):
    params = dict(bn_model.named_parameters())
    d = random_direction(bn_model, normalization="layer", seed=1)
    for name, p in params.items():
        if p.dim() > 1:
            assert abs(d[name].norm().item() - p.detach().norm().item()) < 1e-4 * p.norm().item()
            # layer normalization does NOT equalize single filters (else the test above would be vacuous)
            assert not torch.allclose(_filter_norms(d[name]), _filter_norms(p.detach()), rtol=1e-3)
    raw = random_direction(bn_model, normalization="none", seed=1)
    w = params["0.weight"]
    assert abs(raw["0.weight"].std().item() - 1.0) < 0.3 and raw["0.weight"].norm() != w.norm()


def test_include_bn_gives_vectors_the_parameter_norm(bn_model):
    d = random_direction(bn_model, normalization="filter", include_bn=True, seed=0)
    d0 = random_direction(bn_model, normalization="filter", include_bn=False, seed=0)
    for name, p in bn_model.named_parameters():
        if p.dim() == 1:
            assert abs(d[name].norm().item() - p.detach().norm().item()) < 1e-4 * max(p.norm().item(), 1)
            if p.norm() > 0:
                assert torch.count_nonzero(d[name]) == p.numel()
        else:  # include_bn does not change the weight entries (draws happen for every parameter)
            assert torch.equal(d[name], d0[name])


def test_seeded_and_distinct(bn_model):
    a, b = random_direction(bn_model, seed=5), random_direction(bn_model, seed=5)
    c = random_direction(bn_model, seed=6)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)
    d1, d2 = random_directions(bn_model, 2, seed=5)
    assert all(torch.equal(a[n], d1[n]) for n in a)
    assert not all(torch.equal(d1[n], d2[n]) for n in a)


def test_unknown_norm_is_an_error(bn_model):
    with pytest.raises(LandscapeError, match="normalization"):
        random_direction(bn_model, normalization="bogus")


def test_orthogonalize(bn_model):
    d1, d2 = random_directions(bn_model, 2, seed=0)
    o = orthogonalize(d2, d1)
    assert abs(dot(o, d1)) < 1e-6 * direction_norm(o) * direction_norm(d1)
    assert abs(dot(d2, d1)) > abs(dot(o, d1))
    # d2 = o + c d1: the removed part is parallel to d1
    c = dot(d2, d1) / dot(d1, d1)
    for n in d1:
        torch.testing.assert_close(o[n] + c * d1[n], d2[n], rtol=1e-5, atol=1e-6)


def test_interpolation_direction_reaches_other_model():
    m0, m1 = build_model("mlp", "digits", seed=0), build_model("mlp", "digits", seed=1)
    d = interpolation_direction(m0, {f"module.{k}": v for k, v in m1.state_dict().items()})
    for n, p in m0.named_parameters():
        torch.testing.assert_close(p.detach() + d[n], dict(m1.named_parameters())[n].detach())
    with pytest.raises(LandscapeError):
        interpolation_direction(m0, build_model("cnn-small", "digits", seed=0))


def test_pca_directions_span_a_planar_trajectory():
    final = build_model("mlp", "digits", seed=0)
    u, v = random_directions(final, 2, normalization="none", include_bn=True, seed=1)
    theta = {n: p.detach().clone() for n, p in final.named_parameters()}
    # theta_i = theta_final + a_i u + b_i v: the top-2 components must span {u, v}
    traj = [{n: theta[n] + a * u[n] + b * v[n] for n in theta} for a, b in
            [(3, 0.1), (2, 0.5), (1.5, -0.3), (0.5, 0.2), (0.2, 0.0)]]
    res = pca_directions(traj, final, k=2)
    assert len(res) == 2 and len(res.meta["coords"]) == 5
    assert abs(sum(res.meta["explained_variance_ratio"]) - 1.0) < 1e-6
    for c in res:
        assert abs(direction_norm(c) - 1.0) < 1e-5
        # c lies in span{u, v}: the residual after projecting on an orthonormal basis of the span is ~0
        e1 = {n: u[n] / direction_norm(u) for n in u}
        w = orthogonalize(v, e1)
        e2 = {n: w[n] / direction_norm(w) for n in w}
        r = {n: c[n] - dot(c, e1) * e1[n] - dot(c, e2) * e2[n] for n in c}
        assert direction_norm(r) < 1e-4
    assert abs(dot(res[0], res[1])) < 1e-5
    with pytest.raises(LandscapeError, match="at least 3"):
        pca_directions(traj[:2], final, k=2)


def test_eigen_directions_are_hessian_eigenvectors():
    from torch import nn
    from landscape import load_dataset
    from landscape.analysis.directions import eigen_directions
    from landscape.analysis.hessian import HessianOperator
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10)).double().eval()
    x, y = load_dataset("digits", "test").tensors(40)
    x = x.double()
    for loss in ("clean", "adversarial"):
        ds = eigen_directions(model, (x, y), loss, attack=AttackSpec(eps=0.1, steps=2), k=2, tol=1e-6, seed=0)
        assert ds.meta["kind"] == "eigen" and len(ds) == 2
        lam = ds.meta["eigenvalues"]
        assert lam[0] >= lam[1] > 0
        op = HessianOperator(model, (x, y), loss=loss, attack=AttackSpec(eps=0.1, steps=2), seed=0)
        names = [n for n, _ in model.named_parameters()]
        for d, l in zip(ds, lam):
            v = torch.cat([d[n].reshape(-1) for n in names])
            assert abs(v.norm().item() - 1) < 1e-8
            assert v[v.abs().argmax()] > 0                                   # sign fixed
            hv = op.matvec(v)
            assert (hv - l * v).norm() < 1e-4 * abs(l)
        assert abs(dot(ds[0], ds[1])) < 1e-6


def test_normalization_is_the_one_keyword_and_the_old_norm_is_gone(bn_model):
    new = random_directions(bn_model, 2, normalization="layer", seed=4)
    one = random_direction(bn_model, normalization="layer", seed=4)
    assert all(torch.equal(one[n], new[0][n]) for n in one)
    assert new.meta["normalization"] == "layer" and "norm" not in new.meta
    # "filter" differs from "layer" (else the equality above could not tell the keyword was ignored)
    assert not torch.equal(random_direction(bn_model, seed=4)["0.weight"], one["0.weight"])
    with pytest.raises(TypeError, match="norm"):               # removed with the deprecation shims (issue 32)
        random_directions(bn_model, 2, norm="layer", seed=4)


def test_current_meta_reads_the_old_norm_key():
    assert current_meta({"kind": "random", "norm": "layer"}) == {"kind": "random", "normalization": "layer"}
    assert current_meta({"kind": "eigen", "k": 2}) == {"kind": "eigen", "k": 2}
