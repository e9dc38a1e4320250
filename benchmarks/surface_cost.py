"""Cost of a loss-surface grid point relative to the work it cannot avoid.

Prints, from one run:
  clean:    seconds per grid point / seconds of one inference-mode forward pass over the same samples
            (target <= 1.10: moving the weights and scoring the logits must cost next to nothing)
  reattack: seconds per grid point / seconds of one PGD attack on the same samples
            (a reattack point is one PGD attack plus one forward pass)

Per-point times are whole ``loss_surface`` calls (setup, digests and the final synchronization included)
divided by the number of points; the baselines are as many back-to-back forward passes (attacks), timed
in alternation with the surface calls; best of ``--repeats`` for each. Run: ``python benchmarks/surface_cost.py [--device cuda] [--model cnn-small]``.
"""
from __future__ import annotations

import argparse
import time

import torch

from landscape import build_model, load_dataset
from landscape.analysis.directions import random_directions
from landscape.analysis.surface import loss_surface
from landscape.attacks import adversarial_examples
from landscape.cli.common import resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_times(base, surface, n: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of ``n`` back-to-back ``base()`` calls and of one ``surface()`` call of n
    points, measured in alternation so that load from other processes hits both alike; both per unit."""
    base()
    surface()  # warm-up (allocator, cuDNN autotuning, oneDNN primitives)
    _sync(device)
    tb, ts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            base()
        _sync(device)
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        surface()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return min(tb) / n, min(ts) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn-small")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--split", default="train-full")
    p.add_argument("--samples", type=int, default=1000,
                   help="first N samples of the split (default 1000, as landscape-surface)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--grid", type=int, default=7, help="clean surface: GRID x GRID points")
    p.add_argument("--reattack-grid", type=int, default=2, help="reattack surface: N x N points")
    p.add_argument("--reattack-samples", type=int, default=256, help="samples for the reattack comparison")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

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
    n_points = args.grid ** 2
    t_fwd, t_surf = paired_times(forward, lambda: loss_surface(model, (x, y), dirs, grid, grid, batch_size=bs),
                                 n_points, device, args.repeats)
    print(f"clean:    {t_surf * 1e3:9.3f} ms per grid point ({n_points} points) / {t_fwd * 1e3:9.3f} ms per "
          f"forward pass = {t_surf / t_fwd:.3f}  (target <= 1.10)")

    rgrid = f"-1:1:{args.reattack_grid}"
    r_points = args.reattack_grid ** 2
    xr, yr = x[:args.reattack_samples], y[:args.reattack_samples]
    t_pgd, t_re = paired_times(
        lambda: adversarial_examples(model, xr, yr, args.eps, None, args.steps, batch_size=bs, seed=0),
        lambda: loss_surface(model, (xr, yr), dirs, rgrid, rgrid, loss="adversarial", adv_mode="reattack",
                             eps=args.eps, steps=args.steps, batch_size=bs),
        r_points, device, args.repeats)
    print(f"reattack: {t_re * 1e3:9.3f} ms per grid point ({r_points} points, {len(xr)} samples) / "
          f"{t_pgd * 1e3:9.3f} ms per PGD-{args.steps} attack = {t_re / t_pgd:.3f}  "
          "(a point is one attack + one forward pass)")


if __name__ == "__main__":
    main()
