"""Images per second of ``landscape-train`` (the Trainer) against a bare PGD-AT loop with the same settings:
same model, data in memory, global batch, PGD steps and step size, autocast; one table, one run.

Rows: cnn-small on Fashion-MNIST (digits when it is not installed) and PreAct-ResNet-18 on CIFAR-shaped
synthetic data; ``--amp`` off and bf16 (and fp16 on a GPU); 1 and 2 processes (the script launches itself
under torchrun, gloo, one thread per process; the bare loop is then a DistributedDataParallel loop in which
each process takes its rows of the global batch, as the Trainer does); ``--variants`` plain, channels_last,
compile (or both, "compile+channels_last"), applied to both loops alike. ``--device cuda`` (one process per
row) uses the GPU sizes of ``GPU_ROWS``: data on the GPU, PGD-10, the clock read after a synchronize. Each row alternates the two loops for ``--rounds`` rounds of
``--epochs`` epochs (the first epoch of the bare loop untimed); each loop's fastest epoch is compared (the
least disturbed estimate on a shared machine) and the median ratio is printed too. Only training is timed
(the Trainer's ``train_seconds``; its validation is not counted). Goal (issue 20): at most 1.05x.

    python benchmarks/train_throughput.py                        # the whole table (CPU: ~15 min)
    python benchmarks/train_throughput.py --rows cnn-small --procs 1 --amp off
    python benchmarks/train_throughput.py --device cuda --procs 1 --amp off,bf16,fp16 --variants plain,compile
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = {"cnn-small": ("fashion-mnist", 1024, 128, 5), "preact-resnet18": ("synthetic-cifar10", 128, 64, 2)}
GPU_ROWS = {"cnn-small": ("fashion-mnist", 16384, 256, 10), "preact-resnet18": ("synthetic-cifar10", 4096, 128, 10)}
VARIANTS = ("plain", "channels_last", "compile", "compile+channels_last")
EPS = {"fashion-mnist": 0.1, "digits": 0.1, "synthetic-cifar10": 8 / 255}


def bare_epoch(model, opt, x_all, y_all, eps, alpha, steps, batch, gen, amp, device, fast=None, scaler=None,
               channels_last=False) -> float:
    """One epoch of the textbook PGD-AT loop (random start, sign steps, projection, one SGD step), under
    autocast when ``amp`` is bf16 or fp16 (then the weight gradient through ``scaler`` and the attack's loss
    times 1024, the usual static scale: only its sign is used), through ``fast`` (the compiled model) when
    given and, in a process group, with DDP over each process's rows of the batch."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from landscape.distributed import shard_bounds, world
    w = world()
    fast = model if fast is None else fast
    net = torch.nn.parallel.DistributedDataParallel(fast) if w.active else fast
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    scale = 1024.0 if amp == "fp16" else 1.0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    perm = torch.randperm(len(x_all), generator=gen)
    for i in range(0, len(x_all), batch):
        idx = perm[i:i + batch]
        noise = torch.rand((len(idx), *x_all.shape[1:]), generator=gen).to(device)
        lo, hi = shard_bounds(len(idx), w)
        x, y, noise = x_all[idx.to(device)][lo:hi], y_all[idx.to(device)][lo:hi], noise[lo:hi]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        delta = ((x + (noise * 2 - 1) * eps).clamp(0, 1) - x)
        model.eval()
        for _ in range(steps):
            delta.requires_grad_(True)
            with cast:
                loss = F.cross_entropy(fast(x + delta), y, reduction="sum")
            g, = torch.autograd.grad(loss * scale, delta)
            delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        model.train()
        with cast:
            loss = F.cross_entropy(net(x + delta), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    if w.active:
        dist.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(row: str, amp: str, rounds: int, epochs: int, device: str = "cpu", variant: str = "plain") -> dict:
    """Fastest and median epoch seconds of both loops for one row, in this process (or process group)."""
    import torch
    from landscape import build_model, load_dataset
    from landscape.training import TrainConfig, train
    device = torch.device(device)
    dataset, samples, batch, steps = (GPU_ROWS if device.type == "cuda" else ROWS)[row]
    try:
        ds = load_dataset(dataset, "train")
    except Exception:  # noqa: BLE001 - Fashion-MNIST not installed: the bundled digits
        dataset, ds = "digits", load_dataset("digits", "train")
    compile_, channels_last = "compile" in variant, "channels_last" in variant
    x, y = ds.tensors(min(samples, len(ds)))
    x, y = x.to(device), y.to(device)
    eps = EPS[dataset]
    alpha = 2.5 * eps / steps
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as out:
        for r in range(rounds):
            model = build_model(row, dataset, seed=0).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            fast = torch.compile(model, dynamic=False) if compile_ else model
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
            scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
            gen = torch.Generator().manual_seed(r)
            ts = [bare_epoch(model, opt, x, y, eps, alpha, steps, batch, gen, amp, device, fast, scaler,
                             channels_last) for _ in range(epochs + 1)]
            bare += ts[1:]
            cfg = TrainConfig(method="at", dataset=dataset, model=row, eps=eps, steps=steps, epochs=epochs + 1,
                              batch_size=batch, train_samples=len(y), val_samples=32, val_steps=1, amp=amp,
                              augment=False, compile=compile_, channels_last=channels_last,
                              name=f"r{r}-{time.time_ns()}")
            res = train(cfg, out=out, device=str(device))
            ours += [h["train_seconds"] for h in res.history[1:]]
    return {"row": row, "dataset": dataset, "samples": len(y), "batch": batch, "steps": steps, "amp": amp,
            "variant": variant, "device": device.type, "bare_min": min(bare), "ours_min": min(ours),
            "bare_median": statistics.median(bare), "ours_median": statistics.median(ours),
            "bare_epochs": bare, "ours_epochs": ours}


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        dist.init_process_group("gloo")
    res = measure(args.worker, args.amp_one, args.rounds, args.epochs, args.device, args.variant_one)
    res["processes"] = dist.get_world_size() if launched else 1
    if not launched or dist.get_rank() == 0:
        print("RESULT " + json.dumps(res), flush=True)
    if launched:
        dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    ap.add_argument("--amp", default="off,bf16", help="comma-separated: off, bf16, fp16 (fp16: CUDA only)")
    ap.add_argument("--variants", default="plain", help=f"comma-separated: {', '.join(VARIANTS)}")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: one process per row (the GPU sizes), data on the GPU")
    ap.add_argument("--procs", default="1,2", help="comma-separated process counts")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per loop and round")
    ap.add_argument("--combos", help="an explicit list of rows instead of the product of --rows, --amp, "
                    "--variants and --procs: comma-separated MODEL:AMP:VARIANT:PROCS")
    ap.add_argument("--json", help="also write the rows as JSON here (after every row)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no row whose projected time (the longest row so far) would end past this many "
                         "seconds; the rows left are listed as skipped")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--amp-one", help=argparse.SUPPRESS)
    ap.add_argument("--variant-one", default="plain", help=argparse.SUPPRESS)
    args = ap.parse_args()
    combos = [(row, amp, v, n) for row in args.rows.split(",") for amp in args.amp.split(",")
              for v in args.variants.split(",") for n in map(int, args.procs.split(","))]
    if args.combos:
        combos = [(r, a, v, int(n)) for r, a, v, n in (c.split(":") for c in args.combos.split(","))]
    bad = [v for _, _, v, _ in combos if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    if args.worker:
        worker(args)
        return 0
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    results = []
    start, longest = time.perf_counter(), 0.0
    for row, amp, variant, n in combos:
        t_row = time.perf_counter()
        if args.budget_s is not None and t_row - start + longest > args.budget_s:
            print(f"{row} {amp} {variant} x{n}: skipped (projected {longest:.0f} s, "
                  f"{args.budget_s - (t_row - start):.0f} s of --budget-s left)", file=sys.stderr, flush=True)
            continue
        cmd = [__file__, "--worker", row, "--amp-one", amp, "--rounds", str(args.rounds),
               "--epochs", str(args.epochs), "--device", args.device, "--variant-one", variant]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                *cmd] if n > 1 else [sys.executable, *cmd])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if p.returncode or not lines:
            print(f"{row} {amp} {variant} x{n}: failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}",
                  file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][7:]))
        r = results[-1]
        r["row_seconds"] = time.perf_counter() - t_row
        longest = max(longest, r["row_seconds"] * (1.5 if "compile" in variant else 1.0))
        print(f"[{time.strftime('%H:%M:%S')}] {row} {amp} {variant} x{n}: ours {r['ours_min']:.3f} s, bare "
              f"{r['bare_min']:.3f} s", file=sys.stderr, flush=True)
        if args.json:  # after every row: a run cut short keeps what it measured
            Path(args.json).write_text(json.dumps({"benchmark": "train_throughput", "rows": results},
                                                  indent=1))
    print("| model | data | samples, batch, PGD steps | device | amp | variant | processes | bare img/s | "
          "landscape-train img/s | ours / bare (fastest epoch) | (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['dataset']} | {r['samples']}, {r['batch']}, {r['steps']} | {r['device']} | "
              f"{r['amp']} | {r['variant']} | {r['processes']} | {r['samples'] / r['bare_min']:.0f} | "
              f"{r['samples'] / r['ours_min']:.0f} | {r['ours_min'] / r['bare_min']:.3f} | "
              f"{r['ours_median'] / r['bare_median']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
