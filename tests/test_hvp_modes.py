"""Forward-over-reverse HVPs (``hvp_method="fwd-over-rev"``) against the exact Hessian and double backward, on
tiny float64 networks (issue 34); ``auto``, the train-mode BatchNorm rule, and what the results record."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cases import tiny_mlp
from landscape import AttackSpec, load_dataset
from landscape.analysis import HessianOperator, SampleSet, hessian_trace, top_eigenvalues
from landscape.analysis.hessian import AUTO_HVP, HVP_CHOICES, resolve_hvp_method, samples
from landscape.errors import ConfigError

N = 32  # samples


@pytest.fixture(scope="module")
def data():
    x, y = load_dataset("digits", "test").tensors(N)
    return x.double(), y


def tiny_cnn(seed: int = 0) -> nn.Module:
    """conv 1->3 (3x3) + tanh + 2x2 max pool + linear 48->10: 520 weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(48, 10)).double()


def tiny_bn_cnn(seed: int = 0, eps: float = 1e-5) -> nn.Module:
    """conv 1->2 + BatchNorm + tanh + pool + linear 32->10: 354 weights; running statistics far from the batch's."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2, eps=eps), nn.Tanh(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32, 10)).double()
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.3, -0.2]))
        net[1].running_var.copy_(torch.tensor([0.5, 2.0]))
        net[1].weight.copy_(torch.tensor([1.2, -0.8]))
        net[1].bias.copy_(torch.tensor([0.1, -0.1]))
    return net.eval()


class BatchStatsBN(nn.Module):
    """BatchNorm2d with the batch's own statistics written out by hand (no ``F.batch_norm``): the reference of
    train-mode BatchNorm, whose nested forward derivative pytorch#196699 reports wrong."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.weight, self.bias, self.eps = copy.deepcopy(bn.weight), copy.deepcopy(bn.bias), bn.eps

    def forward(self, h):
        mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


NETS = {"mlp": tiny_mlp, "cnn": tiny_cnn, "bn-cnn": tiny_bn_cnn}


