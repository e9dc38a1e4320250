import math

import pytest
import torch
import torch.nn.functional as F

from landscape import build_model, load_dataset
from landscape.errors import ConfigError
from landscape.training import TrainConfig, lam_schedule
from landscape.training.objectives import Step, trades, trades_loss
from landscape.training.trainer import learning_rate


@pytest.mark.parametrize("kind", ["linear", "cosine", "step"])
@pytest.mark.parametrize("lam0,ramp", [(0.0, 0.4), (0.3, 0.5), (0.1, 1.0)])
def test_schedule_hits_lam0_at_start_and_one_at_end_of_ramp(kind, lam0, ramp):
    total = 1000
    assert lam_schedule(0, total, lam0, ramp, kind) == pytest.approx(lam0)
    end = math.ceil(ramp * total)
    assert lam_schedule(end, total, lam0, ramp, kind) == 1.0
    if end < total:
        assert lam_schedule(total - 1, total, lam0, ramp, kind) == 1.0
    values = [lam_schedule(t, total, lam0, ramp, kind) for t in range(total)]
    assert all(b >= a for a, b in zip(values, values[1:]))          # non-decreasing
    assert all(lam0 <= v <= 1 for v in values)
    assert lam_schedule(end - 1, total, lam0, ramp, kind) < 1.0


def test_schedule_shapes():
    assert lam_schedule(200, 1000, 0.0, 0.4, "linear") == pytest.approx(0.5)
    assert lam_schedule(200, 1000, 0.0, 0.4, "cosine") == pytest.approx(0.5)
    assert lam_schedule(100, 1000, 0.0, 0.4, "cosine") < lam_schedule(100, 1000, 0.0, 0.4, "linear")
    assert lam_schedule(150, 1000, 0.0, 0.4, "step") == pytest.approx(0.25)
    assert lam_schedule(0, 1000, 0.2, 0.0, "linear") == 1.0  # no ramp: plain AT from the start


def test_schedule_rejects_bad_values():
    with pytest.raises(ConfigError):
        lam_schedule(0, 10, kind="exponential")
    with pytest.raises(ConfigError):
        lam_schedule(0, 10, lam0=1.5)


def test_trades_loss_equals_its_formula():
    model = build_model("cnn-small", "digits", seed=1)
    x, y = load_dataset("digits", "test").tensors(32)
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    beta = 6.0
    out = trades_loss(model, x, x_adv, y, beta)
    p_clean = model(x).softmax(1)
    p_adv = model(x_adv).softmax(1)
    kl = (p_clean * (p_clean.log() - p_adv.log())).sum(1).mean()
    expected = F.cross_entropy(model(x), y) + beta * kl
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def reference_trades_attack(model, x, eps, step_size, steps, noise):
    """Zhang et al.'s trades.py (Linf branch), transcribed: start at x + 0.001 * noise with NO clamp, then
    sign steps on KL(f(x) || f(x_adv)), each followed by the eps-ball and [0, 1] clamps. In eval mode."""
    model.eval()
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    x_adv = x.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        loss_kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return x_adv.detach()


