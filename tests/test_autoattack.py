"""landscape-eval --autoattack through the installed pyautoattack, on a few samples (default suite)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape import AttackSpec, load_dataset
from landscape.autoattack import adversarial_inputs as _adversarial_inputs, autoattack_accuracy
from landscape.evaluate import evaluate

pytest.importorskip("pyautoattack")


@pytest.fixture(scope="module")
def linear_digits():
    """A softmax regression on digits (about 95% test accuracy), trained in a fraction of a second."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = load_dataset("digits", "train").tensors(512)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def exact_linf_robust_accuracy(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    """The exact robust accuracy of a linear classifier under an Linf budget inside the [0, 1] box: for each
    other class j the margin (w_y - w_j) . (x + d) + b_y - b_j is smallest at a corner of the box (each
    coordinate of d at the end of its interval that lowers it); a sample is robust when every such minimum
    is positive."""
    w, b = linear.weight.detach().double(), linear.bias.detach().double()
    xf = x.flatten(1).double()
    lo, hi = (-xf).clamp(min=-eps), (1 - xf).clamp(max=eps)
    robust = 0
    for xi, yi, l, h in zip(xf, y, lo, hi):
        c = w[yi] - w                                        # (classes, inputs): w_y - w_j
        worst = c @ xi + (b[yi] - b) + torch.minimum(c * l, c * h).sum(1)
        worst[yi] = float("inf")
        robust += int(worst.min() > 0)
    return robust / len(y)


def test_autoattack_standard_runs_and_is_sane(linear_digits):
    """The standard ensemble end to end (it crashed on pyautoattack 0.2's (x_adv, y_adv) return)."""
    x, y = load_dataset("digits", "test").tensors(16)
    res = evaluate(linear_digits, x, y, AttackSpec(eps=0.1, steps=20), autoattack=True)
    exact = exact_linf_robust_accuracy(linear_digits[1], x, y, 0.1)
    assert 0 < exact < res.clean_acc             # the budget leaves something for the comparison to show
    # a linear model's robust accuracy is known exactly: AutoAttack must find it (no attack can go below)
    assert res.autoattack_acc == pytest.approx(exact, abs=1e-9)
    assert res.pgd_acc >= exact


def test_autoattack_apgd_is_at_least_as_strong_as_pgd(linear_digits):
    x, y = load_dataset("digits", "test").tensors(16)
    res = evaluate(linear_digits, x, y, AttackSpec(eps=0.05, steps=20))
    aa = autoattack_accuracy(linear_digits, x, y, 0.05, attacks=("apgd-ce",))
    exact = exact_linf_robust_accuracy(linear_digits[1], x, y, 0.05)
    assert 0 < exact < res.clean_acc            # the budget leaves something for the comparison to show
    assert aa == pytest.approx(exact, abs=1e-9) and res.pgd_acc >= aa


def test_adversarial_inputs_of_every_package_version():
    x = torch.rand(3, 1, 8, 8)
    assert _adversarial_inputs(x) is x                                  # autoattack / pyautoattack < 0.2
    assert _adversarial_inputs((x, torch.zeros(3, dtype=torch.long))) is x   # pyautoattack 0.2
    from landscape.errors import ConfigError
    with pytest.raises(ConfigError):
        _adversarial_inputs({"apgd-ce": x})


@pytest.mark.slow
def test_autoattack_standard_where_samples_survive(linear_digits):
    """The full ensemble (APGD-CE, APGD-T, FAB-T, Square) with survivors left for every member (~15 s)."""
    x, y = load_dataset("digits", "test").tensors(16)
    res = evaluate(linear_digits, x, y, AttackSpec(eps=0.05, steps=20), autoattack=True)
    assert 0 < res.autoattack_acc <= res.clean_acc and res.autoattack_acc <= res.pgd_acc + 1 / 16
