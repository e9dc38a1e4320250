"""Flatness measures (landscape/analysis/flatness.py) against closed forms on a model whose loss is an exact
quadratic in its weights, and against loss_surface on a small network."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape.analysis import loss_surface, random_directions
from landscape.analysis.flatness import average_loss_increase, worst_case_loss_increase
from landscape.attack_spec import AttackSpec
from landscape.errors import ConfigError


class Quadratic(nn.Module):
    """Output = L(W) = 1/2 sum_f (w_f - c_f)^T A_f (w_f - c_f) for every sample; W has F filters (rows) of m.

    With ``criterion = sum of outputs`` the mean loss over samples is exactly L(W): Hessian block-diagonal
    over filters, block A_f."""

    def __init__(self, W0: torch.Tensor, c: torch.Tensor, A: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(W0.clone())
        self.register_buffer("c", c)
        self.register_buffer("A", A)

    def forward(self, x):
        d = self.w - self.c
        q = 0.5 * torch.einsum("fi,fij,fj->", d, self.A, d)
        return q.expand(len(x), 1)


def criterion(out, y):
    return out.sum()


def _problem(F=3, m=4, seed=0, at_minimum=True):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(F, m, generator=g, dtype=torch.float64)
    blocks = []
    for f in range(F):  # well-separated eigenvalues: the ascent's power iteration converges fast
        q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
        eig = torch.tensor([4.0 + 4 * f, 1.5, 0.7, 0.2][:m], dtype=torch.float64)
        blocks.append(q @ torch.diag(eig) @ q.T)
    A = torch.stack(blocks)
    W0 = c if at_minimum else c + 0.3 * torch.randn(F, m, generator=g, dtype=torch.float64)
    model = Quadratic(W0, c, A).double()
    data = (torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.long))
    return model, data, A


def _quad(A, d):  # d^T H d for a direction of the Quadratic (block diagonal H)
    return float(torch.einsum("fi,fij,fj->", d, A, d))


@pytest.mark.parametrize("normalization", ["filter", "layer", "none"])
def test_average_is_exactly_r2_over_2_dHd_for_a_quadratic(normalization):
    model, data, A = _problem(at_minimum=False)  # the +- pair cancels the gradient term away from the minimum
    radii = [0.05, 0.2]
    res = average_loss_increase(model, data, radii, directions=5, normalization=normalization, seed=3,
                            criterion=criterion)
    dirs = random_directions(model, 5, normalization, False, 3)
    for j, r in enumerate(radii):
        want = [0.5 * r * r * _quad(A, d["w"]) for d in dirs]
        np.testing.assert_allclose(res.per_direction[j], want, rtol=1e-9)
        assert res.increase[j] == pytest.approx(np.mean(want), rel=1e-9)
    d = res.to_dict()
    assert d["kind"] == "flatness" and d["settings"]["normalization"] == normalization and d["seconds"] >= 0
    assert d["settings"]["forwards"] == 1 + 2 * 5 * 2


def test_average_expectation_filter_normalized():
    """E[d^T H d] over filter-normalized Gaussian directions: sum_f ||w_f||^2 tr(A_f) / m (each d_f is uniform on
    the sphere of radius ||w_f||); the average over many directions lands within a few standard errors."""
    model, data, A = _problem(F=3, m=4)
    r, R = 0.1, 400
    res = average_loss_increase(model, data, [r], directions=R, seed=1, criterion=criterion)
    w = model.w.detach()
    expect = 0.5 * r * r * float(sum(w[f].norm() ** 2 * torch.trace(A[f]) / 4 for f in range(3)))
    assert abs(res.increase[0] - expect) < 4 * res.stderr[0], (res.increase[0], expect, res.stderr[0])
    # and with plain Gaussian directions: r^2 tr(H) / 2
    res = average_loss_increase(model, data, [r], directions=R, normalization="none", seed=1, criterion=criterion)
    expect = 0.5 * r * r * float(sum(torch.trace(A[f]) for f in range(3)))
    assert abs(res.increase[0] - expect) < 4 * res.stderr[0]


def test_worst_case_reaches_the_closed_form_filter_ball():
    """At the minimum of a filter-block-diagonal quadratic, max over ||delta_f|| <= r ||w_f|| of the increase is
    r^2/2 sum_f ||w_f||^2 lambda_max(A_f)."""
    model, data, A = _problem()
    radii = [0.01, 0.1]
    res = worst_case_loss_increase(model, data, radii, steps=25, seed=0, criterion=criterion)
    w = model.w.detach()
    lam = torch.linalg.eigvalsh(A)[:, -1]
    for j, r in enumerate(radii):
        expect = 0.5 * r * r * float(sum(w[f].norm() ** 2 * lam[f] for f in range(3)))
        assert res.increase[j] == pytest.approx(expect, rel=1e-4)
        assert res.increase[j] <= expect * (1 + 1e-9)  # a point of the ball: never above the maximum
    assert res.to_dict()["settings"]["backwards"] == 2 * 26


def test_worst_case_euclidean_ball_is_r2_lambda_max_over_2_and_bounds_the_average():
    model, data, A = _problem()
    r = 0.3
    res = worst_case_loss_increase(model, data, [r], steps=40, step_fraction=10.0, normalization="none", seed=0,
                               criterion=criterion)
    lam_max = float(torch.linalg.eigvalsh(A).max())
    assert res.increase[0] == pytest.approx(0.5 * r * r * lam_max, rel=1e-4)
    # the average over random points of the same ball's boundary is below the worst case
    avg = average_loss_increase(model, data, [r / math.sqrt(12)], directions=20, normalization="none", seed=0,
                            criterion=criterion)  # N(0, I) in 12 dims has norm ~ sqrt(12)
    assert max(avg.per_direction[0]) < res.increase[0]


def test_without_steps_the_worst_case_is_the_random_start():
    model, data, A = _problem(at_minimum=True)
    r = 0.1
    res = worst_case_loss_increase(model, data, [r], steps=0, seed=4, criterion=criterion)
    d = random_directions(model, 1, "filter", False, 4)[0]["w"]
    assert res.increase[0] == pytest.approx(0.5 * r * r * _quad(A, d), rel=1e-9)


def _net_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return model, (x, y)


def test_adversarial_average_matches_loss_surface_on_the_same_fixed_examples():
    """One direction: S_avg(r) = (L(r) + L(-r))/2 - L(0) of loss_surface along that direction, adversarial
    loss at fixed PGD examples made at theta with the same spec and seed."""
    model, data = _net_and_data()
    attack = AttackSpec(eps=0.1, steps=5)
    before = [p.detach().clone() for p in model.parameters()]
    r = 0.3
    res = average_loss_increase(model, data, [r], directions=1, loss="adversarial", attack=attack, seed=7)
    d = random_directions(model, 1, "filter", False, 7)
    surf = loss_surface(model, data, d[0], [-r, 0.0, r], loss="adversarial", adv_mode="fixed", attack=attack, seed=7)
    assert res.base_loss == pytest.approx(surf.loss[1], rel=1e-6)
    assert res.increase[0] == pytest.approx(0.5 * (surf.loss[0] + surf.loss[2]) - surf.loss[1], rel=1e-5, abs=1e-7)
    assert res.settings["attack"]["eps"] == 0.1 and res.settings["adv_mode"] == "fixed"
    worst = worst_case_loss_increase(model, data, [r], steps=3, loss="adversarial", attack=attack, seed=7)
    assert worst.base_loss == pytest.approx(res.base_loss, rel=1e-9)
    assert worst.increase[0] > 0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))  # weights untouched


def test_bad_settings_are_config_errors():
    model, data = _net_and_data()
    with pytest.raises(ConfigError):
        average_loss_increase(model, data, [0.1], loss="robust")
    with pytest.raises(ConfigError):
        average_loss_increase(model, data, [-0.1])
    with pytest.raises(ConfigError):
        worst_case_loss_increase(model, data, [0.1], loss="adversarial")  # no attack
    with pytest.raises(ConfigError):
        worst_case_loss_increase(model, data, [0.1], normalization="unit")
