"""The analysis and the trainer measured on a GPU, against PyHessian 0.1 and hessian-eigenthings 1.0 on the
same model and samples, inside one time budget (issue 24). ``benchmarks/gpu_check.sh`` runs it after the
command-line pipeline; run alone:

    python benchmarks/gpu_check.py --budget-s 360 --out /tmp/gpu_check      # needs a CUDA GPU
    python benchmarks/gpu_check.py --cpu                                     # tiny dry run of every task

Per model (PreAct-ResNet-18, WRN-34-10; random init, seeded random CIFAR-shaped inputs, 256 samples):
  1. ``hvp-graphs``: seconds per gradient and per HVP, with the gradient graphs kept and rebuilt (two
     batches of 128; ``max_graph_memory=0`` rebuilds), with TF32 allowed, by forward-over-reverse
     (``hvp_method="fwd-over-rev"``, issue 34) and with cuDNN's autotuner on (``cudnn_benchmark=True``, graphs
     kept); HVP / gradient, and the relative differences of the last two HVPs from the default one.
  2. ``ours-top5`` (tol 1e-3), ``ours-trace`` (XTrace, ``--trace-hvps`` HVPs), ``ours-density`` (80 Lanczos
     steps, one probe), ``pyhessian`` (top-5 and trace, its defaults), ``eigenthings-top5`` / ``-trace`` /
     ``-density`` (its defaults; trace at the same HVP budget as ours): HVPs, seconds, peak GPU memory
     (``torch.cuda.max_memory_allocated``), and the top-5's largest relative error against ``ref-top5``
     (our Lanczos at tol 1e-8 on a float64 copy; where float64 would not fit the time left, tol 1e-6 in
     float32 with TF32 off, marked so). Ours runs with TF32 off (the operator's default, recorded in its
     settings); the peers run with PyTorch's defaults (cuDNN convolutions in TF32 on Ampere and later).
  3. ``floor``: one HVP's relative error against float64, float32 with TF32 off and on, and forward-over-
     reverse's (TF32 off); forward-over-reverse against double backward with BatchNorm in train mode
     (``bn="batch"``, float32), which ``HessianOperator`` refuses on CUDA until this row shows it exact
     (pytorch#196699).
  4. ``train``: one epoch of PGD-AT (10 steps) through ``landscape.training.Trainer``, float32 and bf16
     autocast, images per second (the second epoch of two, so cuDNN's autotuning is not counted).

Every group of tasks runs in its own process (a CUDA fault ends the group, not the check); each task is
skipped, with its reason in the table, when its projected time (HVPs x measured seconds per HVP) would
overrun the budget. Prints markdown tables and writes ``gpu_check.json`` (every row) into ``--out``.
Torchrun with nccl and AutoAttack are the pipeline's steps in ``gpu_check.sh``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/scale.py: the shared measurements
import scale  # noqa: E402

GPU_MODELS = {"preact-resnet18": 256, "wrn-34-10": 256}
CPU_MODELS = {"mlp": 8}  # --cpu: checks the script in seconds, measures nothing
# samples per Hessian batch: one WRN-34-10 HVP over 256 samples in one batch reaches ~62 GB, past the default
# budget (35% of the H200's 140 GB); two batches halve it (measured: gpu_check.md, first run)
BATCH_SIZE = {"wrn-34-10": 128}
TRAIN_MODEL = "preact-resnet18"  # the PGD-AT throughput task's model (with it, when --models names it)
# HVPs each task is expected to spend: projected time = HVPs x seconds per HVP, checked against the budget
EXPECTED_HVPS = {"ours-top5": 130, "ours-trace": 100, "ours-density": 80, "ref-top5": 160, "pyhessian": 600,
                 "eigenthings-top5": 10, "eigenthings-trace": 100, "eigenthings-density": 80}


# --- worker side -----------------------------------------------------------------------------------------

def _sync(dev) -> None:
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _seconds(fn, dev, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn()`` after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t)
    return min(ts)


def _guarded(out: dict, name: str, fn) -> None:
    """``out.update(fn())``, or ``out[name + "_error"]`` = the error's first line (a new row, e.g. out of GPU
    memory, must not cost the row the measurements made before it)."""
    import torch
    try:
        out.update(fn())
    except Exception as e:  # noqa: BLE001 - recorded in the row
        out[f"{name}_error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def hvp_graphs(spec: dict) -> dict:
    """Seconds per gradient and per HVP (graphs kept / rebuilt / kept with TF32 allowed) on two batches."""
    import torch
    from landscape.analysis import HessianOperator
    model, x, y = scale._setup(spec)
    dev, half, r = x.device, max(1, len(x) // 2), spec.get("repeats", 3)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0)).to(dev)
    out = {"num_params": int(v.numel()), "batches": 2}
    kept = HessianOperator(model, (x, y), batch_size=half)
    out["grad_seconds"] = _seconds(kept.loss_and_grad, dev, r)
    out["hvp_seconds"] = _seconds(lambda: kept.matvec(v), dev, r)
    out["kept"] = kept.describe()["graph_cache"]["kept"]
    del kept
    rebuilt = HessianOperator(model, (x, y), batch_size=half, max_graph_memory=0)
    out["hvp_rebuilt_seconds"] = _seconds(lambda: rebuilt.matvec(v), dev, r)
    out["rebuilt"] = rebuilt.describe()["graph_cache"]["rebuilt_per_hvp"]
    del rebuilt
    tf32 = HessianOperator(model, (x, y), batch_size=half, tf32=True)
    out["hvp_tf32_seconds"] = _seconds(lambda: tf32.matvec(v), dev, r)
    del tf32
    ref = HessianOperator(model, (x, y), batch_size=half, max_graph_memory=0).matvec(v).double()
    rel = lambda hv: float((hv.double() - ref).norm() / ref.norm())

    def fwd_over_rev() -> dict:
        op = HessianOperator(model, (x, y), batch_size=half, hvp_method="fwd-over-rev")
        return {"hvp_fwd_over_rev_seconds": _seconds(lambda: op.matvec(v), dev, r),
                "fwd_over_rev_rel_diff": rel(op.matvec(v))}

    def cudnn_benchmark() -> dict:
        op = HessianOperator(model, (x, y), batch_size=half, cudnn_benchmark=True)
        return {"hvp_cudnn_benchmark_seconds": _seconds(lambda: op.matvec(v), dev, r),
                "cudnn_benchmark_rel_diff": rel(op.matvec(v)), "cudnn_benchmark": op.describe()["cudnn_benchmark"]}

    _guarded(out, "fwd_over_rev", fwd_over_rev)
    _guarded(out, "cudnn_benchmark", cudnn_benchmark)
    return out


def floor(spec: dict) -> dict:
    """One HVP on a seeded random vector in float64 (the reference), float32 with TF32 off and on, and by
    forward-over-reverse (TF32 off): relative errors ||Hv - Hv64|| / ||Hv64||, and the float64 HVP's seconds;
    with BatchNorm in train mode, forward-over-reverse against double backward (float32)."""
    import torch
    from landscape.analysis import HessianOperator
    model, x, y = scale._setup(spec)
    dev = x.device
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1)).to(dev)
    res = {}
    for name, tf32 in (("tf32_off", False), ("tf32_on", True)):
        res[name] = HessianOperator(model, (x, y), tf32=tf32).matvec(v.float()).double()
    extra: dict = {}
    bs = spec.get("batch_size")   # the same Hessian (the mean over all samples), in batches that fit

    def fwd_over_rev() -> dict:
        res["fwd_over_rev"] = HessianOperator(model, (x, y), batch_size=bs,
                                              hvp_method="fwd-over-rev").matvec(v.float()).double()
        return {}

    def bn_batch() -> dict:   # train-mode BatchNorm: fwd-over-rev vs double backward, the CUDA refusal lifted
        from landscape.analysis import hessian
        saved = hessian.FWD_OVER_REV_BN_BATCH
        hessian.FWD_OVER_REV_BN_BATCH = (*saved, dev.type)
        try:
            hv = [HessianOperator(model, (x, y), bn="batch", batch_size=bs, hvp_method=m).matvec(v.float())
                  .double() for m in ("double-backward", "fwd-over-rev")]
        finally:
            hessian.FWD_OVER_REV_BN_BATCH = saved
        return {"bn_batch_fwd_vs_db_rel_diff": float((hv[1] - hv[0]).norm() / hv[0].norm())}

    _guarded(extra, "fwd_over_rev", fwd_over_rev)
    _guarded(extra, "bn_batch", bn_batch)
    model64 = model.double()
    op64 = HessianOperator(model64, (x.double(), y))
    _sync(dev)
    t = time.perf_counter()
    ref = op64.matvec(v)
    _sync(dev)
    out = {"float64_hvp_seconds": time.perf_counter() - t, **extra}
    for name, hv in res.items():
        out[f"rel_err_{name}"] = float((hv - ref).norm() / ref.norm())
    return out


def train(spec: dict) -> dict:
    """Two epochs of PGD-AT (10 steps) through the Trainer, float32 and bf16 autocast; the second epoch's
    training images per second (validation not counted)."""
    import tempfile

    from landscape.training import TrainConfig, Trainer
    out = {}
    for amp in ("off", "bf16"):
        cfg = TrainConfig(method="at", dataset="synthetic-cifar10", model=spec["model"], epochs=2,
                          train_samples=spec["train_samples"], val_samples=64, val_steps=1,
                          batch_size=spec.get("batch_size", 128), lr_schedule="constant", amp=amp,
                          augment=False)
        with tempfile.TemporaryDirectory() as d:
            res = Trainer(cfg, d, spec["device"], progress=False).fit()
        row = res.history[-1]
        out[amp] = {"images_per_second": spec["train_samples"] / row["train_seconds"],
                          "train_seconds": row["train_seconds"], "train_loss": row["train_loss"],
                          "first_epoch_seconds": res.history[0]["train_seconds"]}
    out["fp32"] = out.pop("off")
    out["bf16_speedup"] = out["bf16"]["images_per_second"] / out["fp32"]["images_per_second"]
    return out


LOCAL_TASKS = {"hvp-graphs": hvp_graphs, "floor": floor, "train": train}


def hardware(device: str) -> dict:
    import torch
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpus=torch.cuda.device_count(), memory_gib=p.total_memory / 2 ** 30,
                   capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count)
    return out


def run_group(specs: list[dict]) -> None:
    """Run the tasks one after another in this process, one JSON line each (flushed as it ends); a task whose
    projected time would pass the deadline is skipped with the reason."""
    import torch
    hvp_s = specs[0].get("hvp_seconds")
    for spec in specs:
        task, left = spec["task"], spec["deadline"] - time.time()
        row = {"task": task, "model": spec.get("model"), "samples": spec.get("samples")}
        per_hvp = spec.get("float64_hvp_seconds") if spec.get("float64") else hvp_s
        need = EXPECTED_HVPS.get(task, 0) * (per_hvp or 0)
        if task == "ref-top5" and spec.get("float64") and need > left:  # float64 too slow: float32, tighter tol
            spec = {**spec, "float64": False, "ref_tol": 1e-6}
            need = EXPECTED_HVPS[task] * (hvp_s or 0)
        if left <= 0 or need > left:
            print(json.dumps({**row, "error": f"skipped: projected {need:.0f} s > {max(left, 0):.0f} s left"}),
                  flush=True)
            continue
        try:
            res = LOCAL_TASKS[task](spec) if task in LOCAL_TASKS else scale.work(spec)
            row.update(res)
            if task == "hvp-graphs":
                hvp_s = res["hvp_seconds"]
            if task == "ref-top5":
                row["reference"] = "float64, tol 1e-8" if spec.get("float64") else "float32 (TF32 off), tol 1e-6"
        except ModuleNotFoundError as e:  # a peer not installed (bench extra; on the GPU machine, .whl)
            row["error"] = f"skipped: {e.name} is not installed"
        except Exception as e:  # noqa: BLE001 - a benchmark row records any failure and goes on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(json.dumps(row, default=str), flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- parent side -----------------------------------------------------------------------------------------

def launch(specs: list[dict], deadline: float, save) -> list[dict]:
    """One worker process for ``specs``; its rows as they came (``save(rows)`` after each), the rest marked
    when it died or timed out."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    p = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(specs)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    timer = threading.Timer(max(1.0, deadline - time.time() + 20), p.kill)  # tasks check the deadline first
    timer.start()
    rows, err = [], []
    reader = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)
    reader.start()
    for line in p.stdout:
        if line.startswith("{"):
            rows.append(json.loads(line))
            save(rows)
            r = rows[-1]
            brief = {k: r[k] for k in ("hvps", "seconds", "peak", "error") if k in r}
            print(f"[{time.strftime('%H:%M:%S')}] {r.get('model')} {r['task']}: {brief}", file=sys.stderr,
                  flush=True)
    p.wait()
    timer.cancel()
    reader.join(timeout=5)
    why = "killed at the deadline" if p.returncode and time.time() >= deadline else \
        f"worker exit {p.returncode}: {(''.join(err).strip().splitlines() or ['?'])[-1][:200]}"
    for s in specs[len(rows):]:
        rows.append({"task": s["task"], "model": s.get("model"), "samples": s.get("samples"), "error": why})
    return rows


