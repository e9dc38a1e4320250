"""Wall time of a top-5 eigenvalue search and of a 2D adversarial surface with 1 and with 2 processes
(torchrun, gloo, one thread each), and the speedup, from one run.

    python benchmarks/distributed_scaling.py                  # cnn-small on 1024 Fashion-MNIST test images
    python benchmarks/distributed_scaling.py --procs 1 2 4 --samples 2048 --grid=-1:1:21

The script launches itself under ``python -m torch.distributed.run`` once per process count; each worker
times its part between barriers and rank 0 reports. The spectrum shards the samples (one all-reduce per
HVP); the surface shares grid points out dynamically. On a machine with P cores, P is the ceiling of the
speedup (less when other work shares the cores). Both runs must give the same numbers; the script checks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    import landscape as ls
    from landscape import AttackSpec
    from landscape.analysis import HessianOperator, loss_surface, random_directions, top_eigenvalues
    from landscape.distributed import finish, world as current_world
    from landscape.io import write_json

    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # also for 1 process: the barriers below need a group
    world = current_world()
    name = "fashion-mnist" if args.dataset == "auto" and _have_fmnist() else (
        "digits" if args.dataset == "auto" else args.dataset)
    data = ls.load_dataset(name, "test")
    x, y = data.tensors(min(args.samples, len(data)))
    model = ls.build_model("cnn-small", name, seed=0)
    out: dict = {"world_size": world.size, "dataset": name, "samples": len(x),
                 "num_params": sum(p.numel() for p in model.parameters())}

    dist.barrier()
    t0 = time.perf_counter()
    op = HessianOperator(model, (x, y), loss="adversarial", attack=AttackSpec(eps=args.eps, steps=args.steps), seed=0)
    eig = top_eigenvalues(op, k=5, tol=1e-3, seed=0)
    dist.barrier()
    out["spectrum_seconds"] = time.perf_counter() - t0
    out["attack_seconds"] = op.attack_seconds
    out["eigenvalues"], out["hvps"] = eig.values.tolist(), eig.hvps

    dirs = random_directions(model, 2, seed=0)
    dist.barrier()
    t0 = time.perf_counter()
    res = loss_surface(model, (x, y), dirs, args.grid, args.grid, loss="adversarial", adv_mode="fixed",
                       attack=AttackSpec(eps=args.eps, steps=args.steps), seed=0, batch_size=256)
    dist.barrier()
    out["surface_seconds"] = time.perf_counter() - t0
    out["surface_points"] = int(res.mask.size)
    out["surface_loss"] = res.loss.tolist()
    if world.main:
        write_json(args.result, out)
    finish()


def _have_fmnist() -> bool:
    d = Path("/usr/share/datasets/fashion-mnist")
    return (d / "t10k-images-idx3-ubyte.gz").exists() or (d / "t10k-images-idx3-ubyte").exists()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--dataset", default="auto", help="auto: fashion-mnist when installed, else digits")
    p.add_argument("--grid", default="-1:1:11", help="grid of both axes of the surface")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            result = Path(tmp) / f"n{n}.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   __file__, "--worker", "--result", str(result), "--samples", str(args.samples),
                   "--dataset", args.dataset, f"--grid={args.grid}", "--eps", str(args.eps), "--steps", str(args.steps)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env)
            r = json.loads(result.read_text())
            r["launch_seconds"] = time.perf_counter() - t0
            rows.append(r)
    rows.sort(key=lambda r: r["world_size"])
    base = rows[0]  # speedups are relative to the fewest processes
    print(f"cnn-small ({base['num_params']:,} weights) on {base['samples']} {base['dataset']} test images, "
          f"adversarial loss (PGD-{args.steps}, eps {args.eps:g}); one thread per process; cores here: "
          f"{os.cpu_count()}")
    print(f"{'processes':>9}  {'top-5 s':>8}  {'speedup':>7}  {'HVPs':>4}  {'surface s':>9}  {'speedup':>7}  points")
    for r in rows:
        print(f"{r['world_size']:>9}  {r['spectrum_seconds']:>8.2f}  {base['spectrum_seconds'] / r['spectrum_seconds']:>7.2f}"
              f"  {r['hvps']:>4}  {r['surface_seconds']:>9.2f}  {base['surface_seconds'] / r['surface_seconds']:>7.2f}"
              f"  {r['surface_points']}")
    for r in rows[1:]:
        rel = max(abs(a - b) / abs(b) for a, b in zip(r["eigenvalues"], base["eigenvalues"]))
        same = r["surface_loss"] == base["surface_loss"]
        print(f"{r['world_size']} processes vs {base['world_size']}: top-5 max relative difference {rel:.1e}; "
              f"surface {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
