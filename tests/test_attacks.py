import pytest
import torch
import torch.nn.functional as F

from landscape import attacks, build_model, load_dataset
from landscape.errors import ConfigError


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("cnn-small", "digits", seed=0)
    x, y = load_dataset("digits", "train").tensors(256)
    # a few quick steps of training so that the model is not trivial
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    assert (model(x).argmax(1) == y).float().mean() > 0.9
    return model, x[:128], y[:128]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_pgd_stays_in_ball_and_box_and_raises_loss(setup, norm, eps):
    model, x, y = setup
    x_adv = attacks.pgd(model, x, y, eps, steps=10, norm=norm, generator=gen())
    d = (x_adv - x).flatten(1)
    if norm == "linf":
        assert d.abs().max() <= eps + 1e-6
    else:
        assert d.norm(dim=1).max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.1
        rand = attacks.random_start(x, eps, norm, gen())
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x + rand), y)


def test_pgd_restores_mode_and_leaves_no_parameter_gradients(setup):
    model, x, y = setup
    model.train()
    attacks.pgd(model, x, y, 0.1, generator=gen())
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    attacks.pgd_early_stop(model, x, y, 0.1, lam=0.5, generator=gen())
    attacks.trades_attack(model, x, 0.1, generator=gen())
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_pgd_uses_eval_mode_for_batchnorm():
    model = build_model("cnn-small-bn", "digits", seed=0).train()
    x, y = load_dataset("digits", "test").tensors(64)
    before = [b.clone() for b in model.buffers()]
    attacks.pgd(model, x, y, 0.1, steps=3, generator=gen())
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_pgd_is_seeded(setup):
    model, x, y = setup
    a = attacks.pgd(model, x, y, 0.1, generator=gen(3))
    b = attacks.pgd(model, x, y, 0.1, generator=gen(3))
    c = attacks.pgd(model, x, y, 0.1, generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_restarts_keep_each_samples_worst_case(setup):
    model, x, y = setup
    one = attacks.pgd(model, x, y, 0.1, steps=3, generator=gen(0))
    many = attacks.pgd(model, x, y, 0.1, steps=3, restarts=4, generator=gen(0))
    with torch.no_grad():
        wrong1 = model(one).argmax(1) != y
        wrongk = model(many).argmax(1) != y
        # the first restart is the single run: restarts can only add misclassifications
        assert (wrongk | ~wrong1).all() and wrongk.sum() >= wrong1.sum()
        lk = F.cross_entropy(model(many), y, reduction="none")
        l1 = F.cross_entropy(model(one), y, reduction="none")
        same = wrongk == wrong1
        assert (lk[same] >= l1[same] - 1e-6).all()


def test_early_stop_with_lambda_one_is_exactly_pgd(setup):
    model, x, y = setup
    a = attacks.pgd(model, x, y, 0.1, 0.025, 10, generator=gen(7))
    b = attacks.pgd_early_stop(model, x, y, 0.1, 1.0, 0.025, 10, generator=gen(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("lam", [0.2, 0.45, 0.6])
def test_early_stop_respects_the_difficulty_constraint(setup, lam):
    model, x, y = setup
    x_adv = attacks.pgd_early_stop(model, x, y, 0.2, lam, steps=10, generator=gen(1))
    with torch.no_grad():
        psi_adv = attacks.margin_difficulty(model(x_adv), y)
        psi_clean = attacks.margin_difficulty(model(x), y)
    returned_clean = (x_adv == x).flatten(1).all(1)
    # every sample satisfies psi <= lam, except those returned unperturbed (delta = 0) by rule
    assert (psi_adv[~returned_clean] <= lam + 1e-6).all()
    assert torch.equal(psi_adv[returned_clean], psi_clean[returned_clean])
    # samples whose clean point is feasible always come back feasible
    assert (psi_adv[psi_clean <= lam] <= lam + 1e-6).all()
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # and the attack does work: some samples are pushed towards the bound
    assert psi_adv.mean() > psi_clean.mean()


def test_early_stop_freezes_each_sample_at_its_last_feasible_iterate():
    """A linear 2-class model with y = 0: every CE gradient has the sign of w, so PGD's k-th iterate is
    delta_k = k * alpha * sign(w) and psi_P(x + delta_k) = sigmoid(w . (x + delta_k)). The expected output is
    computed step by step here; samples freeze at k = 6 (never), 4, 1, and 0 (infeasible start: x itself)."""
    w = torch.tensor([1.0, -2.0, 0.5, 1.5])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(4), w]))
    b = torch.tensor([-0.2, -0.1, -0.02, 0.2])                 # margins w.x = 0.5 + 5 b = -0.5, 0, 0.4, 1.5
    x = (0.5 + b.view(-1, 1) * w.sign()).view(4, 1, 2, 2)
    y = torch.zeros(4, dtype=torch.long)
    eps, alpha, steps = 0.3, 0.03, 6
    lam = float(torch.sigmoid(torch.tensor(0.62)))            # each step adds 0.15 to the margin
    expected = []
    for i in range(4):
        kept = None
        for k in range(steps + 1):
            delta = (k * alpha * w.sign()).clamp(-eps, eps).view(1, 2, 2)
            psi = torch.sigmoid((w * (x[i] + delta).flatten()).sum().double())
            if psi > lam:
                break
            kept = delta
        expected.append(x[i] if kept is None else x[i] + kept)
    expected = torch.stack(expected)
    assert [round(((e - x0).abs().max() / alpha).item()) for e, x0 in zip(expected, x)] == [6, 4, 1, 0]
    got = attacks.pgd_early_stop(model, x, y, eps, lam, alpha, steps, random_init=False)
    assert torch.allclose(got, expected, atol=1e-6)


