"""Are the true residuals of a float32 top-k at a floor set by float32 HVPs? (issue 10: WRN-34-10's top pair
stalled at a relative residual of 1.17e-3 against tol 1e-3.)

    python benchmarks/residual_precision.py --model wrn-34-10 --samples 8 --threads 2 --out benchmarks/results/residual_precision_wrn.json
    python benchmarks/residual_precision.py --model wrn-34-10 --samples 8 --threads 2 --basis-dtype float64 --max-memory 14GB \
        --out benchmarks/results/residual_precision_wrn_basis64.json   # a float64 basis needs more than the default budget
    python benchmarks/residual_precision.py --model wrn-34-10 --samples 8 --threads 2 --basis-dtype float64 --no-vectors \
        --out benchmarks/results/residual_precision_wrn_basis64_default_budget.json   # the top-5 alone, default budget
    python benchmarks/residual_precision.py --model cnn-small --samples 8      # seconds

One run: the default top-k (float32 operator, tol 1e-3, the eigenvectors returned) on the random-init model and
CIFAR-shaped samples of benchmarks/scale.py, then for each returned pair (lambda, v), with ||v|| = 1:
  r32 = ||H v - lambda v|| / |lambda|   with the float32 operator (top_eigenvalues reports ||H v - lambda v||)
  r64 = the same with a float64 copy of the model and samples (H64), and rho64 = v^T H64 v
r64 well below r32 means the float32 residual is measured at its rounding floor; r64 ~ r32 means the vector
itself is not converged. Cost: the top-k's HVPs, then k float32 and k float64 HVPs (a float64 HVP ~2x the
memory of a float32 one). The JSON is written after each stage.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from landscape.analysis import HessianOperator, top_eigenvalues  # noqa: E402
from landscape.io import write_json  # noqa: E402
from scale import RssSampler, _setup  # noqa: E402


def residual(op: HessianOperator, lam: float, v: torch.Tensor) -> tuple[float, float]:
    """(||H v - lam v|| / |lam|, v^T H v) for a unit vector v, in the operator's dtype. One HVP."""
    hv = op.matvec(v.to(op.dtype))
    vv = v.to(hv.dtype)
    return float(torch.linalg.norm(hv - lam * vv) / abs(lam)), float(vv @ hv)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn-small")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="residual_precision.json")
    ap.add_argument("--basis-dtype", choices=("float32", "float64"), default=None,
                    help="the Lanczos basis's dtype (default: the operator's, float32)")
    ap.add_argument("--max-memory", default=None, help="memory budget, e.g. 14GB (default: the library's)")
    ap.add_argument("--no-vectors", action="store_true",
                    help="only the top-k (no eigenvectors kept, no float64 re-check): its HVPs, time and peak RSS")
    a = ap.parse_args()
    model, x, y = _setup({"threads": a.threads, "model": a.model, "samples": a.samples})   # as scale.py measures
    out: dict = {"model": a.model, "samples": a.samples, "k": a.k, "threads": a.threads, "basis_dtype": a.basis_dtype,
                 "max_memory": a.max_memory,
                 "num_params": sum(p.numel() for p in model.parameters())}
    t0 = time.perf_counter()
    op = HessianOperator(model, (x, y))
    with RssSampler() as rss:
        r = top_eigenvalues(op, k=a.k, tol=1e-3, seed=0, return_vectors=not a.no_vectors,
                            basis_dtype=getattr(torch, a.basis_dtype) if a.basis_dtype else None,
                            max_memory=a.max_memory)
    out["peak_rss_bytes"] = rss.peak
    out["relative_residuals"] = [float(res / abs(v)) for res, v in zip(r.residuals, r.values)]
    out.update(values=[float(v) for v in r.values], reported_residuals=[float(v) for v in r.residuals],
               converged=[bool(c) for c in r.converged], hvps=r.hvps, topk_seconds=time.perf_counter() - t0,
               memory=r.settings.get("memory"))
    write_json(Path(a.out), out)
    print(f"top-{a.k}: {r.hvps} HVPs, {out['topk_seconds']:.0f} s, peak RSS {rss.peak / 1e9:.2f} GB; values "
          f"{out['values']}; relative residuals {out['relative_residuals']}; converged {out['converged']}", flush=True)
    if a.no_vectors:
        return 0
    vecs = [v.detach().to("cpu", torch.float64) for v in r.vectors]
    vecs = [v / torch.linalg.norm(v) for v in vecs]
    out["r32"] = [residual(op, lam, v)[0] for lam, v in zip(out["values"], vecs)]
    write_json(Path(a.out), out)
    del op, r
    m64 = copy.deepcopy(model).double()
    op64 = HessianOperator(m64, (x.double(), y))
    t1 = time.perf_counter()
    pairs = [residual(op64, lam, v) for lam, v in zip(out["values"], vecs)]
    out.update(r64=[p[0] for p in pairs], rho64=[p[1] for p in pairs], float64_seconds=time.perf_counter() - t1)
    write_json(Path(a.out), out)
    for i, lam in enumerate(out["values"]):
        print(f"pair {i + 1}: lambda {lam:.6g}  r32 {out['r32'][i]:.3g}  r64 {out['r64'][i]:.3g}  "
              f"rho64 {out['rho64'][i]:.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
