"""Curvature at scale: cnn-small, PreAct-ResNet-18 and WRN-34-10 on CIFAR-shaped inputs (random init, seeded
random inputs and labels), landscape vs PyHessian 0.1 and hessian-eigenthings 1.0.0a5 on the same model and
samples.

For each model: seconds per gradient and per HVP; then, each in a FRESH subprocess (so that peak memory is
the measurement's own): HVPs, seconds, peak memory (resident set, sampled every 2 ms from /proc/self/status,
and the final VmHWM) and error of top-5 (tol 1e-3), trace and an 80-step density; for ours also the
estimate the CLI prints (``memory.time_hvp`` + the memory plan) next to the measured peak. Errors of top-5
are the largest relative error against a tight reference (our Lanczos at tol 1e-8 on a float64 copy) where
one is run, else our own true-residual bound max ||Hv - lam v|| / |lam| (marked "bound").

    python benchmarks/scale.py                                   # everything (hours on 2 busy cores)
    python benchmarks/scale.py --models cnn-small --samples cnn-small=32
    python benchmarks/scale.py --models wrn-34-10 --no-peers --density-probes wrn-34-10=1 \\
        --max-steps wrn-34-10=8                                  # memory only: runs capped at 8 Lanczos steps

``--max-steps MODEL=N`` caps every Lanczos run of MODEL at N steps (the table says "capped"): the peak of a
capped density is its full run's (local reorthogonalization keeps 3 vectors), a capped top-5 shows the
peak of its first N basis vectors only. Prints markdown tables and writes JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

MODELS = ("cnn-small", "preact-resnet18", "wrn-34-10")
DEFAULT_SAMPLES = {"cnn-small": 256, "preact-resnet18": 8, "wrn-34-10": 8}
PEER_TASKS = ("pyhessian", "eigenthings-top5", "eigenthings-top5-20", "eigenthings-trace",
              "eigenthings-density")
OUR_TASKS = ("ours-top5", "ours-trace", "ours-density")


# --- worker side: one measurement in this process ------------------------------------------------------

class RssSampler:
    """Peak resident set of this process: VmRSS sampled every ``every`` seconds by a thread, and VmHWM."""

    def __init__(self, every: float = 0.002):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    @staticmethod
    def read(field: str) -> int:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)", f.read(), re.M)
        return int(m.group(1)) * 1024 if m else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read("VmRSS"))
            time.sleep(self.every)

    def __enter__(self) -> "RssSampler":
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.read("VmHWM"), self.read("VmRSS"))


def _setup(spec: dict):
    """The model (random init, seed 0) and seeded random CIFAR-shaped samples, on ``spec["device"]``
    (default cpu), in float64 with ``spec["float64"]``."""
    import torch
    from landscape import build_model
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model = build_model(spec["model"], "cifar10", seed=0)
    g = torch.Generator().manual_seed(0)
    n = spec["samples"]
    x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    if spec.get("float64"):
        model, x = model.double(), x.double()
    dev = torch.device(spec.get("device", "cpu"))
    return model.to(dev), x.to(dev), y.to(dev)


def _meter(spec: dict):
    """Peak memory of one measurement: the resident set on the CPU, PyTorch's allocations on a GPU."""
    import torch
    from landscape.analysis.memory import PeakMemory
    dev = torch.device(spec.get("device", "cpu"))
    return PeakMemory(dev) if dev.type == "cuda" else RssSampler()


def _counted(op):
    """Wrap a hessian-eigenthings operator's matvec to count HVPs."""
    count = [0]
    orig = op.matvec

    def matvec(v):
        count[0] += 1
        return orig(v)
    op.matvec = matvec
    return count