@pytest.fixture(scope="module")
def trades_setup():
    """A fixed batch for the TRADES checks: 64 digits and a cnn-small fitted to them (so that the KL term
    is of order 1, not 1e-6 as at initialization)."""
    x, y = load_dataset("digits", "train").tensors(64)
    model = build_model("cnn-small", "digits", seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_trades_attack_matches_the_reference_code(trades_setup):
    """The start x + 0.001 N(0, I) is not clamped into [0, 1] (digits has many pixels at exactly 0)."""
    from landscape.attacks import trades_attack
    model, x, _ = trades_setup
    eps, alpha, steps = 0.1, 0.01, 3
    ours = trades_attack(model, x, eps, alpha, steps, generator=torch.Generator().manual_seed(5))
    ref = reference_trades_attack(model, x, eps, alpha, steps, torch.randn(x.shape, generator=torch.Generator().manual_seed(5)))
    assert (ours - ref).abs().max().item() <= 1e-6


def test_trades_objective_equals_an_independent_computation(trades_setup):
    """The full TRADES objective: CE(f(x), y) + beta * KL(f(x) || f(x_adv)) / n at the reference x_adv."""
    model, x, y = trades_setup
    beta, s = 6.0, Step(eps=0.2, lam=1, steps=5, step_size=0.05, beta=6.0)
    res = trades(model, x, y, s, torch.Generator().manual_seed(0))
    x_adv = reference_trades_attack(model, x, s.eps, s.step_size, s.steps,
                                    torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    logits, logits_adv = model(x), model(x_adv)
    p, log_p, log_q = logits.softmax(1), logits.log_softmax(1), logits_adv.log_softmax(1)
    expected = F.cross_entropy(logits, y) + beta * (p * (log_p - log_q)).sum(1).mean()
    assert beta * (p * (log_p - log_q)).sum(1).mean().item() > 0.1          # the KL term matters here
    assert res.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(res.logits, logits)


def test_learning_rate_schedules():
    c = TrainConfig(lr=0.1).resolved()
    assert learning_rate(c, 0, 100) == 0.1 and learning_rate(c, 50, 100) == pytest.approx(0.01)
    assert learning_rate(c, 80, 100) == pytest.approx(0.001)
    c.lr_schedule = "cosine"
    assert learning_rate(c, 50, 100) == pytest.approx(0.05)


def test_config_defaults_and_validation():
    c = TrainConfig().resolved()
    assert (c.method, c.dataset, c.model, c.eps) == ("p-sat", "digits", "cnn-small", 0.1)
    assert c.step_size == pytest.approx(0.025)
    with pytest.raises(ConfigError, match="^--method: 'madry' must be one of standard, at"):
        TrainConfig(method="madry").resolved()
    with pytest.raises(ConfigError, match="eps"):
        TrainConfig(eps=1.2).resolved()
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0).resolved()


def test_models_registry():
    from landscape.errors import ModelError
    x = torch.rand(2, 1, 28, 28)
    for name in ("mlp", "cnn-small", "cnn-small-bn", "mnist-cnn"):
        assert build_model(name, "fashion-mnist")(x).shape == (2, 10)
    assert build_model("preact-resnet18", "cifar10")(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("tv:resnet18", "cifar100")(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    # cnn-small's two conv layers have 32 and 64 channels
    convs = [m for m in build_model("cnn-small", "fashion-mnist").modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64]
    # normalization lives inside the model
    from landscape.models import Normalize
    assert any(isinstance(m, Normalize) for m in build_model("preact-resnet18", "cifar10").modules())
    a = build_model("cnn-small", "digits", seed=3).state_dict()
    b = build_model("cnn-small", "digits", seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelError, match="unknown model"):
        build_model("resnet-9000", "digits")
    with pytest.raises(ModelError):
        build_model("mnist-cnn", "digits")      # 8x8 inputs are too small for its 8x8 stride-2 conv
    with pytest.raises(ModelError):
        build_model("tv:not_a_model", "cifar10")


def test_hsat_calibration_ratio_and_affine_on_a_known_sharpness_curve(monkeypatch):
    """lambda_max(eps) = 10 + 5 eps/eps_max: the ratio psi_H never drops below 2/3, so lam = 0.5 gives
    eps_t = 0; the affine psi_H is eps/eps_max, so lam = 0.5 gives eps_max/2 (to bisection precision)."""
    from types import SimpleNamespace
    from landscape import AttackSpec
    from landscape.training.hsat import HSatCalibrator

    x, y = torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    got = {}
    for normalize in ("ratio", "affine"):
        cal = HSatCalibrator(x, y, AttackSpec(eps=0.3, steps=2, step_size=0.1), every=None, iters=4, bisect=8, seed=0,
                             normalize=normalize)
        monkeypatch.setattr(cal, "_sharpness", lambda model, eps, v0: SimpleNamespace(
            value=10 + 5 * eps / 0.3, hvps=1, vector=None))
        got[normalize] = cal.calibrate(None, 0.5)
    assert got["ratio"]["eps_t"] == 0.0
    assert abs(got["affine"]["eps_t"] - 0.15) <= 0.3 / 2 ** 8
    assert got["affine"]["evaluations"][1] == (0.0, 10.0)  # the clean floor is logged


def test_epoch_state_starts_from_the_epochs_generators_and_round_trips():
    """``EpochState.start``: the attack and augmentation generators of (seed, purpose, epoch), zero sums;
    ``to_dict`` -> ``torch.save`` (weights only, as in last.pt) -> ``from_dict`` restores the batches done, the
    sums and the generators' positions (the restored state draws what the original draws next)."""
    import io
    from landscape.training.trainer import _ATTACK, _AUGMENT, EpochState, derived_generator

    cpu = torch.device("cpu")
    st = EpochState.start(seed=5, epoch=2, device=cpu)
    assert (st.epoch, st.batch, st.seen, st.seconds, st.lam, st.eps_t, st.extra) == (2, 0, 0, 0.0, 1.0, None, {})
    assert st.loss_sum.item() == 0.0 and st.loss_sum.dtype == torch.float32
    assert st.correct.item() == 0 and st.correct.dtype == torch.long
    attack_draw = torch.rand(4, generator=st.g_attack)
    assert torch.equal(attack_draw, torch.rand(4, generator=derived_generator(5, _ATTACK, 2)))
    aug_draw = torch.rand(4, generator=st.g_aug)
    assert torch.equal(aug_draw, torch.rand(4, generator=derived_generator(5, _AUGMENT, 2)))
    assert not torch.equal(attack_draw, aug_draw)                               # two streams
    assert not torch.equal(attack_draw, torch.rand(4, generator=EpochState.start(5, 3, cpu).g_attack))  # per epoch
    assert not torch.equal(attack_draw, torch.rand(4, generator=EpochState.start(6, 2, cpu).g_attack))  # per seed

    # half an epoch: 3 batches of 32, 70 correct, a curriculum step, an H-SAT record
    st.batch, st.seen, st.seconds, st.lam, st.eps_t = 3, 96, 1.25, 0.4, 0.04
    st.loss_sum += 123.5
    st.correct += 70
    st.extra["hsat_eps"] = 0.05
    buf = io.BytesIO()
    torch.save(st.to_dict(), buf)
    buf.seek(0)
    back = EpochState.from_dict(torch.load(buf, weights_only=True), cpu)
    assert (back.epoch, back.batch, back.seen, back.seconds, back.lam, back.eps_t) == (2, 3, 96, 1.25, 0.4, 0.04)
    assert back.extra == {"hsat_eps": 0.05} and back.extra is not st.extra
    assert back.loss_sum.item() == 123.5 and back.loss_sum.dtype == torch.float32
    assert back.correct.item() == 70 and back.correct.dtype == torch.long
    for ours, theirs in ((st.g_attack, back.g_attack), (st.g_aug, back.g_aug)):
        assert torch.equal(torch.rand(5, generator=theirs), torch.rand(5, generator=ours))
        assert torch.equal(torch.randint(0, 2, (8,), generator=theirs), torch.randint(0, 2, (8,), generator=ours))
    none = EpochState.from_dict(EpochState.start(0, 0, cpu).to_dict(), cpu)
    assert none.eps_t is None and none.batch == 0 and none.seen == 0
