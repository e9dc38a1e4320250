"""HessianOperator against the exact Hessian (torch.autograd.functional.hessian) of tiny networks."""
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape import AttackSpec, load_dataset
from landscape.attack_spec import resolve_attack
from cases import tiny_mlp
from landscape.analysis import HessianOperator
from landscape.analysis.hessian import samples
from landscape.attacks import adversarial_examples
from landscape.errors import ConfigError, DataError

N = 32  # samples




@pytest.fixture(scope="module")
def data():
    x, y = load_dataset("digits", "test").tensors(N)
    return x.double(), y


def tiny_bn_cnn(seed=0):
    """conv 1->2 (3x3) + BatchNorm + tanh + 2x2 max pool + linear 32->10: 354 weights; running statistics set
    to values far from the batch statistics so that the two BN modes differ."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Tanh(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32, 10)).double()
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.3, -0.2]))
        net[1].running_var.copy_(torch.tensor([0.5, 2.0]))
        net[1].weight.copy_(torch.tensor([1.2, 0.8]))
        net[1].bias.copy_(torch.tensor([0.1, -0.1]))
    return net.eval()


def ref_bn_cnn(net, flat, x, batch_stats):
    """The tiny BN CNN written out by hand (no nn.Module machinery), a function of the flat weights."""
    shapes = [p.shape for p in net.parameters()]
    w = list(torch.split(flat, [s.numel() for s in shapes]))
    cw, cb, g, b, lw, lb = [t.view(s) for t, s in zip(w, shapes)]
    h = F.conv2d(x, cw, cb, padding=1)
    if batch_stats:
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
    else:
        mean, var = net[1].running_mean, net[1].running_var
    h = (h - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + net[1].eps)
    h = torch.tanh(h * g.view(1, -1, 1, 1) + b.view(1, -1, 1, 1))
    h = F.max_pool2d(h, 2).flatten(1)
    return F.linear(h, lw, lb)


def exact_hessian(op, logits_fn, x, y):
    """Hessian of the mean cross-entropy as a function of the operator's flat weights (n HVPs' worth)."""
    return torch.autograd.functional.hessian(lambda p: F.cross_entropy(logits_fn(p, x), y), op.param_vector(),
                                             vectorize=True)


@pytest.fixture(scope="module")
def bn_hessian(data):
    """Exact Hessians of the tiny BN CNN, by BN mode, computed once per module."""
    x, y = data
    net, cache = tiny_bn_cnn(), {}

    def get(bn):
        if bn not in cache:
            op = HessianOperator(net, (x, y), bn=bn)
            cache[bn] = exact_hessian(op, lambda p, xx: ref_bn_cnn(net, p, xx, bn == "batch"), x, y)
        return cache[bn]
    return get


def mlp_logits(op, net):
    return lambda p, x: torch.func.functional_call(net, op.unflatten(p), (x,))


def test_matvec_equals_exact_hessian_mlp(data):
    x, y = data
    net = tiny_mlp()
    op = HessianOperator(net, (x, y))
    assert op.num_params == 910 and op.shape == (910, 910)
    H = exact_hessian(op, mlp_logits(op, net), x, y)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.num_params, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert op.hvp_count == 3
    assert (op @ v).shape == v.shape and op.hvp_count == 4
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("bn", ["running", "batch"])
@pytest.mark.parametrize("method", ["double-backward", "fwd-over-rev"])
def test_matvec_equals_exact_hessian_batchnorm(data, bn_hessian, bn, method):
    x, y = data
    net = tiny_bn_cnn()
    op = HessianOperator(net, (x, y), bn=bn, hvp_method=method)
    assert op.num_params == 354
    H = bn_hessian(bn)
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-11)
    # the two BN modes are different operators (so the check above distinguishes them)
    other = HessianOperator(net, (x, y), bn="running" if bn == "batch" else "batch")
    assert (other.matvec(v) - H @ v).norm() > 1e-3 * (H @ v).norm()


@pytest.mark.parametrize("bn", ["running", "batch"])
def test_running_stats_modes_and_grads_untouched(data, bn):
    x, y = data
    net = tiny_bn_cnn().train()          # the operator must restore this mode afterwards
    net[1].momentum = 0.5
    before = {k: v.clone() for k, v in net.state_dict().items()}
    op = HessianOperator(net, (x, y), loss="adversarial", attack=AttackSpec(eps=0.1, steps=2), bn=bn, batch_size=20)
    v = torch.randn(op.num_params, dtype=torch.float64)
    op.matvec(v)
    op.loss_and_grad()
    after = net.state_dict()
    for k, t in before.items():
        assert torch.equal(t, after[k]), k
    assert net.training and net[1].training and net[1].track_running_stats
    assert all(p.grad is None for p in net.parameters())


def test_unequal_batches_equal_one_batch(data):
    x, y = data
    net = tiny_bn_cnn()
    one = HessianOperator(net, (x, y))
    uneven = HessianOperator(net, [(x[:5], y[:5]), (x[5:27], y[5:27]), (x[27:], y[27:])])
    chunked = HessianOperator(net, (x, y), batch_size=12)       # 12, 12, 8
    assert uneven.num_samples == chunked.num_samples == N and len(chunked.batches) == 3
    v = torch.randn(one.num_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = one.matvec(v)
    torch.testing.assert_close(uneven.matvec(v), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunked.matvec(v), ref, rtol=1e-10, atol=1e-12)
    l1, g1 = one.loss_and_grad()
    l2, g2 = uneven.loss_and_grad()
    assert l1 == pytest.approx(l2, rel=1e-12)
    torch.testing.assert_close(g1, g2)
    assert l1 == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-12)


def test_dataset_input(data):
    ds = load_dataset("digits", "test").subset(N)
    net = tiny_mlp().float()
    op = HessianOperator(net, ds, batch_size=12)
    ref = HessianOperator(net, ds.tensors())
    assert op.num_samples == N and len(op.batches) == 3
    v = torch.randn(op.num_params)
    torch.testing.assert_close(op.matvec(v), ref.matvec(v), rtol=1e-4, atol=1e-6)


def test_graph_built_once_for_one_batch(data):
    x, y = data
    net = tiny_mlp()
    op = HessianOperator(net, (x, y), max_graph_memory=0)   # one batch: kept whatever the budget
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))   # after the entrance check's forward
    v = torch.randn(op.num_params, dtype=torch.float64)
    first = op.matvec(v)
    for _ in range(3):
        torch.testing.assert_close(op.matvec(v), first, rtol=0, atol=0)
    assert len(calls) == 1
    assert op.describe()["graph_cache"]["kept"] == 1


@pytest.mark.parametrize("fit", [0, 2, 3])
def test_batch_graphs_kept_within_the_budget(data, fit):
    """3 batches (12, 12, 8 samples): graphs are kept while they fit, the others rebuilt at every HVP."""
    x, y = data
    net = tiny_mlp()
    probe = HessianOperator(net, (x, y), batch_size=12, max_graph_memory=0)
    v = torch.randn(probe.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref = probe.matvec(v)
    sizes = probe._graphs.sizes
    assert sizes[0] == sizes[1] > sizes[2] > 0
    budget = 0 if fit == 0 else sizes[0] * 2 + (sizes[2] if fit == 3 else 0)
    op = HessianOperator(net, (x, y), batch_size=12, max_graph_memory=f"{budget}B" if budget else 0)   # a unit
    calls = []
    hook = net.register_forward_hook(lambda *a: calls.append(1))   # after the entrance check's forwards
    for _ in range(3):
        torch.testing.assert_close(op.matvec(v), ref, rtol=1e-12, atol=1e-14)
    assert len(calls) == 3 + 2 * (3 - fit)               # first HVP builds all; later ones only the rebuilt
    g = op.describe()["graph_cache"]
    assert (g["kept"], g["rebuilt_per_hvp"], g["budget_bytes"], g["planned"]) == (fit, 3 - fit, budget, True)
    assert g["kept_bytes"] <= budget
    assert op.preferred_block == (1 if fit == 3 else op.matmat_block)   # blocks pay only for rebuilt graphs
    hook.remove()
    default = HessianOperator(net, (x, y), batch_size=12).describe()["graph_cache"]
    assert default["budget_bytes"] > 10 * sizes[0] and default["planned"] is False


@pytest.mark.parametrize("change", ["data", "data_copy", "inplace", "optimizer", "buffer"])
@pytest.mark.parametrize("batch_size", [None, 12])
def test_weight_change_rebuilds_the_kept_graph(data, change, batch_size):
    """Issue 11.5: after the weights change, HVPs are those of the new weights (before: ``p.data = ...`` gave
    a relative error of 0.97, ``p.data.copy_`` 3.8, an in-place update an autograd RuntimeError)."""
    x, y = data
    net = tiny_bn_cnn()
    op = HessianOperator(net, (x, y), batch_size=batch_size)
    v = torch.randn(op.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    before = op.matvec(v)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        if change == "buffer":                       # BatchNorm running statistics (bn="running" reads them)
            net[1].running_var.mul_(3.0)
        elif change == "optimizer":
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            torch.optim.SGD(net.parameters(), lr=0.3).step()
            net.zero_grad(set_to_none=True)
        for p in net.parameters():
            new = p + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
            if change == "data":
                p.data = new
            elif change == "data_copy":
                p.data.copy_(new)
            elif change == "inplace":
                p.copy_(new)
    expected = HessianOperator(net, (x, y), batch_size=batch_size).matvec(v)
    assert (expected - before).norm() > 0.05 * expected.norm()
    torch.testing.assert_close(op.matvec(v), expected, rtol=1e-10, atol=1e-12)
    assert op.describe()["graph_cache"]["stale_rebuilds"] == 1
    torch.testing.assert_close(op.matvec(v), expected, rtol=1e-10, atol=1e-12)   # kept again, not rebuilt
    assert op.describe()["graph_cache"]["stale_rebuilds"] == 1


def test_replaced_parameter_is_refused(data):
    x, y = data
    net = tiny_mlp()
    op = HessianOperator(net, (x, y))
    v = torch.randn(op.num_params, dtype=torch.float64)
    op.matvec(v)
    net[3].weight = nn.Parameter(net[3].weight.detach() + 1)
    with pytest.raises(ConfigError, match="3.weight was replaced"):
        op.matvec(v)


@pytest.mark.parametrize("batch_size", [None, 12])
@pytest.mark.parametrize("method", ["double-backward", "fwd-over-rev"])
def test_matmat_equals_exact_hessian(data, bn_hessian, batch_size, method):
    x, y = data
    net = tiny_bn_cnn()
    op = HessianOperator(net, (x, y), batch_size=batch_size, hvp_method=method)
    H = bn_hessian("running")
    V = torch.randn(op.num_params, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for block, vmap in ((1, False), (3, False), (3, True), (7, True), (None, False)):
        op.matmat_vmap = vmap
        before = op.hvp_count
        out = op.matmat(V, block=block)
        assert out.shape == (op.num_params, 7) and op.hvp_count == before + 7
        torch.testing.assert_close(out, H @ V, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op.matmat(V.float(), block=4), (H @ V).float(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        op.matmat(V[:5])


def test_adversarial_operator_is_clean_operator_at_stored_examples(data):
    x, y = data
    net = tiny_bn_cnn()
    adv = HessianOperator(net, (x, y), loss="adversarial", attack=AttackSpec(eps=0.1, steps=3), seed=5, batch_size=20)
    xa, ya = samples(adv)
    expected = adversarial_examples(net, x, y, 0.1, None, 3, "linf", 1, 256, 5)
    torch.testing.assert_close(xa, expected, rtol=0, atol=0)
    assert torch.equal(ya, y)
    assert (xa - x).abs().max() <= 0.1 + 1e-12 and (xa - x).abs().max() > 0.05
    assert adv.step_size == pytest.approx(2.5 * 0.1 / 3)
    clean_at_adv = HessianOperator(net, (xa, ya))
    clean = HessianOperator(net, (x, y))
    v = torch.randn(adv.num_params, dtype=torch.float64)
    torch.testing.assert_close(adv.matvec(v), clean_at_adv.matvec(v), rtol=1e-10, atol=1e-12)
    assert (adv.matvec(v) - clean.matvec(v)).norm() > 1e-3 * clean.matvec(v).norm()


def test_same_seed_same_numbers(data):
    x, y = data
    net = tiny_mlp()
    a = HessianOperator(net, (x, y), loss="adversarial", attack=AttackSpec(eps=0.2, steps=2), seed=0)
    b = HessianOperator(net, (x, y), loss="adversarial", attack=AttackSpec(eps=0.2, steps=2), seed=0)
    c = HessianOperator(net, (x, y), loss="adversarial", attack=AttackSpec(eps=0.2, steps=2), seed=1)
    assert torch.equal(samples(a)[0], samples(b)[0])
    assert not torch.equal(samples(a)[0], samples(c)[0])
    v = torch.randn(a.num_params, dtype=torch.float64)
    assert torch.equal(a.matvec(v), b.matvec(v))


def test_param_filter_gives_a_block_of_the_hessian(data):
    x, y = data
    net = tiny_mlp()
    full = HessianOperator(net, (x, y))
    H = exact_hessian(full, mlp_logits(full, net), x, y)
    last = HessianOperator(net, (x, y), param_filter="3")
    assert last.param_names == ["3.weight", "3.bias"] and last.num_params == 130
    v = torch.randn(130, dtype=torch.float64)
    torch.testing.assert_close(last.matvec(v), H[-130:, -130:] @ v, rtol=1e-10, atol=1e-12)
    weights_only = HessianOperator(net, (x, y), param_filter=lambda n, p: n.endswith("weight"))
    assert weights_only.param_names == ["1.weight", "3.weight"]
    d = full.unflatten(full.param_vector())
    assert torch.equal(full.flatten(d), full.param_vector())


def test_to_scipy_and_from_checkpoint(data):
    x, y = data
    net = tiny_mlp()
    op = HessianOperator(net, (x, y))
    lin = op.to_scipy()
    v = torch.randn(op.num_params, dtype=torch.float64)
    out = lin.matvec(v.numpy())
    assert out.dtype.name == "float64"
    torch.testing.assert_close(torch.from_numpy(out), op.matvec(v))
    ck = types.SimpleNamespace(model=net, config={"eps": 0.05, "steps": 4, "step_size": 0.02, "method": "at"})
    adv = HessianOperator.from_checkpoint(ck, (x, y), loss="adversarial")
    assert (adv.eps, adv.steps, adv.step_size) == (0.05, 4, 0.02)
    assert adv.describe()["eps"] == 0.05 and adv.describe()["num_samples"] == N
    adv2 = HessianOperator.from_checkpoint(ck, (x, y), loss="adversarial",
                                           attack=resolve_attack(ck.config, eps=0.1, steps=1))
    assert (adv2.eps, adv2.steps) == (0.1, 1)
    assert adv2.step_size == pytest.approx(2.5 * 0.1 / 1)  # the training step size was for eps 0.05, 4 steps
    adv3 = HessianOperator.from_checkpoint(ck, (x, y), loss="adversarial", attack=resolve_attack(ck.config, eps=0.1))
    assert (adv3.steps, adv3.step_size) == (4, pytest.approx(2.5 * 0.1 / 4))
    with pytest.raises(TypeError, match="eps"):                 # the loose keywords went with issue 32
        HessianOperator.from_checkpoint(ck, (x, y), loss="adversarial", eps=0.1)
    with pytest.raises(ConfigError, match="eps"):
        HessianOperator.from_checkpoint(types.SimpleNamespace(model=net, config={}), (x, y), loss="adversarial")


def test_bad_input_raises_landscape_errors(data):
    x, y = data
    net = tiny_mlp()
    with pytest.raises(ConfigError):
        HessianOperator(net, (x, y), loss="robust")
    with pytest.raises(ConfigError):
        HessianOperator(net, (x, y), bn="frozen")
    with pytest.raises(ConfigError, match="eps"):
        HessianOperator(net, (x, y), loss="adversarial")
    with pytest.raises(ConfigError):
        HessianOperator(net, (x, y), loss="adversarial", attack=AttackSpec(eps=1.5))
    with pytest.raises(ConfigError):
        HessianOperator(net, (x, y), param_filter="nope")
    with pytest.raises(DataError):
        HessianOperator(net, (x[:0], y[:0]))
    with pytest.raises(DataError):
        HessianOperator(net, (x, y[:3]))
    with pytest.raises(DataError):
        HessianOperator(net, 42)
    op = HessianOperator(net, (x, y))
    with pytest.raises(ConfigError):
        op.matvec(torch.zeros(5))


def test_a_dropped_operator_is_freed_with_its_graphs_without_the_cycle_collector():
    """The operator and its graph cache must not form a reference cycle: with the cycle collector off, the
    operator and the kept gradient graph go as soon as the last reference does (a study process that made
    an operator per step grew to 8.8 GB when they waited for the collector)."""
    import gc
    import weakref
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(32, 16), torch.randint(0, 3, (32,))
    enabled = gc.isenabled()
    gc.disable()
    try:
        op = HessianOperator(model, (x, y))
        op.matvec(torch.randn(op.num_params))
        graphs = op._graphs.graphs
        assert graphs and all(t is not None for g in graphs.values() for t in g)  # a graph is kept
        kept = [weakref.ref(t) for g in graphs.values() for t in g]
        ref = weakref.ref(op)
        del op, graphs
        assert ref() is None
        assert all(r() is None for r in kept)
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize("tf32", [False, True])
def test_every_pass_runs_with_the_operators_tf32_flags(data, tf32):
    """The attack, the gradient and each HVP's graph build run with TF32 as the operator was made (off by
    default: it floors HVPs at ~1e-3 on a GPU); the caller's flags come back after each; describe() says it."""
    from landscape.precision import full_float32
    x, y = data
    net = tiny_mlp()
    seen = []
    net.register_forward_hook(lambda *a: seen.append((torch.backends.cuda.matmul.allow_tf32,
                                                       torch.backends.cudnn.allow_tf32)))
    with full_float32(tf32=not tf32):
        op = HessianOperator(net, (x, y), loss="adversarial", attack=AttackSpec(eps=0.1, steps=2), batch_size=16,
                             max_graph_memory=0, tf32=tf32)
        attack_passes = len(seen)
        op.loss_and_grad()
        op.matvec(torch.randn(op.num_params, dtype=torch.float64))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (not tf32, not tf32)
    assert attack_passes > 0 and len(seen) > attack_passes + 2
    assert set(seen) == {(tf32, tf32)}
    assert op.describe()["tf32"] is tf32


