"""Seconds per training epoch of ``landscape-train --method at`` against a minimal hand-written PGD-AT loop.

Same model (cnn-small), data (the first N training samples, in memory), batch size, PGD steps and step
size. Only the training pass is timed (the trainer's validation is reported separately). Runs alternate
between the loops; each loop's fastest epoch is compared (the minimum is the estimate least disturbed by
other processes on a shared machine; medians are printed too).
Also prints the p-sat / at and trades / at epoch-time ratios.

    python benchmarks/train_overhead.py [--dataset fashion-mnist] [--samples 4096] [--epochs 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from landscape import build_model, load_dataset
from landscape.training import TrainConfig, train


def minimal_at_epoch(model, opt, x_all, y_all, eps, alpha, steps, batch_size, gen) -> float:
    """The textbook PGD-AT loop (Madry et al.): random start, sign steps, projection, one SGD step."""
    t0 = time.perf_counter()
    perm = torch.randperm(len(x_all), generator=gen)
    for i in range(0, len(x_all), batch_size):
        idx = perm[i:i + batch_size]
        x, y = x_all[idx], y_all[idx]
        delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
        delta = ((x + delta).clamp(0, 1) - x)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            g, = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        loss = F.cross_entropy(model(x + delta), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def trainer_epochs(method: str, args, out: str) -> list[float]:
    cfg = TrainConfig(method=method, dataset=args.dataset, model="cnn-small", eps=args.eps, steps=args.steps,
                      epochs=args.epochs, batch_size=args.batch_size, train_samples=args.samples,
                      val_samples=256, name=f"{method}-{time.time_ns()}")
    res = train(cfg, out=out)
    return [r["train_seconds"] for r in res.history], [r["val_seconds"] for r in res.history]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ds = load_dataset(args.dataset, "train")
    except Exception as e:  # noqa: BLE001 - fall back to the bundled data
        print(f"{args.dataset} unavailable ({e}); using digits")
        args.dataset, ds = "digits", load_dataset("digits", "train")
    args.samples = min(args.samples, len(ds))
    x, y = ds.tensors(args.samples)
    alpha = 2.5 * args.eps / args.steps
    print(f"dataset {args.dataset}, {args.samples} samples, batch {args.batch_size}, PGD-{args.steps}, "
          f"eps {args.eps}, threads {torch.get_num_threads()}")

    ours, bare, val = [], [], []
    times = {"p-sat": [], "trades": []}
    with tempfile.TemporaryDirectory() as out:
        warm = build_model("cnn-small", args.dataset, seed=0)  # one untimed epoch: allocator and kernel warm-up
        minimal_at_epoch(warm, torch.optim.SGD(warm.parameters(), lr=0.05), x, y, args.eps, alpha, args.steps,
                         args.batch_size, torch.Generator().manual_seed(0))
        for r in range(args.rounds):
            model = build_model("cnn-small", args.dataset, seed=0)
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            gen = torch.Generator().manual_seed(r)
            bare += [minimal_at_epoch(model, opt, x, y, args.eps, alpha, args.steps, args.batch_size, gen)
                     for _ in range(args.epochs)]
            t, v = trainer_epochs("at", args, out)
            ours += t
            val += v
            for m in times:
                times[m] += trainer_epochs(m, args, out)[0]
    med = statistics.median
    print(f"\n{'loop':<32}{'min s/epoch':>12}{'median':>9}{'runs':>6}")
    rows = [("minimal PGD-AT loop", bare), ("landscape-train --method at", ours)]
    rows += [(f"landscape-train --method {m}", ts) for m, ts in times.items()]
    for name, ts in rows:
        print(f"{name:<32}{min(ts):>12.3f}{med(ts):>9.3f}{len(ts):>6}")
    print(f"\nat / minimal loop      = {min(ours) / min(bare):.3f}   (target <= 1.10; medians: "
          f"{med(ours) / med(bare):.3f})")
    print(f"p-sat / at             = {min(times['p-sat']) / min(ours):.3f}")
    print(f"trades / at            = {min(times['trades']) / min(ours):.3f}")
    print(f"(validation, not timed above: {med(val):.3f} s/epoch on 256 samples, PGD-10)")


if __name__ == "__main__":
    main()
