"""Cost of a loss-surface grid point relative to the work it cannot avoid.

Prints, from one run:
  clean:    seconds per grid point / seconds of one inference-mode forward pass over the same samples
            (target <= 1.10: moving the weights and scoring the logits must cost next to nothing)
  reattack: seconds per grid point / seconds of one PGD attack on the same samples
            (a reattack point is one PGD attack plus one forward pass)

How it is timed, so that other processes on a shared machine hit both sides alike: the surface runs
with a callback that, after every grid point, synchronizes and runs the baseline once (a forward pass,
or a PGD attack) and times it. Each grid point is thus timed right next to one baseline run; the
reported ratio is the median over points of (point time / adjacent baseline time). The first point
(which carries the setup) is left out of that ratio; the setup (digests of model and data, the flat
weight buffers, the attack at theta0 in fixed mode) is reported separately, and so is the whole-call
ratio (setup included, amortized over the grid).
Run: ``python benchmarks/surface_cost.py [--device cuda] [--model cnn-small] [--samples 1000]``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from landscape import AttackSpec, build_model, load_dataset
from landscape.analysis.directions import random_directions
from landscape.analysis.surface import loss_surface
from landscape.attacks import adversarial_examples
from landscape.cli.common import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_surface(run: Callable[[Callable[[int, int], None]], None], base: Callable[[], None],
                  device: torch.device) -> dict:
    """Run a surface whose points are each followed by one timed ``base()``; returns the timings."""
    points: list[float] = []
    bases: list[float] = []
    last = [0.0]

    def callback(done: int, total: int) -> None:
        _sync(device)
        t1 = time.perf_counter()
        points.append(t1 - last[0])
        base()
        _sync(device)
        t2 = time.perf_counter()
        bases.append(t2 - t1)
        last[0] = time.perf_counter()

    t0 = last[0] = time.perf_counter()
    run(callback)
    _sync(device)
    total = time.perf_counter() - t0 - sum(bases)
    ratios = [p / b for p, b in zip(points[1:], bases[1:])]
    n = len(points)
    return {"ratio": statistics.median(ratios), "point": statistics.median(points[1:]),
            "base": statistics.median(bases[1:]), "setup": points[0] - statistics.median(points[1:]),
            "whole": total / n / statistics.median(bases), "n": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--split", default="train-full")
    p.add_argument("--samples", type=int, default=1000,
                   help="first N samples of the split (default 1000, as landscape-surface)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--grid", type=int, default=7, help="clean surface: GRID x GRID points")
    p.add_argument("--reattack-grid", type=int, default=3, help="reattack surface: N x N points")
    p.add_argument("--reattack-samples", type=int, default=256, help="samples for the reattack comparison")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    model = build_model(args.model, args.dataset, seed=0).to(device).eval()
    x, y = load_dataset(args.dataset, args.split).tensors(args.samples, device)
    dirs = random_directions(model, 2, seed=0)
    bs = args.batch_size
    batches = [x[i:i + bs] for i in range(0, len(x), bs)]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model} on {args.dataset}/{args.split}: {len(x)} samples, batch {bs}, {n_params} parameters, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                f" ({torch.get_num_threads()} threads)"))

    def forward() -> None:
        with torch.inference_mode():
            for xb in batches:
                model(xb)

    grid = f"-1:1:{args.grid}"
    loss_surface(model, (x, y), dirs, "0:0:1", "0:0:1", batch_size=bs)   # warm-up
    r = timed_surface(lambda cb: loss_surface(model, (x, y), dirs, grid, grid, batch_size=bs, callback=cb),
                      forward, device)
    print(f"clean:    {r['point'] * 1e3:9.3f} ms per grid point / {r['base'] * 1e3:9.3f} ms per forward pass "
          f"= {r['ratio']:.3f}  (target <= 1.10; median of {r['n'] - 1} adjacent pairs)")
    print(f"          setup {r['setup'] * 1e3:.1f} ms once per call; whole call incl. setup: "
          f"{r['whole']:.3f} forward passes per point over {r['n']} points")

    xr, yr = x[:args.reattack_samples], y[:args.reattack_samples]
    rgrid = f"-1:1:{args.reattack_grid}"

    def attack() -> None:
        adversarial_examples(model, xr, yr, args.eps, None, args.steps, batch_size=bs, seed=0)

    r = timed_surface(lambda cb: loss_surface(model, (xr, yr), dirs, rgrid, rgrid, loss="adversarial",
                                              adv_mode="reattack", attack=AttackSpec(eps=args.eps, steps=args.steps),
                                              batch_size=bs, callback=cb), attack, device)
    print(f"reattack: {r['point'] * 1e3:9.3f} ms per grid point / {r['base'] * 1e3:9.3f} ms per PGD-{args.steps} "
          f"attack = {r['ratio']:.3f}  ({len(xr)} samples; a point is one attack + one forward pass; "
          f"median of {r['n'] - 1} pairs)")


if __name__ == "__main__":
    main()
