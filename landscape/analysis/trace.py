"""tr(H) from Hessian-vector products, with an error estimate: Hutchinson, Hutch++ and XTrace.

- ``hutchinson``: mean of g^T H g over Rademacher probes g; error: the terms' standard error.
- ``hutch++`` (Meyer, Musco, Musco & Woodruff 2021): Q = orth(H S) for s Rademacher columns S, the exact
  trace of Q^T H Q, plus Hutchinson on (I - QQ^T) H (I - QQ^T); error: those terms' standard error.
- ``xtrace`` (Epperly, Tropp & Webber, SIMAX 2024): s probes Omega (Gaussian, scaled to norm sqrt(n)),
  Y = H Omega = QR, Z = H Q (2s HVPs). For each i, the Hutch++ estimate whose low-rank part uses every
  probe but the i-th and whose Hutchinson part uses the i-th (unbiased, as omega_i is independent of the
  others), with the spherical normalization (n - s + 1) / ||(I - Q_i Q_i^T) omega_i||^2 of the paper's
  "improved" variant; the estimate is their mean and the error their standard error / sqrt(s). All s of
  them come from Y, Z, Q and R in O(n s^2) flops (the algebra is in ``_xtrace_estimates``). Every HVP
  serves both the low-rank part and the correction, which is why it beats Hutch++ at equal HVP counts.
- ``auto`` (default): the method that was best at that HVP count in ``benchmarks/trace_estimators.py``
  (``memory.AUTO_RULE``), kept to the memory budget by the rule of ``memory.plan_trace`` (XTrace when its
  probes fit, else Hutch++ with the largest sketch that fits, else Hutchinson); the result records what
  was chosen and why (``settings["chosen"]``, ``settings["auto_reason"]``). Measured there on the exact
  Hessian of a small CNN trained on digits (3,818 weights; the top 10 eigenvalues hold 80% of the trace,
  1,448 are negative), 100 seeds, RMS relative error / coverage of the stated 95% interval / stated stderr
  over observed RMS error:

      HVPs   hutchinson            hutch++ (sketch <= 20)   xtrace
        30   0.083 / 0.92 / 0.95   0.068 / 0.94 / 0.96      0.053 / 0.93 / 0.85
        90   0.047 / 0.96 / 0.98   0.023 / 0.93 / 0.91      0.018 / 0.95 / 0.92
       300   0.023 / 0.98 / 1.12   0.009 / 0.97 / 1.06      (run cut short on the shared machine)

  XTrace is best wherever measured, and every method's stated error is honest to within ~15%. Below 20
  HVPs (untested; XTrace then has fewer than 10 leave-one-out estimates for its error) auto uses Hutchinson.

Every estimator stops when the 95% half-width (Student t) <= ``tol`` * |estimate|, or at ``max_hvps``;
``tol=0`` spends all ``max_hvps``. XTrace grows its probe set by doubling (keeping Y, Q, Z) until the rule
holds. Probes come from a seeded CPU ``torch.Generator``, so every rank of a torchrun job draws the same.
Blocks of vectors go through ``op.matmat`` where the operator has one (``HessianOperator.matmat`` shares a
rebuilt gradient graph among a block: see ``benchmarks/hvp_matmat.py``).

Memory: ``memory.plan_trace`` decides, before any HVP, which estimator runs with how many probes (a
``memory.TracePlan``) within ``max_memory`` (the analysis's one budget, ``memory.MemoryBudget``, resolved once
by ``hessian_trace``): a method asked for by name (or a ``sketch_size``) that does not fit is refused with its
estimate (``MemoryBudgetError``, a ``ResourceError``), never swapped for another or cut to fewer probes; only
the probe block (how many probes go through one ``matmat``; the draws and the estimate do not depend on it)
shrinks to fit. ``auto`` chooses by its rule above and records why.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .._version import __version__
from ..constraints import validate
from ..errors import ConfigError
from .lanczos import op_settings
from .memory import MemoryBudget, TracePlan, _whole, plan_trace
from .settings import CONSTRAINTS as SETTINGS

Callback = Callable[[int, int], None] | None


@dataclass
class TraceResult:
    """A trace estimate with its standard error. ``samples``: the Hutchinson terms (of the deflated
    operator for Hutch++; their mean plus ``low_rank`` is the estimate), or for XTrace the s
    leave-one-out estimates (their mean is the estimate). ``low_rank``: the exact trace of the sketched
    part Q^T H Q; ``sketch_size``: s."""
    estimate: float
    stderr: float
    hvps: int
    method: str
    samples: np.ndarray
    low_rank: float = 0.0
    sketch_size: int = 0
    converged: bool = False
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def half_width(self) -> float:
        """Half-width of the 95% confidence interval (Student t with len(samples) - 1 dof)."""
        return _half_width(self.stderr, len(self.samples))

    def to_dict(self) -> dict:
        return {"kind": "trace", "landscape_version": __version__, "settings": self.settings,
                "seconds": self.seconds, "estimate": self.estimate, "stderr": self.stderr,
                "half_width_95": self.half_width, "hvps": int(self.hvps), "method": self.method,
                "low_rank": self.low_rank, "sketch_size": int(self.sketch_size),
                "num_probes": int(len(self.samples)), "samples": [float(s) for s in self.samples],
                "converged": bool(self.converged)}

    def to_frame(self):
        """One row per probe: its term and the running estimate."""
        import pandas as pd
        s = np.asarray(self.samples, dtype=np.float64)
        base = 0.0 if self.method == "xtrace" else self.low_rank
        running = base + np.cumsum(s) / np.arange(1, len(s) + 1) if len(s) else s
        return pd.DataFrame({"probe": np.arange(1, len(s) + 1), "term": s, "running_estimate": running})


def _half_width(stderr: float, p: int) -> float:
    if p < 2:
        return math.inf if stderr else 0.0
    from scipy.stats import t
    return float(t.ppf(0.975, p - 1)) * stderr


def _stderr(terms: np.ndarray) -> float:
    return float(np.std(terms, ddof=1) / math.sqrt(len(terms))) if len(terms) > 1 else math.inf


def _rademacher(n: int, k: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """n x k float64 matrix of random signs (drawn column after column: blocks do not change the draws)."""
    return (torch.randint(0, 2, (k, n), generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1).T.to(device)


def _sphere(n: int, k: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """n x k float64 matrix of columns uniform on the sphere of radius sqrt(n)."""
    g = torch.randn(k, n, generator=gen, dtype=torch.float64)
    return g.mul_(math.sqrt(n) / g.norm(dim=1, keepdim=True)).T.to(device)


class _Counter:
    """Applies the operator to blocks of columns (``op.matmat`` where it exists, in the operator's
    preferred block size, at most ``max_block``), counting HVPs and reporting progress."""

    def __init__(self, op: Any, max_hvps: int, callback: Callback, max_block: int | None = None):
        self.op, self.max_hvps, self.callback, self.hvps = op, max_hvps, callback, 0
        self.max_block = max_block

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        if hasattr(self.op, "matmat"):
            out = self.op.matmat(V).to(V.dtype)
        else:
            out = torch.stack([self.op.matvec(V[:, j].contiguous()).to(V.dtype) for j in range(k)], 1)
        self.hvps += k
        if self.callback:
            self.callback(self.hvps, self.max_hvps)
        return out

    @property
    def block(self) -> int:
        """Vectors per call that make an HVP cheaper (``op.preferred_block``; 1 without matmat), at most
        ``max_block`` (what the memory budget holds)."""
        b = int(getattr(self.op, "preferred_block", 1)) if hasattr(self.op, "matmat") else 1
        return max(1, min(b, self.max_block)) if self.max_block else max(1, b)


def _orthonormalize(Y: torch.Tensor, Q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Extend the orthonormal basis Q by the new columns Y: returns (Q2, C, R2) with Y = Q C + Q2 R2
    (Gram-Schmidt against Q twice, then a QR of the rest)."""
    C = torch.zeros((0 if Q is None else Q.shape[1], Y.shape[1]), dtype=Y.dtype, device=Y.device)
    if Q is not None:
        for _ in range(2):
            c = Q.T @ Y
            Y = Y - Q @ c
            C = C + c
    Q2, R2 = torch.linalg.qr(Y)
    return Q2, C, R2


