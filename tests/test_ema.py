"""landscape.training.ema: the EMA of the weights (warm-up decay, buffers copied), against a hand computation."""
import math

import pytest
import torch
from torch import nn

from landscape.errors import ConfigError
from landscape.training.ema import DECAY, ema_model, update_ema


def _net(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):     # the global generator is left as it was
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()


def _weights(seed: int, like: nn.Module) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in like.parameters()]


def _set(model: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values):
            p.copy_(v)


def _run(decay: float, steps: int):
    """``steps`` updates of an EMA toward a sequence of random weights; returns (ema, the weights, the model)."""
    model = _net()
    ema = ema_model(model, decay)
    seq = [_weights(100 + s, model) for s in range(steps)]
    for w in seq:
        _set(model, w)
        update_ema(ema, model)
    return ema, seq, model


def _hand(decay: float, seq: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The first update takes the weights; update t (t = 1, 2, ...): ema = d_t ema + (1 - d_t) w with
    d_t = min(decay, (1 + t) / (10 + t))."""
    ema = [w.clone() for w in seq[0]]
    for t, w in enumerate(seq[1:], start=1):
        d = min(decay, (1 + t) / (10 + t))
        ema = [d * e + (1 - d) * x for e, x in zip(ema, w)]
    return ema


def test_the_first_update_takes_the_weights_not_the_init():
    model = _net()
    init = [p.detach().clone() for p in model.parameters()]
    ema = ema_model(model, 0.999)
    for p, q in zip(ema.module.parameters(), init):       # a deep copy of the model to start
        assert torch.equal(p, q)
    w = _weights(7, model)
    _set(model, w)
    for p, q in zip(ema.module.parameters(), init):       # the model moved, the EMA did not
        assert torch.equal(p, q)
    update_ema(ema, model)
    for p, q in zip(ema.module.parameters(), w):
        assert torch.equal(p, q)
    assert int(ema.n_averaged) == 1


def test_a_small_decay_is_the_plain_ema():
    """decay 0.05 is below every warm-up value ((1 + t) / (10 + t) >= 0.1): ema = d ema + (1 - d) w throughout."""
    d = 0.05
    ema, seq, _ = _run(d, 4)
    expected = [w.clone() for w in seq[0]]
    for w in seq[1:]:
        expected = [d * e + (1 - d) * x for e, x in zip(expected, w)]
    for p, e in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-12)
    # one number by hand: the first weight of the first layer
    w = [s[0].flatten()[0].item() for s in seq]
    by_hand = ((w[0] * d + (1 - d) * w[1]) * d + (1 - d) * w[2]) * d + (1 - d) * w[3]
    assert next(ema.module.parameters()).flatten()[0].item() == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_the_warm_up_decay(decay):
    ema, seq, model = _run(decay, 12)
    for p, e in zip(ema.module.parameters(), _hand(decay, seq)):
        torch.testing.assert_close(p, e, rtol=1e-12, atol=1e-12)
    assert int(ema.n_averaged) == 12
    # not the plain EMA with the full decay (which would stay near the first weights)
    plain = [w.clone() for w in seq[0]]
    for w in seq[1:]:
        plain = [decay * e + (1 - decay) * x for e, x in zip(plain, w)]
    assert not torch.allclose(next(ema.module.parameters()), plain[0])


def test_the_decay_reaches_its_value_after_the_warm_up():
    """decay 0.5: (1 + t) / (10 + t) reaches 0.5 at t = 8; from then on each update halves the distance."""
    ema, seq, model = _run(0.5, 10)
    before = [p.detach().clone() for p in ema.module.parameters()]
    w = _weights(999, model)
    _set(model, w)
    update_ema(ema, model)
    for p, b, x in zip(ema.module.parameters(), before, w):
        torch.testing.assert_close(p, 0.5 * b + 0.5 * x, rtol=1e-12, atol=1e-12)


def test_buffers_are_copied_from_the_model_not_averaged():
    model = _net()
    ema = ema_model(model, 0.9)
    for step in range(3):
        with torch.no_grad():
            model[1].running_mean.fill_(float(step + 1))
            model[1].running_var.fill_(10.0 * (step + 1))
        model[1].num_batches_tracked.fill_(5 * (step + 1))
        _set(model, _weights(step, model))
        update_ema(ema, model)
        bn = ema.module[1]
        assert torch.equal(bn.running_mean, torch.full((4,), float(step + 1), dtype=torch.float64))
        assert torch.equal(bn.running_var, torch.full((4,), 10.0 * (step + 1), dtype=torch.float64))
        assert int(bn.num_batches_tracked) == 5 * (step + 1)
    # and they are copies: changing the model's buffers afterwards leaves the EMA's alone
    with torch.no_grad():
        model[1].running_mean.fill_(-1.0)
    assert torch.equal(ema.module[1].running_mean, torch.full((4,), 3.0, dtype=torch.float64))


def test_a_restored_ema_goes_on_as_the_original():
    """The state_dict (weights and the update count) is what a resumed run's EMA continues from."""
    ema, seq, model = _run(0.9, 5)
    again = ema_model(_net(seed=1), 0.9)
    again.load_state_dict(ema.state_dict())
    assert int(again.n_averaged) == 5
    w = _weights(55, model)
    _set(model, w)
    update_ema(ema, model)
    update_ema(again, model)
    for p, q in zip(ema.module.parameters(), again.module.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("decay", [0, 0.0, 1, 1.0, -0.5, 1.5])
def test_a_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ConfigError) as e:
        ema_model(_net(), decay)
    assert str(e.value) == f"--ema: {decay!r} must be in (0, 1)"
    assert DECAY.check(decay) == "must be in (0, 1)"


@pytest.mark.parametrize("decay,reason", [(math.nan, "must be a finite number"), (math.inf, "must be a finite number"),
                                          ("0.9", "must be a number"), (True, "must be a number")])
def test_a_decay_that_is_no_number_is_refused(decay, reason):
    with pytest.raises(ConfigError, match=f"^--ema: .* {reason}$"):
        ema_model(_net(), decay)


@pytest.mark.parametrize("decay", [1e-6, 0.5, 0.999999])
def test_decays_inside_are_accepted(decay):
    assert DECAY.check(decay) is None
    assert int(ema_model(_net(), decay).n_averaged) == 0
