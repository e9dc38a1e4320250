"""Run by tests/test_distributed.py, once in-process (``compute``) and once per rank under torchrun (``main``):
the same spectra and surface through the public API, so the test can compare the two."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import landscape as ls
from landscape import AttackSpec
from landscape.analysis import (HessianOperator, hessian_trace, loss_surface, random_directions,
                                spectral_density, top_eigenvalues)


def problem():
    """A small cnn-small-bn model and 90 digits samples (not a multiple of the attack batch)."""
    torch.manual_seed(0)
    model = ls.build_model("cnn-small-bn", "digits", seed=3)
    x, y = ls.load_dataset("digits", "test").tensors(90)
    return model, x, y


def compute(surface_out: Path) -> dict:
    """Top-3 eigenvalues, trace and density of the clean (BN batch statistics) and adversarial losses, and a
    2D adversarial surface (fixed examples) written to ``surface_out``."""
    model, x, y = problem()
    out: dict = {}
    ops = {"clean": HessianOperator(model, (x, y), bn="batch", batch_size=30, seed=1),
           "adversarial": HessianOperator(model, (x, y), loss="adversarial",
                                          attack=AttackSpec(eps=0.1, steps=3, batch_size=16), seed=1)}
    for name, op in ops.items():
        eig = top_eigenvalues(op, k=3, tol=1e-4, seed=2)
        tr = hessian_trace(op, tol=0.0, max_hvps=24, seed=2)
        rho = spectral_density(op, n_probes=2, lanczos_steps=12, seed=2)
        loss, grad = op.loss_and_grad()
        out[name] = {"eigenvalues": eig.values.tolist(), "eig_hvps": eig.hvps, "trace": tr.estimate,
                     "density_nodes": rho.nodes.ravel().tolist(),
                     "density_weights": rho.weights.ravel().tolist(),
                     "loss": loss, "grad_norm": float(grad.norm()), "num_samples": op.num_samples,
                     "local_samples": sum(len(b[0]) for b in op.batches)}
    dirs = random_directions(model, 2, seed=4)
    res = loss_surface(model, (x, y), dirs, "-1:1:5", "-0.5:0.5:3", loss="adversarial", attack=AttackSpec(eps=0.1, steps=2),
                       batch_size=16, seed=5, out=surface_out, overwrite=True)
    out["surface_loss"] = res.loss.tolist()
    return out


def main() -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    folder = Path(sys.argv[1])
    res = compute(folder / "surface")
    rank = dist.get_rank()
    (folder / f"rank{rank}.json").write_text(json.dumps(res))
    from landscape.distributed import finish
    finish()      # a barrier before gloo is torn down: no rank aborts at exit while a peer's messages fly


if __name__ == "__main__":
    main()
