"""The loss landscape in input space: the picture that shows gradient masking, and the input curvature.

``input_surface``: the loss at x + a * eps * g + b * eps * r for each sample, with g the attack's first step
direction at x (Linf: the sign of the input gradient of the cross-entropy; L2: the unit gradient) and r a
random direction of the same size (Linf: random signs; L2: a Gaussian direction of unit norm), a and b on a
grid in units of eps (Tramer et al. 2018, Fig. 1; Engstrom et al. 2018). A robust model gives a smooth bowl
that rises along g; a masked one a surface that is flat or jagged along g (a zero gradient gives g = 0: the
a-axis is exactly flat, which is the point). Each sample's surface is kept, and their mean.

``input_curvature``: each sample's top eigenvalue of the Hessian of its loss with respect to its input (the
quantity CURE regularizes, Moosavi-Dezfooli et al. 2019), by Lanczos on input Hessian-vector products, all
samples of a batch at once: in eval mode a sample's loss depends on its own input only, so one HVP of the
summed loss gives every sample's own HVP. Written here rather than with ``analysis.lanczos`` (one operator
over parameters) because this is n independent small problems advanced together.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..attack_spec import AttackSpec
from ..attacks import batch_generator, eval_mode, input_gradient
from ..constraints import validate
from ..errors import ConfigError
from ..finite import NonFiniteOutputError, check_outputs, nonfinite_rows, refuse_nonfinite
from ..inputs import check_batch
from ..io import save_npz, write_json
from ..names import INPUT_SURFACE_FILES
from ..precision import full_float32
from ..progress import Callback, report
from .settings import CONSTRAINTS as SETTINGS
from .surface_result import parse_grid

EXAMPLES = 16     # per-sample surfaces kept in the JSON (all of them go to the .npz)


@dataclass
class InputSurfaceResult:
    """Loss and accuracy at x + a eps g + b eps r: ``loss`` (n, len(a), len(b)) per sample, ``mean_loss`` and
    ``accuracy`` (len(a), len(b)) over the samples; ``curvature`` (n,) the input-Hessian top eigenvalue of
    each sample (None when not computed)."""
    a: np.ndarray
    b: np.ndarray
    loss: np.ndarray
    correct: np.ndarray
    attack: AttackSpec
    seed: int
    zero_gradient: np.ndarray
    curvature: np.ndarray | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    kind: ClassVar[str] = "input_surface"

    @property
    def mean_loss(self) -> np.ndarray:
        return self.loss.mean(0)

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct.mean(0)

    def roughness(self) -> np.ndarray:
        """Per sample: the mean absolute second difference of its loss along a (at b = 0), relative to the
        loss range along that line: near 0 for a smooth bowl, large for a jagged surface."""
        j = int(np.argmin(np.abs(self.b)))
        line = self.loss[:, :, j]
        second = np.abs(np.diff(line, 2, axis=1)).mean(1) if line.shape[1] > 2 else np.zeros(len(line))
        span = line.max(1) - line.min(1)
        return np.where(span > 0, second / np.maximum(span, 1e-12), 0.0)

    def rise_along_gradient(self, a: float | None = None) -> np.ndarray:
        """Per sample: loss at (a, b = 0) minus the loss at the origin, ``a`` the grid's largest by default, or
        the grid point nearest ``a`` (``a=1``: the budget's edge): how much the gradient step raises the loss
        (about 0 for a masked sample)."""
        i0, j = int(np.argmin(np.abs(self.a))), int(np.argmin(np.abs(self.b)))
        i = len(self.a) - 1 if a is None else int(np.argmin(np.abs(self.a - a)))
        return self.loss[:, i, j] - self.loss[:, i0, j]

    def rise_summary(self) -> dict:
        """The rise along the gradient, at eps (``within_eps``) and at the grid's end (``at_end``), each as the
        median over the samples beside the mean, with the share of samples whose input gradient is zero or
        not finite (their rise is exactly 0: the picture of a masked model). The mean alone can be one
        sample's: 63 zero gradients and one steep sample give a mean far from every sample; the median is
        what most samples do."""
        n = len(self.zero_gradient)
        zero = int(self.zero_gradient.sum())
        out = {"zero_gradient_samples": zero, "zero_gradient_share": zero / n if n else 0.0}
        for key, a in (("within_eps", 1.0), ("at_end", None)):
            r = self.rise_along_gradient(a)
            out[key] = {"a": float(self.a[len(self.a) - 1 if a is None else int(np.argmin(np.abs(self.a - a)))]),
                        "mean": float(np.mean(r)), "median": float(np.median(r)),
                        "mean_without_zero_gradients": float(np.mean(r[~self.zero_gradient]))
                        if zero < n else None}
        return out

    def curvature_summary(self) -> dict | None:
        """Median, mean and max of the per-sample input curvature over the samples where it is finite, with the
        count of those where it is not (None when not computed)."""
        if self.curvature is None:
            return None
        c = self.curvature
        ok = c[np.isfinite(c)]
        stats = ({"mean": float(ok.mean()), "median": float(np.median(ok)), "max": float(ok.max())} if ok.size
                 else {"mean": None, "median": None, "max": None})
        return {"per_sample": [float(v) if np.isfinite(v) else None for v in c], **stats,
                "nonfinite_samples": int(c.size - ok.size)}

    def summary(self) -> str:
        """One line for a terminal or a report: the loss at the inputs, the rise along the gradient (median and
        mean, at eps and at the grid's end), the share of zero gradients and the input curvature."""
        i0, j0 = int(np.argmin(np.abs(self.a))), int(np.argmin(np.abs(self.b)))
        rs, n = self.rise_summary(), len(self.zero_gradient)
        e, end = rs["within_eps"], rs["at_end"]
        line = (f"loss at the inputs {float(self.loss[:, i0, j0].mean()):.4g}; rise along the gradient at eps: "
                f"median {e['median']:.4g}, mean {e['mean']:.4g}; at a = {end['a']:g}: median {end['median']:.4g}, "
                f"mean {end['mean']:.4g}; {rs['zero_gradient_samples']} of {n} samples "
                f"({100 * rs['zero_gradient_share']:.0f}%) with a zero or non-finite input gradient (flat along it)")
        c = self.curvature_summary()
        if c is not None and c["median"] is not None:
            line += f"; input curvature median {c['median']:.4g}, max {c['max']:.4g}"
        if c is not None and c["nonfinite_samples"]:
            line += f" ({c['nonfinite_samples']} samples' not finite)"
        return line

    def to_dict(self) -> dict:
        """JSON-ready. ``rise_along_gradient`` / ``rise_within_eps`` are means over the samples (as before);
        ``rise`` holds each with its median and the share of zero gradients (``rise_summary``), and
        ``summary`` the one line of ``summary()``."""
        i0, j0 = int(np.argmin(np.abs(self.a))), int(np.argmin(np.abs(self.b)))
        rs = self.rise_summary()
        d = {"kind": self.kind, "landscape_version": __version__,
             # of the attack only eps and norm are used (no PGD runs), so only they are recorded
             "settings": {"samples": int(self.loss.shape[0]), "seed": self.seed,
                          "attack": {"eps": self.attack.eps, "norm": self.attack.norm}, **self.settings},
             "seconds": self.seconds, "n": int(self.loss.shape[0]), "a": self.a.tolist(), "b": self.b.tolist(),
             "mean_loss": self.mean_loss.tolist(), "accuracy": self.accuracy.tolist(),
             "loss_at_input": float(self.loss[:, i0, j0].mean()),
             "zero_gradient_samples": rs["zero_gradient_samples"],
             "zero_gradient_share": rs["zero_gradient_share"],
             "rise_along_gradient": rs["at_end"]["mean"],
             "rise_along_gradient_median": rs["at_end"]["median"],
             "rise_within_eps": rs["within_eps"]["mean"],
             "rise_within_eps_median": rs["within_eps"]["median"],
             "rise": rs,
             "roughness": float(np.mean(self.roughness())),
             "summary": self.summary(),
             "examples": self.loss[:EXAMPLES].tolist()}
        if self.curvature is not None:
            d["curvature"] = self.curvature_summary()
        return d

    def save(self, folder: str | os.PathLike, **meta: Any) -> dict:
        """Write the result into ``folder`` as ``names.INPUT_SURFACE_FILES``: ``input_surface.json``
        (``to_dict()`` with ``meta``, e.g. the checkpoint it measured) and ``input_surface.npz`` (each
        sample's arrays), atomically; returns the JSON's dict."""
        folder = Path(folder)
        d = {**self.to_dict(), **meta}
        write_json(folder / INPUT_SURFACE_FILES[0], d)
        arrays = {"a": self.a, "b": self.b, "loss": self.loss, "correct": self.correct,
                  "zero_gradient": self.zero_gradient}
        if self.curvature is not None:
            arrays["curvature"] = self.curvature
        save_npz(folder / INPUT_SURFACE_FILES[1], **arrays)
        return d


def _directions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec,
                generator: torch.Generator, at: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g, r, zero): the attack's step direction, a random direction of the same size, and which samples have
    an all-zero or non-finite gradient (their g is 0: the a-axis is flat). Logits that are not finite at the
    inputs are refused (``finite``; ``at`` says which batch). Cost: one forward+backward pass."""
    grad, _, zero = input_gradient(model, x, y, check_finite=at or True)
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    shape = (-1, *([1] * (x.dim() - 1)))
    if attack.norm == "linf":
        g = grad.sign()
        r = torch.randint(0, 2, x.shape, generator=generator).to(x) * 2 - 1
    else:
        g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(shape)
        r = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        r = r / r.flatten(1).norm(dim=1).view(shape)
    return g, r, zero


def input_surface(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec,
                  a: Any = "-2:2:21", b: Any = "-2:2:21", seed: int = 0, batch_size: int = 256,
                  clip: bool = True, curvature_iters: int = 0, callback: Callback = None,
                  tf32: bool = False) -> InputSurfaceResult:
    """Each sample's loss and correctness on the grid ``a`` x ``b`` (units of ``attack.eps``) around its input
    (module doc); ``clip`` keeps the points in [0, 1]; ``curvature_iters > 0`` adds ``input_curvature``. The
    random direction of batch i is seeded by (seed, i). Cost: one forward+backward pass, then one forward per
    grid point, per sample (plus ``curvature_iters`` input HVPs)."""
    if not isinstance(attack, AttackSpec):
        raise ConfigError(f"input_surface needs an AttackSpec (its eps and norm), got {type(attack).__name__}")
    if attack.eps <= 0:
        raise ConfigError("the input-space surface is drawn in units of eps: it needs eps > 0")
    ga, gb = parse_grid(a, "a"), parse_grid(b, "b")
    validate({"curvature_iters": curvature_iters, "seed": seed}, SETTINGS)   # landscape-surface's ranges
    with full_float32(tf32):   # its one forward pass, as the rest, without TF32
        check_batch(model, x, y, "input_surface")
    with full_float32(tf32):   # TF32 off, as every analysis (landscape.precision)
        t0 = time.perf_counter()
        n = len(y)
        loss = np.zeros((n, len(ga), len(gb)))
        correct = np.zeros((n, len(ga), len(gb)), dtype=bool)
        zero = np.zeros(n, dtype=bool)
        total, done = n * len(ga) * len(gb), 0
        for lo in range(0, n, batch_size):
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            part = "" if len(yb) == n else f"(the batch of samples {lo}-{lo + len(yb) - 1})"
            g, r, z = _directions(model, xb, yb, attack, batch_generator(seed, lo), part)
            zero[lo:lo + len(yb)] = z.cpu().numpy()
            with eval_mode(model), torch.no_grad():
                for i, ai in enumerate(ga):
                    for j, bj in enumerate(gb):
                        xp = xb + attack.eps * (float(ai) * g + float(bj) * r)
                        if clip:
                            xp = xp.clamp(0, 1)
                        logits = check_outputs(model(xp), f"at the grid point a = {float(ai):g}, b = {float(bj):g}"
                                               + (f" {part}" if part else ""), "surface point")
                        loss[lo:lo + len(yb), i, j] = F.cross_entropy(logits, yb, reduction="none").double().cpu().numpy()
                        correct[lo:lo + len(yb), i, j] = (logits.argmax(1) == yb).cpu().numpy()
                        done += len(yb)
                        report(callback, done, total)
        curv = input_curvature(model, x, y, curvature_iters, seed, batch_size, tf32) if curvature_iters else None
        return InputSurfaceResult(ga, gb, loss, correct, attack, int(seed), zero, curv, time.perf_counter() - t0,
                                  {"clip": clip, "curvature_iters": curvature_iters, "batch_size": batch_size,
                                   "tf32": bool(tf32),
                                   "direction": "sign of the input gradient" if attack.norm == "linf"
                                   else "unit input gradient", "random": "random signs" if attack.norm == "linf"
                                   else "unit Gaussian"})


def input_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
              check_finite: bool | str = True) -> torch.Tensor:
    """Each sample's input-Hessian times its own slice of ``v``: d^2 CE(f(x_i), y_i) / dx_i^2 v_i, for all i at
    once (eval mode: samples do not interact). A model whose loss does not depend on its input through
    autograd, or whose input gradient does not (one that rounds or quantizes its inputs), has a zero input
    Hessian: zeros, not an error. ``check_finite`` (True, or a phrase saying where): refuse NaN or
    infinite logits (``finite``). Cost: one forward and two backward passes."""
    with eval_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        if check_finite:
            refuse_nonfinite(nonfinite_rows(logits), len(x), check_finite if isinstance(check_finite, str) else "",
                             "input curvature")
        loss = F.cross_entropy(logits, y, reduction="sum")
        if not loss.requires_grad:
            return torch.zeros_like(x)
        g, = torch.autograd.grad(loss, xg, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            return torch.zeros_like(x)
        hv, = torch.autograd.grad((g * v).sum(), xg, allow_unused=True)
    return torch.zeros_like(x) if hv is None else hv.detach()


def input_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20, seed: int = 0,
                    batch_size: int = 256, tf32: bool = False) -> np.ndarray:
    """(n,) the largest eigenvalue of each sample's input Hessian: ``iters`` Lanczos steps with full
    reorthogonalization, every sample of a batch advanced together (a sample whose Krylov space is exhausted,
    as happens after at most rank + 1 steps, stops there: its tridiagonal is cut at that size). Exact once
    ``iters`` exceeds the Hessian's rank (at most classes - 1 for a piecewise-linear network). A zero input
    Hessian (a model that quantizes its inputs) gives 0; NaN or infinite logits are refused (``finite``), and
    so are Hessian-vector products that are not finite although the logits are (a layer without a second
    derivative there), counting the samples: no eigenvalue is computed from them. Cost:
    ``iters`` input HVPs per sample and O(iters^2 d) per sample for reorthogonalization."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"curvature iterations must be a positive integer, got {iters!r}")
    with full_float32(tf32):   # TF32 would floor each HVP at ~1e-3 relative
        out = []
        for lo in range(0, len(y), batch_size):
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
            m, d = len(yb), xb[0].numel()
            gen = batch_generator(seed, lo)
            v = torch.randn((m, d), generator=gen, dtype=torch.float64)
            v = (v / v.norm(dim=1, keepdim=True)).to(xb.device)
            basis = [v]
            alpha = torch.zeros(m, iters, dtype=torch.float64, device=xb.device)
            beta = torch.zeros(m, iters, dtype=torch.float64, device=xb.device)
            alive = torch.ones(m, dtype=torch.bool, device=xb.device)
            broken = torch.zeros(m, dtype=torch.bool, device=xb.device)
            size = torch.full((m,), iters, dtype=torch.long, device=xb.device)
            part = "" if m == len(y) else f"(the batch of samples {lo}-{lo + m - 1})"
            for k in range(iters):
                w = input_hvp(model, xb, yb, basis[-1].to(xb.dtype).view_as(xb),
                              check_finite=(part or True) if k == 0 else False).flatten(1).double()
                bad = alive & ~torch.isfinite(w).all(1)    # stop there: refused after the batch
                broken |= bad
                alive &= ~bad
                w = torch.where(alive.view(-1, 1), w, 0.0)
                alpha[:, k] = torch.where(alive, (w * basis[-1]).sum(1), 0.0)
                for u in basis:                      # full reorthogonalization (twice is enough)
                    w = w - (w * u).sum(1, keepdim=True) * u
                for u in basis:
                    w = w - (w * u).sum(1, keepdim=True) * u
                nrm = w.norm(dim=1)
                scale = alpha[:, :k + 1].abs().amax(1).clamp_min(1e-30)
                done = alive & (nrm <= 1e-8 * scale)
                size = torch.where(done, torch.full_like(size, k + 1), size)
                alive &= ~done
                if k + 1 == iters or not bool(alive.any()):
                    break
                beta[:, k] = torch.where(alive, nrm, 0.0)
                basis.append(torch.where(alive.view(-1, 1), w / nrm.clamp_min(1e-300).view(-1, 1), 0.0))
            k_bad = int(broken.sum())
            if k_bad:
                raise NonFiniteOutputError(
                    f"the input Hessian is not finite for {k_bad} of {m} samples{' ' + part if part else ''} (NaN or "
                    "inf second derivatives of the loss although the logits are finite: a layer without a second "
                    "derivative at those inputs, e.g. sqrt or log at 0); no curvature is computed from them "
                    "(curvature_iters=0, --curvature-iters 0, draws the surface without it)")
            top = torch.empty(m, dtype=torch.float64)
            for i in range(m):
                s = int(size[i])
                t = torch.diag(alpha[i, :s]) + torch.diag(beta[i, :s - 1], 1) + torch.diag(beta[i, :s - 1], -1)
                top[i] = torch.linalg.eigvalsh(t.cpu())[-1]
            out.append(top.numpy())
        return np.concatenate(out)


__all__ = ["InputSurfaceResult", "input_curvature", "input_hvp", "input_surface"]