def test_a_sample_set_is_attacked_once_and_shared(data):
    """Issue 21: the sample set (batches, shard, adversarial examples) is separate from the operator: made once,
    it serves several operators (here the whole network and one layer) without attacking again, and gives
    the numbers an operator made from raw data gives."""
    from landscape.analysis import SampleSet
    x, y = data
    net = tiny_mlp()
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    spec = AttackSpec(eps=0.1, steps=3)
    ss = SampleSet.make(net, (x, y), spec, batch_size=20, seed=5)
    made = len(calls)
    whole = HessianOperator(net, ss, loss="adversarial")
    layer = HessianOperator(net, ss, loss="adversarial", param_filter="3")
    assert len(calls) == made and ss.attack_seconds > 0      # no second attack
    direct = HessianOperator(net, (x, y), loss="adversarial", attack=spec, seed=5, batch_size=20)
    v = torch.randn(whole.num_params, dtype=torch.float64)
    assert torch.equal(whole.matvec(v), direct.matvec(v))
    assert layer.num_params < whole.num_params and whole.attack == spec
    with pytest.raises(ConfigError, match="without adversarial examples"):
        HessianOperator(net, SampleSet.make(net, (x, y)), loss="adversarial")
    with pytest.raises(ConfigError, match="another attack"):
        HessianOperator(net, ss, loss="adversarial", attack=AttackSpec(eps=0.2))
