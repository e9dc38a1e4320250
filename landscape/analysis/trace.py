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
  serves both the low-rank part and the correction, which is why it beats Hutch++ at equal budgets.
- ``auto`` (default): the method that was best at that budget in ``benchmarks/trace_estimators.py``
  (see ``AUTO_RULE``), kept to the memory budget by the documented rule of ``plan_trace`` (XTrace when its
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
``tol=0`` spends the whole budget. XTrace grows its probe set by doubling (keeping Y, Q, Z) until the rule
holds. Probes come from a seeded CPU ``torch.Generator``, so every rank of a torchrun job draws the same.
Blocks of vectors go through ``op.matmat`` where the operator has one (``HessianOperator.matmat`` shares a
rebuilt gradient graph among a block: see ``benchmarks/hvp_matmat.py``).

Memory (``plan_trace``): XTrace keeps Omega, Q and Z (3 n x s, float64, preallocated; Y in chunks of ~s / 8:
counted as 4 n x s), Hutch++ its sketch (S, HS, Q, HQ: 4 n x s) and then Q beside each block of k probes
(G, HG and their product: 3 n x k), Hutchinson 3 n x k; all beside ``hvp_peak`` (the measured peak of one
HVP; default the memory in use now), within ``max_memory`` (the analysis's one budget,
``lanczos.MemoryBudget``). The budget is kept or the request refused, as everywhere (``lanczos.MemoryBudget``):
a method asked for by name (or a ``sketch_size``) that does not fit is refused with its estimate
(``MemoryBudgetError``, a ``ResourceError``), never swapped for another or cut to fewer probes; only the probe
block (how many probes go through one ``matmat``; the draws and the estimate do not depend on it) shrinks to
fit. ``auto`` chooses by its rule above and records why.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .._version import __version__
from ..deprecation import renamed_keywords
from ..errors import ConfigError
from .lanczos import MemoryBudget, _refuse, check_held, fmt_bytes, memory_in_use, op_settings

TRACE_METHODS = ("auto", "xtrace", "hutch++", "hutchinson")
Callback = Callable[[int, int], None] | None
# method="auto": (smallest budget, method), the last row whose budget <= max_hvps wins
AUTO_RULE = ((0, "hutchinson"), (20, "xtrace"))


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

    def __init__(self, op: Any, budget: int, callback: Callback, max_block: int | None = None):
        self.op, self.budget, self.callback, self.hvps = op, budget, callback, 0
        self.max_block = max_block

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        k = V.shape[1]
        if hasattr(self.op, "matmat"):
            out = self.op.matmat(V).to(V.dtype)
        else:
            out = torch.stack([self.op.matvec(V[:, j].contiguous()).to(V.dtype) for j in range(k)], 1)
        self.hvps += k
        if self.callback:
            self.callback(self.hvps, self.budget)
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


def _whole(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number, got {v!r}")
    return int(v)


def plan_trace(op: Any, method: str = "auto", max_hvps: int | None = None,
               max_memory: "int | str | MemoryBudget | None" = None, hvp_peak: int | None = None,
               sketch_size: int | None = None) -> dict:
    """What ``hessian_trace`` will run under the memory budget, decided before any HVP: ``chosen`` (the
    method), ``sketch_size`` (XTrace: the probes s; Hutch++: the sketch), ``probe_block`` (probes per
    ``matmat``), ``estimated_peak`` (bytes, ``hvp_peak`` included), ``auto_reason`` (why, for ``auto``;
    None otherwise) and the budget. Cost: none (arithmetic).

    The rule: ``method="auto"`` takes ``AUTO_RULE``'s method for ``max_hvps``; where that is XTrace and its
    ``min(max_hvps // 2, n - 1)`` probes do not fit, Hutch++ with the largest sketch (at most
    ``min(max_hvps // 3, 20)``) that fits, else Hutchinson. A method named (or a ``sketch_size``) is run
    as asked or refused. Either way ``MemoryBudgetError`` (a ``ResourceError``, one line with the
    estimate) when not even one probe fits beside ``hvp_peak`` (default: the memory in use now)."""
    if method not in TRACE_METHODS:
        raise ConfigError(f"unknown trace method {method!r}; choose from {', '.join(TRACE_METHODS)}")
    n = int(op.num_params)
    budget = _whole("max_hvps", max_hvps) if max_hvps is not None else 300
    if budget < 1:
        raise ConfigError(f"max_hvps must be at least 1, got {max_hvps}")
    if sketch_size is not None:
        sketch_size = _whole("sketch_size", sketch_size)
        if method not in ("hutch++", "auto"):
            raise ConfigError(f"sketch_size is Hutch++'s; method={method!r} has no sketch (drop sketch_size or "
                              "use method='hutch++')")
        if method == "auto":
            method = "hutch++"       # a sketch size asks for Hutch++ by name
        if sketch_size < 0 or 2 * min(sketch_size, n) > budget:
            raise ConfigError(f"sketch_size {sketch_size} needs 2 * {sketch_size} HVPs, more than max_hvps={budget}")
    device = getattr(op, "device", torch.device("cpu"))
    total = MemoryBudget.of(max_memory, device)
    measured = hvp_peak is not None
    base = int(hvp_peak) if measured else memory_in_use(device)
    task = "the trace" + ("" if method == "auto" else f" ({method})")
    check_held(task, base, total, measured)
    vec = 8 * n                                        # one float64 n-vector
    room = (total.total - base) // vec                 # n-vectors the budget holds beside the base
    preferred = int(getattr(op, "preferred_block", 1)) if hasattr(op, "matmat") else 1
    base_text = f"{fmt_bytes(base)} " + ("measured in one HVP" if measured else "held already")

    def probes_block(others: int) -> int:              # probes per block beside ``others`` kept vectors
        return int(max(0, min(preferred, budget, (room - others) // 3)))

    def plan(chosen: str, s: int, block: int, peak_vectors: int, why: str | None) -> dict:
        return {"method": method, "chosen": chosen, "sketch_size": int(s), "probe_block": int(block),
                "estimated_peak": int(base + peak_vectors * vec), "hvp_peak": int(base),
                "max_memory": total.total, "max_memory_default": total.default,
                "probe_memory": int(max(total.total - base, 0)), "auto_reason": why}

    def xtrace_size() -> int:
        s_max = min(budget // 2, n - 1)
        if s_max < 2:
            raise ConfigError(f"xtrace needs at least 4 HVPs and 3 parameters (max_hvps={budget}, n={n})")
        return s_max

    def hutchpp_default() -> int:
        return min(n, budget // 3, 20)

    def refuse_hutchinson() -> None:
        raise _refuse(task, base + 3 * vec, total.total, f"3 float64 vectors of {fmt_bytes(vec)} for one probe + "
                      f"{base_text}")

    chosen = method
    why = None
    if method == "auto":
        chosen = [m for b, m in AUTO_RULE if b <= budget][-1]
        why = f"AUTO_RULE: {chosen} at max_hvps={budget}"
        if chosen == "xtrace":
            s_max = xtrace_size()
            if 4 * s_max > room:
                fits = [s for s in range(hutchpp_default(), 0, -1) if 4 * s <= room and probes_block(s) >= 1]
                need = fmt_bytes(base + 4 * s_max * vec)
                if fits:
                    chosen, s = "hutch++", fits[0]
                    why += (f"; its {s_max} probes need ~{need} ({base_text}), more than the "
                            f"{fmt_bytes(total.total)} budget: hutch++ with a sketch of {s}, the largest that fits")
                else:
                    chosen = "hutchinson"
                    why += (f"; its {s_max} probes need ~{need} ({base_text}), more than the "
                            f"{fmt_bytes(total.total)} budget, and no Hutch++ sketch fits: hutchinson")
                if chosen == "hutch++":
                    block = probes_block(s)
                    return plan("hutch++", s, block, max(4 * s, s + 3 * block), why)
        if chosen == "hutchinson":
            block = probes_block(0)
            if block < 1:
                refuse_hutchinson()
            return plan("hutchinson", 0, block, 3 * block, why)
    if chosen == "xtrace":
        s_max = xtrace_size()
        if 4 * s_max > room:
            fit = room // 4
            hint = (f"at most {fit} probes fit (max_hvps={2 * fit})" if fit >= 2 else "not even 2 probes fit")
            raise _refuse(task, base + 4 * s_max * vec, total.total,
                          f"{s_max} probes for max_hvps={budget}: 4 x {s_max} float64 vectors of {fmt_bytes(vec)} + "
                          f"{base_text}; {hint}, or method='auto' picks what fits")
        return plan("xtrace", s_max, preferred, 4 * s_max, why)
    if chosen == "hutch++":
        s = hutchpp_default() if sketch_size is None else min(sketch_size, n)
        block = probes_block(s)
        if 4 * s > room or block < 1:
            fit = [t for t in range(s, -1, -1) if 4 * t <= room and probes_block(t) >= 1]
            hint = f"a sketch of at most {fit[0]} fits (sketch_size={fit[0]})" if fit and fit[0] else \
                "no sketch fits"
            raise _refuse(task, base + max(4 * s, s + 3) * vec, total.total,
                          f"a sketch of {s}: 4 x {s} float64 vectors of {fmt_bytes(vec)} + {base_text}; {hint}")
        return plan("hutch++", s, block, max(4 * s, s + 3 * block), why)
    block = probes_block(0)                            # hutchinson, asked by name
    if block < 1:
        refuse_hutchinson()
    return plan("hutchinson", 0, block, 3 * block, why)


@renamed_keywords(rtol="tol")
def hessian_trace(op: Any, method: str = "auto", tol: float = 1e-2, max_hvps: int | None = None,
                  seed: int = 0, min_probes: int = 10, sketch_size: int | None = None,
                  max_memory: "int | str | MemoryBudget | None" = None, callback: Callback = None,
                  hvp_peak: int | None = None) -> TraceResult:
    """Estimate tr(H) from HVPs (``op``: ``num_params``, ``device``, ``matvec``, optionally ``matmat``).

    Stops when the 95% half-width <= tol * |estimate| (after at least ``min_probes`` probes, i.e. terms
    or leave-one-out estimates) or at ``max_hvps`` (default 300); ``tol=0`` spends the whole budget.
    ``tol`` is relative (``settings["tol"]``); ``rtol=`` is its deprecated old name.
    ``sketch_size`` (Hutch++ only; asks for Hutch++): columns of S, default min(budget // 3, 20).
    ``method``: ``auto`` (see ``AUTO_RULE`` and ``plan_trace``), ``xtrace``, ``hutch++`` or ``hutchinson``
    (module docstring). Cost: at most ``max_hvps`` HVPs; memory: ``plan_trace``. ``max_memory`` is the
    analysis's one budget (``lanczos.MemoryBudget``: "8GB", bytes of at least 1 MB, or None for the
    default): kept, or the request refused before any HVP with its estimate (``MemoryBudgetError``, a
    ``ResourceError``); ``hvp_peak`` is the measured peak of one HVP (default: the memory in use now, a
    lower bound).
    """
    if tol < 0:
        raise ConfigError(f"tol must be >= 0, got {tol}")
    if _whole("min_probes", min_probes) < 2:
        raise ConfigError(f"min_probes must be at least 2, got {min_probes}")
    _whole("seed", seed)
    pl = plan_trace(op, method, max_hvps, max_memory, hvp_peak, sketch_size)
    n = int(op.num_params)
    budget = int(max_hvps) if max_hvps is not None else 300
    device = getattr(op, "device", torch.device("cpu"))
    chosen = pl["chosen"]
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    apply = _Counter(op, budget, callback, pl["probe_block"])
    settings = {"method": method, "chosen": chosen, "auto_reason": pl["auto_reason"], "tol": tol,
                "max_hvps": budget, "seed": seed, "min_probes": min_probes, "max_memory": pl["max_memory"],
                "max_memory_default": pl["max_memory_default"], "probe_memory": pl["probe_memory"],
                "estimated_peak": pl["estimated_peak"], "probe_block": pl["probe_block"]}
    if chosen == "xtrace":
        res = _xtrace(apply, n, budget, tol, min_probes, pl["sketch_size"], gen, device)
    else:
        res = _hutchpp(apply, n, budget, tol, min_probes, pl["sketch_size"], chosen, gen, device)
    res.settings = {**settings, "sketch_size": res.sketch_size,
                    "probes": "sphere" if chosen == "xtrace" else "rademacher", "operator": op_settings(op)}
    res.seconds = time.perf_counter() - t0
    return res


def _converged(est: float, se: float, p: int, tol: float, min_probes: int) -> bool:
    return p >= min_probes and _half_width(se, p) <= tol * abs(est)


def _hutchpp(apply: _Counter, n: int, budget: int, tol: float, min_probes: int, sketch: int,
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
    while apply.hvps < budget:
        k = min(apply.block, budget - apply.hvps)
        G = _rademacher(n, k, gen, device)
        if Q is not None:
            G = G - Q @ (Q.T @ G)
        terms = np.concatenate([terms, (G * apply(G)).sum(0).cpu().numpy()])
        est, se = low_rank + float(terms.mean()), _stderr(terms)
        if tol > 0 and _converged(est, se, len(terms), tol, min_probes):
            converged = True
            break
    return TraceResult(est, se, apply.hvps, method, terms, low_rank, s, converged)


def _xtrace(apply: _Counter, n: int, budget: int, tol: float, min_probes: int, s_max: int,
            gen: torch.Generator, device: torch.device) -> TraceResult:
    """XTrace with s_max = min(budget // 2, n - 1) probes (``plan_trace`` checked that they fit the memory
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


__all__ = ["TraceResult", "hessian_trace", "plan_trace", "TRACE_METHODS", "AUTO_RULE"]