def _xtrace_estimates(Om: torch.Tensor, dOmY: torch.Tensor, Q: torch.Tensor, R: torch.Tensor,
                      Z: torch.Tensor) -> torch.Tensor:
    """The s leave-one-out XTrace estimates, for symmetric H, from Omega (n x s), diag(Omega^T H Omega),
    Y = H Omega = Q R and Z = H Q.

    Leaving out column i: range(Y without y_i) = range(Q) minus the direction Q s_i, s_i the normalized
    i-th column of R^{-T} (the one orthogonal to the other columns of R). With H_Q = Q^T Z, w_i = Q^T omega_i,
    t_i = Z^T omega_i and u_i = w_i - s_i (s_i . w_i), the projection onto range(Q_i) is Q (I - s_i s_i^T) Q^T,
        tr(Q_i^T H Q_i) = tr(H_Q) - s_i^T H_Q s_i,
        c_i = (I - Q_i Q_i^T) omega_i = omega_i - Q u_i,
        c_i^T H c_i = omega_i^T H omega_i - 2 t_i . u_i + u_i^T H_Q u_i,
        ||c_i||^2 = n - ||w_i||^2 + (s_i . w_i)^2,
    and estimate_i = tr(Q_i^T H Q_i) + (n - s + 1) c_i^T H c_i / ||c_i||^2. Cost O(n s^2 + s^3).
    """
    n, s = Om.shape
    HQ = Q.T @ Z
    HQ = (HQ + HQ.T) / 2
    W = Q.T @ Om
    T = Z.T @ Om
    S = torch.linalg.solve_triangular(R, torch.eye(s, dtype=R.dtype, device=R.device), upper=True).T  # R^{-T}
    S = S / S.norm(dim=0)
    sw = (S * W).sum(0)
    U = W - S * sw
    low = torch.trace(HQ) - (S * (HQ @ S)).sum(0)
    quad = dOmY - 2 * (T * U).sum(0) + (U * (HQ @ U)).sum(0)
    norm2 = n - (W * W).sum(0) + sw ** 2
    return low + (n - s + 1) * quad / norm2