def plan(args) -> list[list[dict]]:
    """The groups of tasks, most important first (each list is one worker process)."""
    models = CPU_MODELS if args.cpu else GPU_MODELS
    if args.models:
        models = {m: n for m, n in models.items() if m in args.models.split(",")}
    device = "cpu" if args.cpu else "cuda"
    base = {"device": device, "threads": 1 if args.cpu else None, "density_probes": 1,
            "trace_max_hvps": 8 if args.cpu else args.trace_hvps, "timing_repeats": 2}
    cap = {"max_steps": 6} if args.cpu else {}
    groups = []
    for i, (model, n) in enumerate(models.items()):
        m = {**base, **cap, "model": model, "samples": n, "batch_size": BATCH_SIZE.get(model)}
        groups.append([{**m, "task": t} for t in ("hvp-graphs", "floor", "ours-top5", "ours-trace",
                                                   "ours-density")])
        if model == TRAIN_MODEL or args.cpu and i == 0:
            groups.append([{**base, "task": "train", "model": model, "train_samples": 64 if args.cpu else 3072}])
        groups.append([{**m, "task": t} for t in ("pyhessian", "eigenthings-top5", "eigenthings-trace",
                                                   "eigenthings-density")])
    for model, n in models.items():
        groups.append([{**base, "model": model, "samples": n, "batch_size": BATCH_SIZE.get(model),
                        "task": "ref-top5", "float64": True,
                        **({"max_steps": 8, "ref_tol": 1e-6} if args.cpu else {})}])
    return groups