def work(spec: dict) -> dict:
    """Run one measurement (``spec["task"]``) and return its numbers."""
    import numpy as np
    import torch
    from landscape.analysis import HessianOperator, hessian_trace, spectral_density, top_eigenvalues
    from landscape.analysis.memory import MemoryBudget, choose_top_k_plan, default_max_hvps, plan_density, time_hvp

    task, cap = spec["task"], spec.get("max_steps")
    out: dict = {"task": task, "model": spec["model"]}
    model, x, y = _setup(spec)
    out["num_params"] = sum(p.numel() for p in model.parameters())
    with _meter(spec) as rss:
        t0 = time.perf_counter()
        if task == "costs":
            op = HessianOperator(model, (x, y), batch_size=spec.get("batch_size"))
            ts = []
            for _ in range(spec.get("repeats", 2)):
                t = time.perf_counter()
                op.loss_and_grad()
                ts.append(time.perf_counter() - t)
            out["grad_seconds"] = float(min(ts[1:] or ts))
            out["hvp_seconds"], out["hvp_peak"] = time_hvp(op, repeats=spec.get("repeats", 2))
            out["hvps"] = spec.get("repeats", 2)
        elif task in ("ours-top5", "ref-top5"):
            op = HessianOperator(model, (x, y), batch_size=spec.get("batch_size"))
            tol = 1e-3 if task == "ours-top5" else spec.get("ref_tol", 1e-8)
            if task == "ours-top5":  # what the CLI prints before the work
                s, peak = time_hvp(op, repeats=spec.get("timing_repeats", 2))
                plan = choose_top_k_plan(op, 5, default_max_hvps(op.num_params, 5), MemoryBudget.of(None, op.device), peak)
                out.update(estimate_peak=plan.estimated_peak, estimate_hvp_seconds=s, plan=plan.to_dict())
                t0 = time.perf_counter()
            r = top_eigenvalues(op, k=5, tol=tol, seed=0, max_hvps=cap)
            out.update(values=[float(v) for v in r.values], residuals=[float(v) for v in r.residuals],
                       converged=[bool(c) for c in r.converged], hvps=r.hvps,
                       thick_restarts=r.settings["thick_restarts"], memory=r.settings["memory"])
        elif task == "ours-trace":
            op = HessianOperator(model, (x, y), batch_size=spec.get("batch_size"))
            r = hessian_trace(op, seed=0, max_hvps=cap or spec.get("trace_max_hvps"))
            out.update(estimate=r.estimate, stderr=r.stderr, hvps=r.hvps, converged=bool(r.converged))
        elif task == "ours-density":
            op = HessianOperator(model, (x, y), batch_size=spec.get("batch_size"))
            s, peak = time_hvp(op, repeats=spec.get("timing_repeats", 2))
            plan = plan_density(op, 80, MemoryBudget.of(None, op.device), peak)
            out.update(estimate_peak=plan.estimated_peak, estimate_hvp_seconds=s, plan=plan.to_dict())
            t0 = time.perf_counter()
            r = spectral_density(op, n_probes=spec.get("density_probes", 3), lanczos_steps=cap or 80, seed=0)
            out.update(hvps=r.hvps, trace_estimate=r.trace_estimate, reorth=r.settings["reorth"],
                       node_range=[float(r.nodes[r.weights > 0].min()), float(r.nodes.max())])
        elif task == "pyhessian":  # eigenvalues(top_n=5) then trace(), its defaults, in one process
            from landscape.analysis.pyhessian_backend import pyhessian_spectrum
            ph = pyhessian_spectrum(model, [(x, y)], top_n=5, trace=True, seed=0, device=x.device)
            out["rows"] = [{"task": "pyhessian-top5", "values": sorted(ph["eigenvalues"], reverse=True),
                            "hvps": ph["eigenvalue_hvps"], "seconds": ph["eigenvalue_seconds"]},
                           {"task": "pyhessian-trace", "estimate": ph["trace"], "hvps": ph["trace_hvps"],
                            "seconds": ph["trace_seconds"]}]
            out["hvps"] = ph["eigenvalue_hvps"] + ph["trace_hvps"]
        elif task.startswith("eigenthings"):
            import hessian_eigenthings as he
            op = he.HessianOperator(model.eval(), [(x, y)], he.supervised_loss(torch.nn.functional.cross_entropy))
            count = _counted(op)
            if task.startswith("eigenthings-top5"):
                kw = {"max_iter": 20} if task.endswith("-20") else {}
                r = he.lanczos(op, k=5, which="LA", seed=0, **kw)
                out.update(values=[float(v) for v in r.eigenvalues], converged=[bool(c) for c in r.converged],
                           settings=kw or "defaults (max_iter = 2k = 10)")
            elif task == "eigenthings-trace":
                r = he.trace(op, seed=0, **({"num_matvecs": spec["trace_max_hvps"]}
                                            if spec.get("trace_max_hvps") else {}))
                out.update(estimate=float(r.estimate) if hasattr(r, "estimate") else float(r.trace))
            else:
                r = he.spectral_density(op, num_runs=spec.get("density_probes", 3), lanczos_steps=cap or 80,
                                        seed=0)
            out["hvps"] = count[0]
        else:
            raise SystemExit(f"unknown task {task}")
        out["seconds"] = time.perf_counter() - t0
    out["peak"] = rss.peak
    _ = np
    return out


# --- parent side ----------------------------------------------------------------------------------------