def hessian_trace(op: Any, method: str = "auto", tol: float = 1e-2, max_hvps: int | None = None,
                  seed: int = 0, min_probes: int = 10, sketch_size: int | None = None,
                  max_memory: "int | str | MemoryBudget | None" = None, callback: Callback = None,
                  hvp_peak: int | None = None, plan: TracePlan | None = None) -> TraceResult:
    """Estimate tr(H) from HVPs (``op``: ``num_params``, ``device``, ``matvec``, optionally ``matmat``).

    Stops when the 95% half-width <= tol * |estimate| (after at least ``min_probes`` probes, i.e. terms
    or leave-one-out estimates) or at ``max_hvps`` (default 300); ``tol=0`` spends them all.
    ``tol`` is relative (``settings["tol"]``)
    ``sketch_size`` (Hutch++ only; asks for Hutch++): columns of S, default min(max_hvps // 3, 20).
    ``method``: ``auto`` (``memory.AUTO_RULE``), ``xtrace``, ``hutch++`` or ``hutchinson`` (module
    docstring). Cost: at most ``max_hvps`` HVPs; memory: ``memory.plan_trace``. ``max_memory`` is the
    analysis's one budget (None or "auto", "8GB", bytes of at least 1 MB, or a ``memory.MemoryBudget``),
    resolved here once: kept, or the request refused before any HVP with its estimate (``MemoryBudgetError``,
    a ``ResourceError``); ``hvp_peak`` is the measured peak of one HVP (default: the memory in use now, a
    lower bound). ``plan``: a ``memory.TracePlan`` made beforehand for this call's method, max_hvps and
    sketch_size (``memory.plan_spectrum``'s, which landscape-spectrum printed), run as it is.
    """
    # the ranges of landscape-spectrum's --trace-tol, --trace-max-hvps and --seed (analysis.settings)
    validate({"trace_tol": tol, "trace_max_hvps": max_hvps, "seed": seed}, SETTINGS)
    if _whole("min_probes", min_probes) < 2:
        raise ConfigError(f"min_probes must be at least 2, got {min_probes}")
    device = getattr(op, "device", torch.device("cpu"))
    if plan is None:   # the budget resolved once, here (a bare 8 refused), and planned before any HVP
        plan = plan_trace(op, method, max_hvps, MemoryBudget.of(max_memory, device), hvp_peak, sketch_size)
    else:
        _check_plan(plan, op, method, max_hvps, sketch_size)
    n = int(op.num_params)
    hvps = plan.max_hvps
    chosen = plan.chosen
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    apply = _Counter(op, hvps, callback, plan.probe_block)
    settings = {"method": method, "chosen": chosen, "auto_reason": plan.auto_reason, "tol": tol,
                "max_hvps": hvps, "seed": seed, "min_probes": min_probes, "max_memory": plan.max_memory,
                "max_memory_default": plan.max_memory_default, "probe_memory": plan.probe_memory,
                "estimated_peak": plan.estimated_peak, "probe_block": plan.probe_block}
    if chosen == "xtrace":
        res = _xtrace(apply, n, hvps, tol, min_probes, plan.sketch_size, gen, device)
    else:
        res = _hutchpp(apply, n, hvps, tol, min_probes, plan.sketch_size, chosen, gen, device)
    res.settings = {**settings, "sketch_size": res.sketch_size, "memory": plan.to_dict(),
                    "probes": "sphere" if chosen == "xtrace" else "rademacher", "operator": op_settings(op)}
    res.seconds = time.perf_counter() - t0
    return res