def test_early_stop_stops_more_with_smaller_lambda(setup):
    model, x, y = setup
    with torch.no_grad():
        psis = [attacks.margin_difficulty(model(attacks.pgd_early_stop(model, x, y, 0.2, lam, generator=gen(1))), y).mean()
                for lam in (0.3, 0.6, 1.0)]
    assert psis[0] < psis[1] < psis[2]


def test_margin_difficulty_formula():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    y = torch.tensor([0, 0])
    p = logits.softmax(1)
    expected = torch.stack([(p[0, 1] - p[0, 0] + 1) / 2, (p[1, 1] - p[1, 0] + 1) / 2])
    assert torch.allclose(attacks.margin_difficulty(logits, y), expected)
    assert attacks.margin_difficulty(logits, y)[1] > 0.5 > attacks.margin_difficulty(logits, y)[0]


def test_fgsm_is_one_signed_step(setup):
    model, x, y = setup
    x_adv = attacks.fgsm(model, x, y, 0.1)
    d = (x_adv - x)
    inside = (x_adv > 0) & (x_adv < 1)
    assert torch.allclose(d[inside].abs(), torch.full_like(d[inside], 0.1), atol=1e-6)


def test_trades_attack_raises_kl(setup):
    model, x, y = setup
    x_adv = attacks.trades_attack(model, x, 0.1, steps=10, generator=gen())
    with torch.no_grad():
        p = model(x).softmax(1)
        kl = F.kl_div(model(x_adv).log_softmax(1), p, reduction="batchmean")
    assert kl > 1e-2 and (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_bad_eps_is_refused(setup):
    model, x, y = setup
    for eps in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError):
            attacks.pgd(model, x, y, eps)
    with pytest.raises(ConfigError):
        attacks.pgd(model, x, y, 0.1, norm="l7")


def test_fp16_safe_attack_moves_confident_samples_that_fp16_would_freeze():
    """Under fp16 autocast the input gradient of a confidently classified sample (1 - p_y ~ 1e-9) flushes to
    zero and PGD never moves it; with fp16_safe (what training under --amp fp16 uses) every sample's
    gradient has float32's signs and every sample moves."""
    import torch.nn.functional as F
    from landscape.attacks import _input_grad, _logits, pgd
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    with torch.no_grad():
        net[2].weight.mul_(300)
    x = torch.rand(6, 10)
    y = net(x).argmax(1)
    y[0] = (y[0] + 1) % 3  # one misclassified sample: a large gradient, which must not overflow either
    d = torch.zeros_like(x, requires_grad=True)
    g32 = torch.autograd.grad(F.cross_entropy(net(x + d), y, reduction="sum"), d)[0]
    assert (g32 != 0).any(1).all()
    moved = {}
    for safe in (False, True):
        d = torch.zeros_like(x, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.float16):
            g = _input_grad(F.cross_entropy(_logits(net, x + d, safe), y, reduction="sum"), d)
            moved[safe] = (pgd(net, x, y, 0.1, steps=3, random_init=False, fp16_safe=safe) != x).any(1)
        if safe:
            assert torch.equal(g.sign(), g32.sign())
        else:
            assert not (g != 0).any(1).all()   # the failure fp16_safe exists for
    assert moved[True].all() and not moved[False].all()


def test_input_gradient_is_the_closed_form_of_a_linear_softmax_model():
    """grad_x sum CE(Wx + c, y) = W^T (softmax(Wx + c) - onehot(y)) per sample; a model whose output does not
    depend on x has an all-zero gradient (dead), and a non-finite one is dead too."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3).double()
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    grad, logits, dead = attacks.input_gradient(lin, x, y)
    p = (x @ lin.weight.T + lin.bias).softmax(1)
    expected = (p - F.one_hot(y, 3).double()) @ lin.weight.detach()
    assert torch.allclose(grad, expected, atol=1e-12) and not dead.any() and not logits.requires_grad

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

        def forward(self, x):
            return (x * 0).sum(1, keepdim=True) + self.b * torch.where(x[:, :1] > 0, 1.0, float("inf"))
    grad, _, dead = attacks.input_gradient(Constant(), x, y)
    finite = torch.isfinite(grad).flatten(1).all(1)
    assert finite.any() and (~finite).any()          # both kinds: all zero, and not finite
    assert dead.all()
