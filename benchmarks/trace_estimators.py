"""Hutchinson vs Hutch++ vs XTrace at 30, 90 and 300 HVPs against an exact trace, with the coverage of
each one's stated error.

The model: a small CNN (conv 1->8, conv 8->16, linear 256->10; 3,818 weights, float64) trained briefly on
the digits training split, so that its Hessian's spectrum decays as real ones do; the Hessian of the mean
cross-entropy over the first 256 test samples is formed exactly, column by column (n HVPs of
``HessianOperator.matmat`` with the identity), and its trace is the truth. The estimators then run on that
matrix (products with it equal the operator's HVPs to float64 round-off: checked and printed), which makes
hundreds of seeds cheap. ``--block cnn-small`` adds the first-and-last-layer block of cnn-small
(1,610 weights) the same way.

For each budget and method, over ``--seeds`` seeds: the mean and RMS relative error, the coverage of the
stated 95% interval (how often the true trace lies within estimate +- half_width; 0.95 is honest), and the
stated standard error over the observed RMS error (1.0 is honest; > 1 overstates, < 1 understates).

    python benchmarks/trace_estimators.py                    # a minute or two on one CPU core
    python benchmarks/trace_estimators.py --block cnn-small --seeds 100
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landscape import build_model, load_dataset
from landscape.analysis import HessianOperator, hessian_trace
from landscape.analysis.trace import AUTO_RULE

METHODS = ("hutchinson", "hutch++", "xtrace")


class MatrixOp:
    """A dense symmetric matrix as an operator (what ``hessian_trace`` needs); probes in blocks of 64
    (one matrix product each; the estimates do not depend on the block size)."""

    preferred_block = 64

    def __init__(self, A: torch.Tensor):
        self.A, self.num_params, self.device = A, A.shape[0], A.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.A @ v

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.A @ V


def tiny_cnn(steps: int, seed: int) -> nn.Module:
    """conv(1->8) relu pool conv(8->16) relu pool linear(256->10), float64, ``steps`` SGD steps on digits."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10)).double()
    train(net, steps, seed, torch.float64)
    return net


def train(net: nn.Module, steps: int, seed: int, dtype: torch.dtype) -> None:
    x, y = load_dataset("digits", "train").tensors()
    x = x.to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    net.eval()


def exact_hessian(op: HessianOperator, block: int = 64) -> torch.Tensor:
    """The operator as a dense float64 matrix: n HVPs, ``block`` columns of the identity at a time."""
    n = op.num_params
    H = torch.empty(n, n, dtype=torch.float64)
    for j in range(0, n, block):
        E = torch.zeros(n, min(block, n - j), dtype=torch.float64)
        E[j:j + E.shape[1]].fill_diagonal_(1.0)
        H[:, j:j + E.shape[1]] = op.matmat(E).double()
    return (H + H.T) / 2


def case(name: str, op: HessianOperator) -> tuple[str, torch.Tensor]:
    t0 = time.perf_counter()
    H = exact_hessian(op)
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mismatch = float((H @ v - op.matvec(v).double()).norm() / (H @ v).norm())
    ev = torch.linalg.eigvalsh(H).flip(0).numpy()
    tr = float(ev.sum())
    print(f"{name}: {op.num_params:,} weights, exact Hessian by {op.num_params} HVPs in "
          f"{time.perf_counter() - t0:.1f} s (|H v - op(v)| / |H v| = {mismatch:.1e}); trace {tr:.6g}; "
          f"top eigenvalues {', '.join(f'{e:.3g}' for e in ev[:5])}; the top 10 hold "
          f"{ev[:10].sum() / tr:.0%} of the trace, {np.sum(ev < 0)} eigenvalues < 0")
    return name, H


def table(H: torch.Tensor, budgets: list[int], seeds: int, methods: tuple[str, ...] = METHODS) -> None:
    exact = float(torch.trace(H))
    op = MatrixOp(H)
    print(f"  {'HVPs':>5} {'method':<11} {'mean|rel err|':>14} {'RMS rel err':>12} {'coverage 95%':>13} "
          f"{'stated/observed':>16}   ({seeds} seeds; auto picks)")
    for budget in budgets:
        auto = [m for b, m in AUTO_RULE if b <= budget][-1]
        rows = {}
        for method in methods:
            res = [hessian_trace(op, method=method, tol=0, max_hvps=budget, seed=s, max_memory=2**34)
                   for s in range(seeds)]
            est = np.array([r.estimate for r in res])
            err = (est - exact) / abs(exact)
            cover = np.mean([abs(r.estimate - exact) <= r.half_width for r in res])
            ratio = np.sqrt(np.mean([r.stderr ** 2 for r in res])) / np.sqrt(np.mean((est - exact) ** 2))
            rows[method] = np.sqrt(np.mean(err ** 2))
            mark = "  <- auto" if method == auto else ""
            print(f"  {budget:>5} {method:<11} {np.mean(np.abs(err)):>14.4f} {rows[method]:>12.4f} {cover:>13.3f} "
                  f"{ratio:>16.2f}{mark}")
        print(f"  {'':>5} best RMS at {budget}: {min(rows, key=rows.get)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="30,90,300")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--block", choices=("none", "cnn-small"), default="none")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    x, y = load_dataset("digits", "test").tensors(args.samples)
    cases = [case("tiny CNN on digits (float64)", HessianOperator(tiny_cnn(args.train_steps, 0), (x.double(), y)))]
    if args.block == "cnn-small":
        model = build_model("cnn-small", "digits", seed=0).double()
        train(model, args.train_steps, 0, torch.float64)
        cases.append(case("cnn-small, block of layers 0 and 8 (float64)",
                          HessianOperator(model, (x.double(), y), param_filter=["0", "8"])))
    for name, H in cases:
        print(f"\n{name}")
        table(H, budgets, args.seeds, tuple(args.methods.split(",")))


if __name__ == "__main__":
    main()