def _check_plan(plan: Any, op: Any, method: str, max_hvps: int | None, sketch_size: int | None) -> None:
    """A plan handed in must be a ``TracePlan`` made for this operator's size and this call's method,
    max_hvps and sketch_size (one-line ConfigError otherwise). Cost: none."""
    if not isinstance(plan, TracePlan):
        raise ConfigError(f"plan must be a TracePlan (memory.plan_trace), got {type(plan).__name__}")
    asked = (method, 300 if max_hvps is None else int(max_hvps), sketch_size, int(op.num_params))
    made = (plan.method, plan.max_hvps, plan.sketch_asked, plan.num_params)
    if asked != made:
        raise ConfigError(f"the trace plan was made for (method, max_hvps, sketch_size, num_params) = {made}, "
                          f"this call asks for {asked}")


def _converged(est: float, se: float, p: int, tol: float, min_probes: int) -> bool:
    return p >= min_probes and _half_width(se, p) <= tol * abs(est)


def _hutchpp(apply: _Counter, n: int, max_hvps: int, tol: float, min_probes: int, sketch: int,
             method: str, gen: torch.Generator, device: torch.device) -> TraceResult:
    """Hutch++ (``method="hutch++"``, a sketch of ``sketch`` columns as ``plan_trace`` decided) or, with no
    sketch, Hutchinson: probes in blocks of the operator's preferred size (at most what the budget holds),
    the stopping rule checked after every block."""
    s, low_rank, Q = 0, 0.0, None
    if method == "hutch++":
        s = min(int(sketch), n)
        if s:
            Q = torch.linalg.qr(apply(_rademacher(n, s, gen, device)))[0]
            low_rank = float(torch.trace(Q.T @ apply(Q)))
            if s == n:  # Q spans everything: the trace is exact
                return TraceResult(low_rank, 0.0, apply.hvps, method, np.zeros(0), low_rank, s, True)
    terms = np.zeros(0)
    est, se, converged = low_rank, math.inf, False
    while apply.hvps < max_hvps:
        k = min(apply.block, max_hvps - apply.hvps)
        G = _rademacher(n, k, gen, device)
        if Q is not None:
            G = G - Q @ (Q.T @ G)
        terms = np.concatenate([terms, (G * apply(G)).sum(0).cpu().numpy()])
        est, se = low_rank + float(terms.mean()), _stderr(terms)
        if tol > 0 and _converged(est, se, len(terms), tol, min_probes):
            converged = True
            break
    return TraceResult(est, se, apply.hvps, method, terms, low_rank, s, converged)