def run_task(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                           env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {**spec, "error": f"exit {p.returncode}: {tail[:200]}"}
    res = json.loads(lines[-1])
    res["wall"] = time.perf_counter() - t0
    return {**spec, **res}


def _gb(b) -> str:
    return "-" if b is None else f"{b / 1e9:.2f} GB"


def _err(row: dict, ref: dict | None) -> str:
    import numpy as np
    if "values" not in row:
        return "-"
    vals = np.asarray(row["values"], dtype=float)
    if ref and "values" in ref:
        r = np.asarray(ref["values"], dtype=float)
        return f"{np.max(np.abs(vals - r) / np.abs(r)):.1e}"
    if "residuals" in row:
        return f"{np.max(np.asarray(row['residuals']) / np.abs(vals)):.1e} (bound)"
    return "-"


def report(rows: list[dict]) -> str:
    costs = [r for r in rows if r["task"] == "costs" and "error" not in r]
    lines = ["| model | weights | samples | s / gradient | s / HVP | HVP / gradient |", "|---|---|---|---|---|---|"]
    lines = [*lines, *(f"| {r['model']} | {r['num_params']:,} | {r['samples']} | {r['grad_seconds']:.3g} | "
                       f"{r['hvp_seconds']:.3g} | {r['hvp_seconds'] / r['grad_seconds']:.2f} |" for r in costs),
             ""] if costs else []
    lines += ["| model | run | HVPs | seconds | peak memory | estimated peak | est./measured | error | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    refs = {r["model"]: r for r in rows if r["task"] == "ref-top5" and "error" not in r}
    for r in rows:
        if r["task"] == "costs":
            continue
        if "error" in r:
            lines.append(f"| {r['model']} | {r['task']} | - | - | - | - | - | - | {r['error']} |")
            continue
        note = []
        if r.get("max_steps"):
            note.append(f"capped at {r['max_steps']} steps")
        if "converged" in r:
            c = r["converged"]
            note.append("converged" if (all(c) if isinstance(c, list) else c) else "NOT converged")
        if r.get("note"):
            note.append(r["note"])
        if r.get("plan"):
            p = r["plan"]
            note.append(f"{p['reorth']} reorth, {p['capacity']} {p['dtype']} vectors"
                        + (", thick restarts" if p["thick_restart"] else ""))
        if r["task"].endswith("density") and r.get("density_probes"):
            note.append(f"{r['density_probes']} probe(s)")
        if "estimate" in r:
            note.append(f"trace {r['estimate']:.4g}" + (f" +- {1.96 * r['stderr']:.2g}" if r.get("stderr") else ""))
        if "trace_estimate" in r:
            note.append(f"trace {r['trace_estimate']:.4g}")
        est = r.get("estimate_peak")
        ratio = f"{est / r['peak']:.2f}" if est else "-"
        err = _err(r, refs.get(r["model"]) if r["task"] != "ref-top5" else None)
        lines.append(f"| {r['model']} | {r['task']} | {r['hvps']} | {r['seconds']:.1f} | {_gb(r['peak'])} | "
                     f"{_gb(est)} | {ratio} | {err} | {'; '.join(note)} |")
    return "\n".join(lines)


def _per_model(values: list[str], cast) -> dict:
    out = {}
    for v in values or []:
        k, _, x = v.partition("=")
        out[k] = cast(x)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--samples", nargs="*", help="MODEL=N (default: cnn-small 256, the others 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", nargs="*", help="MODEL=N: cap every Lanczos run of MODEL at N steps")
    ap.add_argument("--density-probes", nargs="*", help="MODEL=N probes of our density (default 3)")
    ap.add_argument("--no-peers", action="store_true", help="skip PyHessian and hessian-eigenthings")
    ap.add_argument("--no-reference", action="store_true", help="skip the tight float64 reference top-5")
    ap.add_argument("--tasks", help="comma-separated subset of the tasks")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.json"))
    ap.add_argument("--report", nargs="+", metavar="JSON", help="print the tables of earlier runs' JSON files")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(work(json.loads(args.worker))))
        return 0
    if args.report:
        print(report([r for f in args.report for r in json.loads(Path(f).read_text())["rows"]]))
        return 0
    samples = {**DEFAULT_SAMPLES, **_per_model(args.samples, int)}
    caps, probes = _per_model(args.max_steps, int), _per_model(args.density_probes, int)
    rows = []
    for name in args.models.split(","):
        tasks = ["costs", *OUR_TASKS]
        if not args.no_reference:
            tasks.append("ref-top5")
        if not args.no_peers:
            tasks += PEER_TASKS
        if args.tasks:
            tasks = [t for t in tasks if t in args.tasks.split(",")]
        for task in tasks:
            spec = {"task": task, "model": name, "samples": samples[name], "threads": args.threads,
                    "max_steps": caps.get(name), "density_probes": probes.get(name, 3),
                    "float64": task == "ref-top5", "timing_repeats": 1 if caps.get(name) else 2}
            row = run_task(spec, args.timeout)
            if "rows" in row:  # one process, several runs (PyHessian): each row with the process's peak
                sub = row.pop("rows")
                rows += [{**row, **r, "note": "one process with the runs above/below; peak is the process's"}
                         for r in sub]
            else:
                rows.append(row)
            brief = {k: row.get(k) for k in ("hvps", "seconds", "peak", "estimate_peak", "error") if k in row}
            print(f"[{time.strftime('%H:%M:%S')}] {name} {task}: {brief}", file=sys.stderr, flush=True)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"kind": "benchmark", "benchmark": "scale", "threads": args.threads,
                                       "rows": rows}, indent=1))
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