def exact_hessian(op: HessianOperator, net: nn.Module) -> torch.Tensor:
    """Hessian of the mean cross-entropy at the operator's samples (the fixed adversarial ones included) as a
    function of its flat (filtered) weights: reverse-over-reverse through ``net`` in eval mode."""
    x, y = samples(op)
    net = net.eval()
    return torch.autograd.functional.hessian(
        lambda p: F.cross_entropy(torch.func.functional_call(net, op.unflatten(p), (x,)), y), op.param_vector(),
        vectorize=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("loss", ["clean", "adversarial"])
@pytest.mark.parametrize("name", list(NETS))
def test_fwd_over_rev_equals_exact_hessian_and_double_backward(data, name, loss):
    x, y = data
    net = NETS[name]()
    attack = AttackSpec(eps=0.1, steps=2) if loss == "adversarial" else None
    ss = SampleSet.make(net, (x, y), attack, seed=3)         # one attack: both operators take these examples
    fr = HessianOperator(net, ss, loss=loss, hvp_method="fwd-over-rev")
    db = HessianOperator(net, ss, loss=loss, hvp_method="double-backward")
    if loss == "adversarial":
        assert (samples(fr)[0] - x).abs().max() > 0.05      # the Hessian is taken at moved samples
    H = exact_hessian(fr, net)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(fr.num_params, generator=g, dtype=torch.float64)
        hv = fr.matvec(v)
        torch.testing.assert_close(hv, H @ v, rtol=1e-9, atol=1e-11)
        assert rel(hv, db.matvec(v)) < 1e-10
    assert fr.hvp_count == 2 and all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name,keep", [("mlp", "3"), ("cnn", lambda n, p: n.endswith("weight")), ("bn-cnn", "1")])
def test_param_filters_and_batches(data, name, keep):
    """A filtered block of the Hessian, over three batches of unequal size (12, 12, 8)."""
    x, y = data
    net = NETS[name]()
    full = HessianOperator(net, (x, y))
    H = exact_hessian(full, net)
    fr = HessianOperator(net, (x, y), param_filter=keep, batch_size=12, hvp_method="fwd-over-rev")
    db = HessianOperator(net, (x, y), param_filter=keep, batch_size=12, hvp_method="double-backward")
    assert 0 < fr.num_params < full.num_params and len(fr.batches) == 3
    names = dict(full.params)
    idx = torch.cat([torch.arange(o, o + names[n].numel()) for o, n in zip(
        torch.cumsum(torch.tensor([0] + full._numels[:-1]), 0).tolist(), full.param_names) if n in fr.param_names])
    v = torch.randn(fr.num_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = fr.matvec(v)
    torch.testing.assert_close(hv, H[idx][:, idx] @ v, rtol=1e-9, atol=1e-11)
    assert rel(hv, db.matvec(v)) < 1e-10
    V = torch.randn(fr.num_params, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(fr.matmat(V, block=3), db.matmat(V, block=3), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eps", [1e-5, 0.25])   # 0.25: pytorch#196699's case (its forward-over-forward is wrong)
def test_train_mode_batchnorm_is_exact_on_the_cpu(data, eps):
    """bn="batch" (BatchNorm in train mode, batch statistics): forward-over-reverse equals the Hessian of a twin
    network whose BatchNorm is written out by hand, and double backward; buffers and .grad untouched."""
    x, y = data
    net = tiny_bn_cnn(eps=eps)
    twin = copy.deepcopy(net)
    twin[1] = BatchStatsBN(net[1])
    before = {k: t.clone() for k, t in net.state_dict().items()}
    fr = HessianOperator(net, (x, y), bn="batch", hvp_method="fwd-over-rev")
    db = HessianOperator(net, (x, y), bn="batch", hvp_method="double-backward")
    H = exact_hessian(fr, twin)
    v = torch.randn(fr.num_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    hv = fr.matvec(v)
    torch.testing.assert_close(hv, H @ v, rtol=1e-9, atol=1e-11)
    assert rel(hv, db.matvec(v)) < 1e-10
    running = HessianOperator(net, (x, y), bn="running", hvp_method="fwd-over-rev").matvec(v)
    assert rel(running, hv) > 1e-3                          # the two BN modes are different operators
    assert all(torch.equal(t, net.state_dict()[k]) for k, t in before.items())
    assert all(p.grad is None for p in net.parameters()) and not net.training


def test_auto_and_the_train_mode_batchnorm_rule(data):
    x, y = data
    assert HVP_CHOICES == ("double-backward", "fwd-over-rev", "auto")
    assert AUTO_HVP["cuda"] == "double-backward"          # until a GPU measurement says otherwise
    for dev in ("cpu", "cuda", "mps"):
        assert resolve_hvp_method("auto", dev, "running", True) == AUTO_HVP.get(dev, "double-backward")
        assert resolve_hvp_method("auto", dev, "batch", True) == "double-backward"
        assert resolve_hvp_method("double-backward", dev, "batch", True) == "double-backward"
    assert resolve_hvp_method("fwd-over-rev", "cpu", "batch", True) == "fwd-over-rev"    # tested exact above
    assert resolve_hvp_method("fwd-over-rev", "cuda", "batch", False) == "fwd-over-rev"  # no BatchNorm
    assert resolve_hvp_method("fwd-over-rev", "cuda", "running", True) == "fwd-over-rev"
    with pytest.raises(ConfigError, match="196699") as e:
        resolve_hvp_method("fwd-over-rev", "cuda", "batch", True)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown hvp_method"):
        HessianOperator(tiny_mlp(), (x, y), hvp_method="forward")
    net = tiny_bn_cnn()
    d = HessianOperator(net, (x, y)).describe()                        # the default is auto
    assert (d["hvp_method_requested"], d["hvp_method"]) == ("auto", AUTO_HVP["cpu"])
    d = HessianOperator(net, (x, y), bn="batch").describe()
    assert (d["hvp_method_requested"], d["hvp_method"]) == ("auto", "double-backward")


def test_results_record_the_method_and_top_eigenvalues_agree(data):
    x, y = data
    net = tiny_bn_cnn()
    res = {}
    for m in ("double-backward", "fwd-over-rev"):
        op = HessianOperator(net, (x, y), batch_size=16, hvp_method=m, cudnn_benchmark=True)
        res[m] = top_eigenvalues(op, k=3, tol=1e-8, seed=0)
        st = res[m].settings["operator"]
        assert (st["hvp_method"], st["hvp_method_requested"]) == (m, m)
        assert st["tf32"] is False and st["cudnn_benchmark"] is False     # a CUDA flag: unused on the CPU
        assert (st["graph_cache"] is None) == (m == "fwd-over-rev")
        tr = hessian_trace(op, method="hutchinson", max_hvps=4, min_probes=4, seed=0)
        assert tr.settings["operator"]["hvp_method"] == m
    assert all(bool(c) for m in res for c in res[m].converged)
    torch.testing.assert_close(torch.as_tensor(res["fwd-over-rev"].values),
                               torch.as_tensor(res["double-backward"].values), rtol=1e-9, atol=1e-12)


def _dist_worker(rank: int, path: str, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    from landscape.distributed import finish
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    clean = False
    try:
        x, y = load_dataset("digits", "test").tensors(N)
        net = tiny_bn_cnn()
        v = torch.randn(354, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        ops = {m: HessianOperator(net, (x.double(), y), batch_size=8, hvp_method=m)
               for m in ("double-backward", "fwd-over-rev")}
        hv = {m: op.matvec(v) for m, op in ops.items()}
        hv["shard"] = torch.tensor([len(op.batches) for op in ops.values()] + [ops["fwd-over-rev"].world.size])
        if rank == 0:
            torch.save(hv, out)
        clean = True
    finally:
        # the ranks meet at a barrier before tearing gloo down (distributed.finish): without it, one rank could
        # abort at exit ("terminate called without an active exception") while the other's messages are in
        # flight, which a clean-clone CI run saw once
        finish(clean)


@pytest.mark.skipif(os.name != "posix", reason="gloo with a file store")
def test_fwd_over_rev_under_a_process_group(data, tmp_path):
    """Two gloo processes, each with half the batches: both methods give the single-process HVP."""
    import torch.multiprocessing as mp
    out = tmp_path / "hv.pt"
    mp.spawn(_dist_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    hv = torch.load(out)
    x, y = data
    v = torch.randn(354, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = HessianOperator(tiny_bn_cnn(), (x, y), hvp_method="double-backward").matvec(v)
    assert hv.pop("shard").tolist() == [2, 2, 2]          # rank 0 held 2 of the 4 batches of 8
    for m, h in hv.items():
        assert rel(h, ref) < 1e-12, m