def _xtrace(apply: _Counter, n: int, max_hvps: int, tol: float, min_probes: int, s_max: int,
            gen: torch.Generator, device: torch.device) -> TraceResult:
    """XTrace with s_max = min(max_hvps // 2, n - 1) probes (``plan_trace`` checked that they fit the memory
    budget), or with tol > 0 from max(min_probes, 10) probes doubling until the stopping rule holds.

    Omega, Q and Z are preallocated n x s_max float64 blocks filled column by column (no copies as s
    doubles), and each round's new probes go through in chunks of ~s_max / 8 columns (at least the
    operator's preferred block), so that the transient H Omega and its Gram-Schmidt stay small: peak
    ~4 n s_max doubles (3 blocks + one round's probes as they are drawn). Chunking changes nothing but
    round-off: each round's probes are one draw, and the estimates depend on range(Q) only."""
    s_next = s_max if tol == 0 else min(s_max, max(min_probes, 10))
    chunk = max(apply.block, -(-s_max // 8))
    Om, Q, Z = (torch.empty((n, s_max), dtype=torch.float64, device=device) for _ in range(3))
    R = torch.zeros((s_max, s_max), dtype=torch.float64, device=device)
    dOmY = torch.empty(s_max, dtype=torch.float64, device=device)
    s = 0                                                  # columns filled
    ests = np.zeros(0)
    est, se, converged = 0.0, math.inf, False
    while True:
        if s < s_next:  # one draw per round, as before chunking: the probes do not depend on the chunk size
            Om[:, s:s_next] = _sphere(n, s_next - s, gen, device)
        while s < s_next:
            k = min(chunk, s_next - s)
            Y = apply(Om[:, s:s + k])
            dOmY[s:s + k] = (Om[:, s:s + k] * Y).sum(0)
            Q2, C, R2 = _orthonormalize(Y, Q[:, :s] if s else None)
            del Y
            Q[:, s:s + k], R[:s, s:s + k], R[s:s + k, s:s + k] = Q2, C, R2
            Z[:, s:s + k] = apply(Q2)
            del Q2
            s += k
        Os, Qs, Zs, Rs = Om[:, :s], Q[:, :s], Z[:, :s], R[:s, :s]
        diag = Rs.diagonal().abs()
        if float(diag.min()) <= 1e-10 * float(diag.max()):
            # H Omega is rank-deficient: range(Q) holds range(H) (almost surely), so tr(Q^T H Q) is exact
            est, se, converged = float(torch.trace(Qs.T @ Zs)), 0.0, True
            ests = np.zeros(0)
            break
        ests = _xtrace_estimates(Os, dOmY[:s], Qs, Rs, Zs).cpu().numpy()
        est, se = float(ests.mean()), _stderr(ests)
        if tol > 0 and _converged(est, se, len(ests), tol, min_probes):
            converged = True
            break
        if s >= s_max:
            break
        s_next = min(2 * s, s_max)
    low_rank = float(torch.trace(Q[:, :s].T @ Z[:, :s]))
    return TraceResult(est, se, apply.hvps, "xtrace", ests, low_rank, s, converged)


__all__ = ["TraceResult", "hessian_trace"]
