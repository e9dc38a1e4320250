"""One Hessian-vector product by double backward and by forward-over-reverse, against one gradient (issue 34).

Per model (random init, seed 0; ``synthetic-cifar10`` test images, BatchNorm in eval mode, float32), the
seconds of:

  gradient              ``HessianOperator.loss_and_grad`` (one forward + backward)
  db kept               double backward through the gradient graph kept from the first HVP (the default
                        while the graphs fit ``max_graph_memory``; always for one batch)
  db rebuilt            double backward with the graph rebuilt at every HVP (``release_graph`` before each:
                        what a batch whose graph does not fit costs)
  fwd-over-rev          ``hvp_method="fwd-over-rev"``: dual weights (``torch.autograd.forward_ad``) through
                        one forward and backward pass
  fwd-over-rev func     the same derivative by ``torch.func.jvp(torch.func.grad(f))`` (the implementation
                        before; kept here to justify the choice)

The settings are interleaved (one of each per round, the order rotated every round) and the median over
the rounds is reported, as a ratio to the gradient of the same run: load from other processes hits all of
them alike, so compare ratios, not seconds across runs. Each round draws a new seeded vector; "max rel.
diff" is the largest ``||Hv_fwd - Hv_db|| / ||Hv_db||`` over the rounds (float32: round-off only).

    python benchmarks/hvp_modes.py                        # the three models, CPU, 1 thread (4-7 min)
    python benchmarks/hvp_modes.py --models cnn-small --rounds 7
    python benchmarks/hvp_modes.py --device cuda --models preact-resnet18:128,wrn-34-10:64

Writes the markdown table to ``--out`` (default benchmarks/results/hvp_modes.md) and prints it.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from landscape import build_model, load_dataset
from landscape.analysis import HessianOperator

# model: (samples, rounds) on the CPU (small batches: WRN-34-10's double-backward graph at 8 samples ~1 GB)
MODELS = {"cnn-small": (64, 7), "preact-resnet18": (16, 5), "wrn-34-10": (8, 3)}
SETTINGS = ("gradient", "db kept", "db rebuilt", "fwd-over-rev", "fwd-over-rev func")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def func_hvp(op: HessianOperator, v: torch.Tensor) -> torch.Tensor:
    """H v by ``torch.func.jvp`` over ``torch.func.grad`` (one batch), for the comparison only."""
    (x, y), = op.batches
    base = {n: p.detach() for n, p in op.params}
    tang = op.unflatten(v)
    with op._mode(), op._flags():
        _, hv = torch.func.jvp(torch.func.grad(
            lambda p: F.cross_entropy(torch.func.functional_call(op.model, p, (x,)), y, reduction="sum")),
            (base,), (tang,))
    return op.flatten(hv) / op.num_samples


def measure(arch: str, n: int, rounds: int, device: torch.device) -> dict:
    model = build_model(arch, "synthetic-cifar10", seed=0).to(device).eval()
    x, y = load_dataset("synthetic-cifar10", "test").tensors(n, device)
    db = HessianOperator(model, (x, y), hvp_method="double-backward")
    fr = HessianOperator(model, (x, y), hvp_method="fwd-over-rev")
    assert db.describe()["hvp_method"] == "double-backward" and fr.describe()["hvp_method"] == "fwd-over-rev"
    g = torch.Generator().manual_seed(0)
    vecs = [torch.randn(db.num_params, generator=g).to(device) for _ in range(rounds + 1)]
    out: dict = {}
    fns = {"gradient": lambda v: db.loss_and_grad(),
           "db kept": lambda v: out.__setitem__("db", db.matvec(v)),
           "db rebuilt": lambda v: (db.release_graph(), db.matvec(v)),
           "fwd-over-rev": lambda v: out.__setitem__("fr", fr.matvec(v)),
           "fwd-over-rev func": lambda v: out.__setitem__("func", func_hvp(fr, v))}
    times: dict[str, list[float]] = {k: [] for k in SETTINGS}
    diffs, func_diffs = [], []
    for r, v in enumerate(vecs):       # round 0 warms up (and builds the kept graph), not timed
        # rotated each round; "db rebuilt" builds a graph that is kept again, so "db kept" always finds one
        order = SETTINGS[r % len(SETTINGS):] + SETTINGS[:r % len(SETTINGS)]
        for s in order:
            _sync(device)
            t = time.perf_counter()
            fns[s](v)
            _sync(device)
            if r:
                times[s].append(time.perf_counter() - t)
        ref = out["db"].double()
        diffs.append(float((out["fr"].double() - ref).norm() / ref.norm()))
        func_diffs.append(float((out["func"].double() - ref).norm() / ref.norm()))
    med = {s: statistics.median(ts) for s, ts in times.items()}
    return {"model": arch, "weights": db.num_params, "samples": n, "rounds": rounds, "seconds": med,
            "ratio": {s: med[s] / med["gradient"] for s in SETTINGS},
            "max_rel_diff": max(diffs), "max_rel_diff_func": max(func_diffs)}


def report(rows: list[dict], header: str, command: str) -> str:
    out = ["# One HVP by double backward and by forward-over-reverse, against one gradient (issue 34)", "",
           header, "", f"command: `{command}`", "",
           "Columns: seconds of one gradient (forward + backward); per HVP / gradient (median of the rounds, same "
           "run): double backward through the kept gradient graph (the default for one batch, and for batches "
           "whose graphs fit `max_graph_memory`), double backward rebuilding the graph every HVP (batches whose "
           "graphs do not fit), forward-over-reverse (`hvp_method=\"fwd-over-rev\"`: dual weights through one "
           "forward and backward pass, `torch.autograd.forward_ad`), and the same derivative by `torch.func.jvp` "
           "over `torch.func.grad`; the largest `||Hv_fwd - Hv_db|| / ||Hv_db||` over the rounds (float32).", "",
           "| model | weights | samples | rounds | s / gradient | db kept / grad | db rebuilt / grad | "
           "fwd-over-rev / grad | fwd-over-rev (torch.func) / grad | max rel. diff fwd vs db |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["ratio"]
        out.append(f"| {r['model']} | {r['weights']:,} | {r['samples']} | {r['rounds']} | "
                   f"{r['seconds']['gradient']:.3g} | {q['db kept']:.2f} | {q['db rebuilt']:.2f} | "
                   f"{q['fwd-over-rev']:.2f} | {q['fwd-over-rev func']:.2f} | {r['max_rel_diff']:.1e} |")
    span = lambda key, base: (f"{min(r['ratio'][key] / r['ratio'][base] for r in rows):.2f}-"
                              f"{max(r['ratio'][key] / r['ratio'][base] for r in rows):.2f}")
    faster = all(r["ratio"]["db kept"] < r["ratio"]["fwd-over-rev"] for r in rows)
    out += ["", f"fwd-over-rev / db kept: {span('fwd-over-rev', 'db kept')} x; fwd-over-rev / db rebuilt: "
                f"{span('fwd-over-rev', 'db rebuilt')} x; forward_ad / torch.func: "
                f"{span('fwd-over-rev', 'fwd-over-rev func')} x; largest difference between the methods "
                f"{max(r['max_rel_diff'] for r in rows):.1e} (float32 round-off).",
            "", ("Double backward with a kept graph is the fastest HVP on every model here"
                 if faster else "Forward-over-reverse beat the kept graph on some model here: revisit AUTO_HVP")
            + "; `hvp_method=\"auto\"` (`landscape.analysis.hessian.AUTO_HVP`) picks double backward on this "
              "device type. With BatchNorm in train mode (`bn=\"batch\"`) auto always picks double backward."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(f"{m}:{n}" for m, (n, _) in MODELS.items()),
                    help="comma-separated MODEL[:SAMPLES] (default: %(default)s)")
    ap.add_argument("--rounds", type=int, help="timed rounds per model (default: 7, 5, 3 by model size)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "hvp_modes.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    t0 = time.time()
    for item in args.models.split(","):
        arch, _, n = item.partition(":")
        samples, rounds = MODELS.get(arch, (32, 5))
        r = measure(arch, int(n) if n else samples, args.rounds or rounds, device)
        rows.append(r)
        print(f"{arch}: {r['ratio']} max rel diff {r['max_rel_diff']:.1e} (torch.func {r['max_rel_diff_func']:.1e})",
              flush=True)
    hw = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
          else f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s)")
    header = (f"benchmarks/hvp_modes.py, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {hw}; "
              f"float32, synthetic-cifar10, BatchNorm in eval mode, one batch; median of the rounds after one "
              f"warm-up; {time.time() - t0:.0f} s in all")
    text = report(rows, header, "python benchmarks/hvp_modes.py " + " ".join(sys.argv[1:]))
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
