"""matmat (several vectors per vmapped double-backward pass) vs one vector at a time, and kept vs rebuilt
gradient graphs.

For each setting, the seconds per HVP of ``HessianOperator.matmat(V, block=b)`` for b = 1 (a loop of
matvecs) and larger blocks, as a ratio to one gradient (``loss_and_grad``) measured in the same run. The
settings are interleaved and repeated (median over ``--repeats`` rounds), so that load from other processes
hits all of them alike: compare the ratios of one run, not seconds across runs.

    python benchmarks/hvp_matmat.py                      # cnn-small on digits, CPU
    python benchmarks/hvp_matmat.py --device cuda --arch preact-resnet18 --dataset cifar10-shaped
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from landscape import build_model, load_dataset
from landscape.analysis import HessianOperator


def samples(dataset: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test samples of a bundled dataset, or n random CIFAR-shaped ones ("cifar10-shaped")."""
    if dataset == "cifar10-shaped":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return load_dataset(dataset, "test").tensors(n)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="cnn-small")
    ap.add_argument("--dataset", default="digits", help="a bundled dataset, or cifar10-shaped (random)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--blocks", default="1,2,4,8,16")
    ap.add_argument("--vectors", type=int, default=16, help="vectors per timed call (a multiple of each block)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.arch, "cifar10" if args.dataset == "cifar10-shaped" else args.dataset, seed=0)
    model = model.to(device).eval()
    x, y = samples(args.dataset, args.samples, 0)
    blocks = [int(b) for b in args.blocks.split(",")]
    ops = {"1 batch (graph kept)": HessianOperator(model, (x, y), device=device),
           "2 batches, graphs kept": HessianOperator(model, (x, y), device=device,
                                                     batch_size=(len(y) + 1) // 2),
           "2 batches, graphs rebuilt": HessianOperator(model, (x, y), device=device,
                                                        batch_size=(len(y) + 1) // 2, max_graph_memory=0)}
    n = next(iter(ops.values())).num_params
    V = torch.randn(n, args.vectors, generator=torch.Generator().manual_seed(1)).to(device)
    print(f"{args.arch} on {args.dataset}, {len(y)} samples, {n:,} weights, device {device}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; {args.vectors} vectors per call, median of "
          f"{args.repeats} interleaved rounds")
    grad_op = ops["1 batch (graph kept)"]
    for op in ops.values():                                   # warm-up: builds the kept graphs
        op.matmat(V[:, :2], block=2)
        op.matvec(V[:, 0])
    modes = [("loop", False), ("vmap", True)]
    cols = [(m, b) for m, _ in modes for b in blocks if not (m == "vmap" and b == 1)]
    times: dict[tuple[str, str, int], list[float]] = {}
    grads: list[float] = []
    for _ in range(args.repeats):
        grads.append(timed(grad_op.loss_and_grad, device))
        for name, op in ops.items():
            for mode, b in cols:
                op.matmat_vmap = mode == "vmap"
                t = timed(lambda: op.matmat(V, block=b), device) / args.vectors
                times.setdefault((name, mode, b), []).append(t)
    g = float(np.median(grads))
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"one gradient: {g * 1e3:.1f} ms\n")
    print("seconds per HVP / one gradient (block 1 = matvec, one vector per pass; loop b = one graph build "
          "shared by b vectors, one pass each; vmap b = b vectors in one vmapped pass)")
    print(f"  {'setting':<28}" + "".join(f"{m + ' ' + str(b):>9}" for m, b in cols))
    for name in ops:
        print(f"  {name:<28}" + "".join(f"{med[(name, m, b)] / g:>8.2f}x" for m, b in cols))
    print()
    for name in ops:
        one = med[(name, "loop", 1)]
        best = min(cols, key=lambda c: med[(name, *c)])
        print(f"  {name}: fastest {best[0]} {best[1]}, {one / med[(name, *best)]:.2f}x the speed of one vector "
              f"at a time")


if __name__ == "__main__":
    main()
