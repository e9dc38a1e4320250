"""The test suite's shared cases with known answers: dense and diagonal matrices as operators (their spectra
and traces known exactly), Hessian-like spectra, and a tiny tanh MLP on digits with its exact Hessian
(``torch.autograd.functional.hessian`` in float64). One copy of each, imported by the tests that need them."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from landscape import load_dataset
from landscape.analysis import HessianOperator


class MatrixOp:
    """A dense symmetric matrix as an operator in the matrix's dtype, counting its products."""

    def __init__(self, A: torch.Tensor):
        self.A, self.num_params, self.device, self.hvp_count = A, A.shape[0], torch.device("cpu"), 0
        self.dtype = A.dtype

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvp_count += 1
        return self.A @ v.to(self.A.dtype)


class DiagOp:
    """A diagonal operator: cheap products, so n can be large (a float32 basis's rounding shows)."""

    def __init__(self, d):
        self.d = torch.as_tensor(d) if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d), dtype=torch.float64)
        self.num_params, self.dtype, self.device, self.hvp_count = self.d.numel(), self.d.dtype, self.d.device, 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.hvp_count += 1
        return self.d * v.to(self.d.dtype)


def decaying_spd(n: int = 300, seed: int = 0, flat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q diag(lam) Q^T, lam) in float64: five large eigenvalues (50, 30, 20, 12, 8) and a 1/i tail, a
    Hessian-like spectrum; ``flat``: all eigenvalues in [1, 2] instead."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    if flat:
        lam = 1.0 + torch.rand(n, generator=g, dtype=torch.float64)
    else:
        lam = torch.cat([torch.tensor([50.0, 30.0, 20.0, 12.0, 8.0], dtype=torch.float64),
                         1.0 / torch.arange(1, n - 4, dtype=torch.float64)])
    return (Q * lam) @ Q.T, lam


def tiny_mlp(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """64 -> 12 -> 10 with tanh: 910 weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).to(dtype)


def exact_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact Hessian of the mean cross-entropy of ``net`` on (x, y) with respect to its flat weights, in
    float64 (a float64 copy of the network): n HVPs' worth of work."""
    net64 = copy.deepcopy(net).double()
    op64 = HessianOperator(net64, (x.double(), y))
    f = lambda p: nn.functional.cross_entropy(  # noqa: E731
        torch.func.functional_call(net64, op64.unflatten(p), (x.double(),)), y)
    return torch.autograd.functional.hessian(f, op64.param_vector(), vectorize=True)


def exact_case(dtype: torch.dtype = torch.float64, samples: int = 32):
    """The tiny MLP on the first ``samples`` digits test images: (its operator in ``dtype``, the exact Hessian
    in float64 at the same weights, that Hessian's eigenvalues ascending as numpy)."""
    x, y = load_dataset("digits", "test").tensors(samples)
    net = tiny_mlp(dtype)
    op = HessianOperator(net, (x.to(dtype), y))
    H = exact_hessian(net, x, y)
    return op, H, torch.linalg.eigvalsh(H).numpy()
