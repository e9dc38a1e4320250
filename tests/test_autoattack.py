"""landscape-eval --autoattack through the installed pyautoattack, on a few samples (default suite)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape import load_dataset
from landscape.evaluate import _adversarial_inputs, autoattack_accuracy, evaluate

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


def test_autoattack_standard_runs_and_is_sane(linear_digits):
    """The standard ensemble end to end (it crashed on pyautoattack 0.2's (x_adv, y_adv) return)."""
    x, y = load_dataset("digits", "test").tensors(16)
    res = evaluate(linear_digits, x, y, 0.3, steps=20, autoattack=True)
    assert res.autoattack_acc is not None
    assert res.autoattack_acc <= res.clean_acc and res.autoattack_acc <= res.pgd_acc + 1 / 16


def test_autoattack_apgd_is_at_least_as_strong_as_pgd(linear_digits):
    x, y = load_dataset("digits", "test").tensors(16)
    res = evaluate(linear_digits, x, y, 0.05, steps=20)
    aa = autoattack_accuracy(linear_digits, x, y, 0.05, attacks=("apgd-ce",))
    assert 0 < res.pgd_acc < res.clean_acc      # the budget leaves something for the comparison to show
    assert aa <= res.clean_acc and aa <= res.pgd_acc + 1 / 16


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
    res = evaluate(linear_digits, x, y, 0.05, steps=20, autoattack=True)
    assert 0 < res.autoattack_acc <= res.clean_acc and res.autoattack_acc <= res.pgd_acc + 1 / 16
