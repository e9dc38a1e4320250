"""PyHessian 0.1 as a backend, for cross-checks of ``landscape``'s own estimators (``landscape-spectrum
--backend pyhessian``, ``benchmarks/spectrum_vs_pyhessian.py``).

The glue patches the third-party module for the duration of one call: its two HVP routines are wrapped to
count the HVPs it spends, and put back afterwards, whatever happens.
"""
from __future__ import annotations

import importlib
import time
import warnings

import numpy as np
import torch

from ..attacks import eval_mode
from ..errors import ConfigError


def pyhessian_spectrum(model: torch.nn.Module, batches: list, top_n: int = 1, trace: bool = False,
                       seed: int = 0, device: torch.device | str = "cpu", eigenvalues: bool = True,
                       trace_max_iter: int = 100, trace_tol: float = 1e-3, density_steps: int = 0) -> dict:
    """Run PyHessian 0.1 (``eigenvalues(top_n)`` unless ``eigenvalues=False``, optionally
    ``trace(trace_max_iter, trace_tol)``, its defaults 100 and 1e-3, and with ``density_steps`` one probe of
    ``density(density_steps)``) on ``model`` and the given batches; returns its values with the HVPs it spent
    (counted by wrapping its HVP routines) and seconds. PyHessian draws from the global RNG: it runs under
    ``torch.random.fork_rng`` seeded with ``seed``. Its one-batch mode fills parameter ``.grad`` fields;
    they are cleared afterwards. PyHessian 0.1's density calls ``torch.eig``, which torch 2 removed: it
    raises there, and the error passes through."""
    try:
        ph = importlib.import_module("pyhessian.hessian")  # the package rebinds .hessian to the class
    except ImportError as e:
        raise ConfigError("the pyhessian backend needs PyHessian 0.1: pip install 'landscape[pyhessian]'") from e
    device = torch.device(device)
    criterion = torch.nn.CrossEntropyLoss()
    count = [0]
    orig_hvp, orig_loader = ph.hessian_vector_product, ph.hessian.dataloader_hv_product

    def counted_hvp(*a, **kw):
        count[0] += 1
        return orig_hvp(*a, **kw)

    def counted_loader(self, v):
        count[0] += 1
        return orig_loader(self, v)

    out: dict = {"backend": "pyhessian", "pyhessian_version": "0.1", "top_n": top_n, "seed": seed}
    ph.hessian_vector_product, ph.hessian.dataloader_hv_product = counted_hvp, counted_loader
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with eval_mode(model), torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            # its one-batch mode calls backward(create_graph=True), which warns about a reference cycle
            warnings.filterwarnings("ignore", message="Using backward", category=UserWarning)
            torch.manual_seed(int(seed))
            t0 = time.perf_counter()
            data = dict(data=tuple(batches[0])) if len(batches) == 1 else dict(dataloader=list(batches))
            h = ph.hessian(model, criterion, cuda=device.type == "cuda", **data)
            if eigenvalues:
                vals, _ = h.eigenvalues(top_n=top_n)
                out["eigenvalues"] = [float(v) for v in vals]
                out["eigenvalue_hvps"], out["eigenvalue_seconds"] = count[0], time.perf_counter() - t0
            if trace:
                count[0], t1 = 0, time.perf_counter()
                terms = h.trace(maxIter=trace_max_iter, tol=trace_tol)
                out["trace"], out["trace_probes"] = float(np.mean(terms)), len(terms)
                out["trace_hvps"], out["trace_seconds"] = count[0], time.perf_counter() - t1
            if density_steps:
                count[0], t2 = 0, time.perf_counter()
                nodes, weights = h.density(iter=density_steps, n_v=1)
                out["density_nodes"], out["density_weights"] = nodes, weights
                out["density_hvps"], out["density_seconds"] = count[0], time.perf_counter() - t2
    finally:
        ph.hessian_vector_product, ph.hessian.dataloader_hv_product = orig_hvp, orig_loader
        model.zero_grad(set_to_none=True)
    return out


__all__ = ["pyhessian_spectrum"]