def report(rows: list[dict], hw: dict) -> str:
    out = [f"hardware: {json.dumps(hw)}", ""]
    g = [r for r in rows if r["task"] == "hvp-graphs" and "error" not in r]
    out += ["| model | weights | samples | s / gradient | s / HVP kept | s / HVP rebuilt | s / HVP TF32 | "
            "kept / grad | rebuilt / grad |", "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['num_params']:,} | {r['samples']} | {r['grad_seconds']:.3g} | "
            f"{r['hvp_seconds']:.3g} | {r['hvp_rebuilt_seconds']:.3g} | {r['hvp_tf32_seconds']:.3g} | "
            f"{r['hvp_seconds'] / r['grad_seconds']:.2f} | {r['hvp_rebuilt_seconds'] / r['grad_seconds']:.2f} |"
            for r in g]
    nan = float("nan")
    out += ["", "| model | s / HVP fwd-over-rev | fwd-over-rev / grad | fwd vs kept, rel. diff | "
            "s / HVP cudnn.benchmark (kept) | cudnn.benchmark / grad | cudnn.benchmark vs off, rel. diff | error |",
            "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r.get('hvp_fwd_over_rev_seconds', nan):.3g} | "
            f"{r.get('hvp_fwd_over_rev_seconds', nan) / r['grad_seconds']:.2f} | "
            f"{r.get('fwd_over_rev_rel_diff', nan):.1e} | {r.get('hvp_cudnn_benchmark_seconds', nan):.3g} | "
            f"{r.get('hvp_cudnn_benchmark_seconds', nan) / r['grad_seconds']:.2f} | "
            f"{r.get('cudnn_benchmark_rel_diff', nan):.1e} | "
            f"{'; '.join(r[k] for k in ('fwd_over_rev_error', 'cudnn_benchmark_error') if k in r) or '-'} |"
            for r in g]
    f = [r for r in rows if r["task"] == "floor" and "error" not in r]
    out += ["", "| model | HVP error vs float64, TF32 off | TF32 on | fwd-over-rev, TF32 off | "
            "bn=batch: fwd-over-rev vs double backward | s / float64 HVP | error |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['rel_err_tf32_off']:.1e} | {r['rel_err_tf32_on']:.1e} | "
            f"{r.get('rel_err_fwd_over_rev', nan):.1e} | {r.get('bn_batch_fwd_vs_db_rel_diff', nan):.1e} | "
            f"{r['float64_hvp_seconds']:.3g} | "
            f"{'; '.join(r[k] for k in ('fwd_over_rev_error', 'bn_batch_error') if k in r) or '-'} |" for r in f]
    t = [r for r in rows if r["task"] == "train" and "error" not in r]
    out += ["", "| model | PGD-AT fp32 img/s | bf16 autocast img/s | bf16 / fp32 | first epoch s (fp32, bf16) |",
            "|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['fp32']['images_per_second']:.0f} | {r['bf16']['images_per_second']:.0f} | "
            f"{r['bf16_speedup']:.2f} | {r['fp32']['first_epoch_seconds']:.1f}, {r['bf16']['first_epoch_seconds']:.1f} |"
            for r in t]
    # the analysis rows in scale.py's table (its peak column is GPU memory here); refs and peers included
    ana = []
    for r in rows:
        if r["task"] in ("hvp-graphs", "floor", "train"):
            if "error" in r:
                ana.append(r)
            continue
        if "rows" in r:  # PyHessian: top-5 and trace in one process
            ana += [{**r, **sub, "note": "one run with the row above/below; peak is the pair's"}
                    for sub in r.pop("rows")]
            continue
        if r["task"] == "ref-top5" and "reference" in r:
            r = {**r, "note": r["reference"]}
        ana.append(r)
    out += ["", scale.report([{**r, "hvps": r.get("hvps", "-")} for r in ana])]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", action="store_true", help="tiny dry run on the CPU (an MLP, a few HVPs per task)")
    ap.add_argument("--budget-s", type=float, default=360, help="seconds for all measurements (default 360)")
    ap.add_argument("--trace-hvps", type=int, default=100, help="HVPs of ours and eigenthings' trace (default 100)")
    ap.add_argument("--models", help="comma-separated subset of the models (default: all)")
    ap.add_argument("--out", default=".", help="folder for gpu_check.json (default: here)")
    args = ap.parse_args()
    if args.worker:
        run_group(json.loads(args.worker))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "cuda"
    from landscape.io import write_json
    t0 = time.time()
    deadline = t0 + args.budget_s
    hw = hardware(device)
    rows: list[dict] = []

    def save(rows: list[dict]) -> None:  # after every row: a run cut short keeps what it measured
        write_json(out / "gpu_check.json", {"kind": "benchmark", "benchmark": "gpu_check", "hardware": hw,
                                            "budget_s": args.budget_s, "rows": rows})

    for group in plan(args):
        known: dict = {}  # per model, the HVP times measured so far: the projections of later tasks
        for r in rows:
            known.setdefault(r["model"], {}).update(
                {k: r[k] for k in ("hvp_seconds", "float64_hvp_seconds") if k in r})
        done = list(rows)
        rows = done + launch([{**s, **known.get(s.get("model"), {}), "deadline": deadline} for s in group],
                             deadline, lambda new: save(done + new))
    print(report(rows, hw))
    print(f"\nmeasurements: {time.time() - t0:.0f} s of a {args.budget_s:.0f} s budget")
    bad = [r for r in rows if "error" in r and not r["error"].startswith("skipped")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
