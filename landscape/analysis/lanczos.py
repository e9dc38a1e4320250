"""The Lanczos engine shared by ``top_eigenvalues`` and ``spectral_density``, under a memory budget.

Two ways to keep the basis, chosen by ``choose_top_k_plan`` / ``plan_density`` from the memory budget:

- ``Lanczos`` (reorth "full"): the basis is a PREALLOCATED ``capacity x n`` tensor (rows are written as the
  basis grows; nothing is copied), in float64 for a top-k search when enough float64 vectors fit the budget
  (a float32 basis stalls large models' residuals; ``choose_top_k_plan``), else and for the density in the
  operator's dtype; every new vector is reorthogonalized against all
  kept ones (classical Gram-Schmidt, twice). When the budget holds fewer vectors than the HVP budget needs,
  ``restart`` performs a thick restart (Wu & Simon 2000; Stewart's Krylov-Schur form): it keeps the ``p``
  wanted Ritz vectors, rewritten in place chunk by chunk, and the projected matrix becomes an arrowhead.
- ``LocalLanczos`` (reorth "local"): the three-term recurrence with reorthogonalization against the two
  previous vectors only; O(n) memory (three vectors), for stochastic Lanczos quadrature, whose nodes and
  weights remain accurate without global orthogonality (the lost orthogonality shows as duplicated "ghost"
  Ritz values whose weights add up to the one true value's; Meurant & Strakos 2006). Tested against the
  exact spectra of tiny networks (moments, extreme nodes) in tests/test_lanczos.py.

Memory is what the process holds: on CPU its resident set (VmRSS; the peak of one HVP is read from VmHWM
after resetting it through /proc/self/clear_refs), on CUDA the bytes allocated by torch on the device. The
estimate of a run's peak is ``hvp_peak + (basis vectors + work vectors) * bytes per vector``, where
``hvp_peak`` is measured during the run's first HVP (which the estimators need anyway).
"""
from __future__ import annotations

import math
import numbers
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Protocol

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ..errors import ConfigError, ResourceError

#: n-vectors besides the basis alive at the peak of a step (the HVP's output and one temporary).
WORK_VECTORS = 2
#: default budget: this fraction of the machine's (or GPU's) memory, at most 0.8 x what is free now.
DEFAULT_FRACTION = 0.35


class Operator(Protocol):
    """What the estimators need: ``num_params``, ``device`` and ``matvec`` (a HessianOperator qualifies)."""
    num_params: int
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def hv(op: Operator, v: torch.Tensor) -> torch.Tensor:
    """``op @ v`` in ``v``'s dtype (one HVP)."""
    return op.matvec(v).to(v.dtype)


def op_settings(op: Any) -> dict:
    """What a result records about its operator: ``op.describe()`` (loss, attack, samples...), else its size."""
    return op.describe() if hasattr(op, "describe") else {"num_params": int(op.num_params)}


def op_dtype(op: Any) -> torch.dtype:
    """The operator's floating dtype (float64 when it does not say)."""
    dt = getattr(op, "dtype", None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else torch.float64


# --- memory ------------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
          "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_memory(text: str | int | float) -> int:
    """Bytes from ``"8GB"``, ``"512MB"``, ``"1.5GiB"``, ``"8G"`` or a plain number of bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(-?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(f"cannot read the memory size {text!r}; write e.g. 8GB, 512MB or 1.5GiB")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"a memory size must be positive, got {text!r}")
    return int(value)


#: a memory budget given as a bare number (no unit) is bytes, and below this it is refused as ambiguous:
#: ``max_memory=8`` (or ``--max-memory 8``) meant as 8 GB would be 8 bytes. Sizes with a unit ("8GB",
#: "96kB", "100B") are taken as written.
MIN_BARE_BYTES = 10 ** 6


def _is_bare_number(value: Any) -> bool:
    """True for a number, or a string holding only a number (no unit)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?\s*", value) is not None


def parse_budget(value: "int | float | str", name: str = "max_memory (--max-memory)") -> int:
    """Bytes of a memory budget, THE rule of every budgeted function (``max_memory`` of ``hessian_trace``,
    ``top_eigenvalues``, ``spectral_density``, the plans, ``--max-memory``): a size with a unit ("8GB",
    "512MB", "1.5GiB", "96kB", "100B") as written; a bare number (8, "8", 6.4e9) is bytes, and one below
    ``MIN_BARE_BYTES`` (1 MB) is refused in one line that asks for the unit ("did you mean '8GB'?")."""
    size = parse_memory(value)
    if _is_bare_number(value) and size < MIN_BARE_BYTES:
        v = str(value).strip()
        unit = "GB" if float(v) < 1024 else "MB"
        raise ConfigError(f"{name} {v} would be {size} bytes: did you mean '{v}{unit}'? Give the unit (e.g. 8GB, "
                          f"512MB, 1.5GiB); a plain number is bytes and must be at least "
                          f"{fmt_bytes(MIN_BARE_BYTES)}")
    return size


def fmt_bytes(b: float) -> str:
    """``1.23 GB`` (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= size:
            return f"{b / size:.3g} {unit}"
    return f"{int(b)} B"


def _status(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s*kB", f.read(), re.M)
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def _meminfo() -> dict[str, int]:
    try:
        with open("/proc/meminfo") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
    except (OSError, ValueError):
        return {}


def available_memory(device: torch.device | str) -> int:
    """Bytes free on ``device`` now: CUDA's free memory (``torch.cuda.mem_get_info``), else the host's
    MemAvailable (/proc/meminfo; physical memory where that is unreadable)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = _meminfo().get("MemAvailable")
    if avail:
        return avail
    import os
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_in_use(device: torch.device | str) -> int:
    """Bytes this process holds now: resident set on CPU, torch's allocation on a CUDA device."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if _status("VmRSS"):
        return _status("VmRSS")
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def default_max_memory(device: torch.device | str) -> int:
    """The default budget: ``DEFAULT_FRACTION`` of the device's memory (8.85 GB of this 25.3 GB (23.5 GiB) machine),
    at most 80% of what this process holds plus what is free now."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(min(DEFAULT_FRACTION * total, 0.8 * (free + torch.cuda.memory_reserved(device))))
    info = _meminfo()
    total = info.get("MemTotal", 0)
    if not total:
        return 8 * 10 ** 9
    avail = info.get("MemAvailable", total) + memory_in_use(device)
    return int(min(DEFAULT_FRACTION * total, 0.8 * avail))


#: the share of the budget that the operator's kept gradient graphs may take (HessianOperator's default
#: max_graph_memory); the plans count what they took in the measured HVP peak, so the total stays the budget
GRAPH_SHARE = 0.5


@dataclass(frozen=True)
class MemoryBudget:
    """THE memory budget of an analysis (``--max-memory``), resolved once: ``total`` bytes for everything the
    analysis holds on ``device`` (model, data, gradient graphs, Lanczos bases, trace sketches); ``default``
    when the user gave none (``default_max_memory``). ``graphs``: the gradient graphs' share
    (``GRAPH_SHARE``). Every function that takes ``max_memory`` takes one of these, a size ("8GB"; a bare
    number is bytes and must be at least 1 MB: ``parse_budget``) or None, and keeps it or refuses the
    request with its estimate (``MemoryBudgetError``, a ``ResourceError``), the same way everywhere:

    - what the process holds already (or the measured peak of one HVP) must leave room (``check_held``);
    - a method or basis that was asked for (``method="xtrace"``, ``reorth="full"``, ``basis_dtype=``,
      ``sketch_size=``) is run as asked or refused, never swapped for another;
    - ``auto`` choices (the trace's method and sketch, top-k's basis dtype and thick restarts, the density's
      reorthogonalization) follow their documented rule, and the result records what was chosen and why
      (``settings["chosen"]`` / ``settings["auto_reason"]`` of a trace, ``settings["memory"]`` of top-k and
      the density)."""
    total: int
    default: bool
    device: str = "cpu"

    @classmethod
    def of(cls, max_memory: "int | str | MemoryBudget | None", device: torch.device | str) -> "MemoryBudget":
        """The budget ``max_memory`` asks for on ``device`` (None: the default). Cost: none (a read of
        /proc/meminfo or of CUDA's free memory for the default)."""
        if isinstance(max_memory, MemoryBudget):
            return max_memory
        if max_memory is None:
            return cls(default_max_memory(device), True, str(torch.device(device)))
        return cls(parse_budget(max_memory), False, str(torch.device(device)))

    @property
    def graphs(self) -> int:
        return int(GRAPH_SHARE * self.total)

    def to_dict(self) -> dict:
        return {"max_memory": self.total, "max_memory_default": self.default, "graph_share": GRAPH_SHARE,
                "device": self.device}


class PeakMemory:
    """Context manager: ``.peak``, the most memory the process held inside the block (CPU: VmHWM after
    resetting it; falls back to the larger of the resident sets before and after), and ``.seconds``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak, self.seconds = 0, 0.0

    def __enter__(self) -> "PeakMemory":
        self._before = memory_in_use(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._hwm = False
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._hwm = bool(_status("VmHWM"))
            except OSError:
                self._hwm = False
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = _status("VmHWM") if self._hwm else 0
        self.peak = max(self.peak, self._before, memory_in_use(self.device))
        self.seconds = time.perf_counter() - self._t0


def time_hvp(op: Operator, seed: int = 0, repeats: int = 2) -> tuple[float, int]:
    """(seconds of one HVP, peak memory during the HVPs) from ``repeats`` HVPs on a seeded random vector;
    the first may build a gradient graph (its time is not counted when there are more)."""
    v = torch.randn(int(op.num_params), generator=torch.Generator().manual_seed(seed)).to(op.device, op_dtype(op))
    times, peak = [], 0
    for _ in range(max(1, repeats)):
        with PeakMemory(op.device) as pk:
            hv(op, v)
        times.append(pk.seconds)
        peak = max(peak, pk.peak)
    return (min(times[1:]) if len(times) > 1 else times[0]), peak


@dataclass
class MemoryPlan:
    """How a Lanczos run keeps its basis, and what that is estimated to cost.

    ``reorth``: "full" (kept basis, full reorthogonalization) or "local" (three vectors, O(n));
    ``capacity``: basis vectors kept (the HVP budget + 1 when all fit, fewer with ``thick_restart``);
    ``estimated_peak``: ``hvp_peak + (capacity + work vectors) * vector_bytes`` on the operator's device
    (the basis lives on ``basis_device``; when that is the CPU under a CUDA operator, ``host_bytes`` is what
    it needs there)."""
    task: str
    reorth: str
    capacity: int
    thick_restart: bool
    dtype: str
    basis_device: str
    vector_bytes: int
    max_memory: int
    hvp_peak: int
    estimated_peak: int
    host_bytes: int = 0
    max_memory_default: bool = True
    dtype_choice: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        kept = (f"{self.capacity} basis vectors ({fmt_bytes(self.capacity * self.vector_bytes)} {self.dtype} on "
                f"{self.basis_device}){', thick restarts' if self.thick_restart else ''}"
                if self.reorth == "full" else "3 vectors (local reorthogonalization)")
        return f"{self.task}: {kept}, peak ~{fmt_bytes(self.estimated_peak)}"


def _budget(op: Operator, max_memory: "int | str | MemoryBudget | None") -> tuple[int, bool]:
    b = MemoryBudget.of(max_memory, op.device)
    return b.total, b.default


#: what the base of a plan counts: the measured peak of one HVP, or (before one ran) the process's memory now
_BASE = "already held by this process or reached by one HVP (model, data, gradient graph)"


class MemoryBudgetError(ResourceError, ConfigError):
    """A request that does not fit the memory budget (``max_memory``), refused with its estimate in one line
    by every budgeted function alike. A ``ResourceError``; also a ``ConfigError``, as it was before."""


def _refuse(task: str, need: int, budget: int, what: str) -> MemoryBudgetError:
    return MemoryBudgetError(f"{task} cannot fit in memory: it needs about {fmt_bytes(need)} ({what}) but the "
                             f"budget is {fmt_bytes(budget)}; lower the request or raise --max-memory (max_memory)")


def check_held(task: str, held: int, budget: "MemoryBudget | int", measured: bool = False) -> None:
    """Refuse ``task`` at once when what the process already holds (``held``: the measured peak of one HVP,
    or before one ran the memory in use now, a lower bound) leaves nothing of the budget: the same refusal
    for the trace, top-k and the density, before any vector is allocated (or any HVP run)."""
    total = budget.total if isinstance(budget, MemoryBudget) else int(budget)
    if held >= total:
        what = "one HVP reaches" if measured else "this process holds"
        raise MemoryBudgetError(f"{task} cannot fit in memory: {what} {fmt_bytes(held)} already (model, data, "
                                f"gradient graph), before any vector of its own, but the budget is "
                                f"{fmt_bytes(total)}; raise --max-memory (max_memory)")


def min_top_k_capacity(k: int) -> int:
    """Fewest basis vectors a thick-restarted search for k pairs works with: k plus a search space."""
    return k + max(3, min(k, 20)) + 1


def plan_top_k(op: Operator, k: int, max_hvps: int, max_memory: int | str | None = None,
               hvp_peak: int | None = None, extra_vectors: int = 1, dtype: torch.dtype | None = None,
               extra_dtype: torch.dtype | None = None) -> MemoryPlan:
    """The basis of a top-k search: all ``max_hvps + 1`` vectors when they fit in ``max_memory`` (default:
    ``default_max_memory``), else as many as fit with thick restarts; ConfigError (with the estimate) when
    not even ``min_top_k_capacity(k)`` fit. ``hvp_peak`` is the measured peak of one HVP (default: the
    memory in use now, a lower bound); ``extra_vectors`` are kept besides (returned eigenvectors, in
    ``extra_dtype``, default the basis dtype)."""
    n = int(op.num_params)
    dtype = dtype or op_dtype(op)
    budget, is_default = _budget(op, max_memory)
    vb = n * torch.empty((), dtype=dtype).element_size()
    base = int(hvp_peak) if hvp_peak is not None else memory_in_use(op.device)
    check_held(f"top-{k}", base, budget, hvp_peak is not None)   # not even one HVP fits: no host fallback either
    work = WORK_VECTORS * vb + extra_vectors * n * torch.empty((), dtype=extra_dtype or dtype).element_size()
    want = min(int(max_hvps), n) + 1
    fit = (budget - base - work) // vb
    least = min(min_top_k_capacity(k), want)
    dev = torch.device(op.device)
    basis_dev, host = str(dev), 0
    if fit < least and dev.type == "cuda":  # keep the basis in host memory, HVPs stay on the GPU
        host_fit = (default_max_memory("cpu") - memory_in_use("cpu")) // vb
        if host_fit >= least:
            cap = int(min(want, host_fit))
            return MemoryPlan("top-k", "full", cap, cap < want, str(dtype).replace("torch.", ""), "cpu", vb,
                              budget, base, base + work, cap * vb, is_default)
    if fit < least:
        raise _refuse(f"top-{k}", base + work + least * vb, budget,
                      f"{least} basis vectors of {fmt_bytes(vb)} + {fmt_bytes(base)} {_BASE}")
    cap = int(min(want, fit))
    return MemoryPlan("top-k", "full", cap, cap < want, str(dtype).replace("torch.", ""), basis_dev, vb, budget,
                      base, base + work + cap * vb, host, is_default)


def choose_top_k_plan(op: Operator, k: int, max_hvps: int, max_memory: int | str | None = None,
                      hvp_peak: int | None = None, return_vectors: bool = False,
                      dtype: torch.dtype | None = None) -> MemoryPlan:
    """``plan_top_k`` with the basis dtype chosen (and why, in ``dtype_choice``): ``dtype`` when given; else
    float64 when at least ``min_top_k_capacity(k)`` float64 vectors fit the budget, else the operator's dtype.
    ``return_vectors``: k eigenvectors (in the operator's dtype) are kept besides.

    Why float64 by default: the rounding of a float32 basis (inner products over n entries, Ritz vectors
    rebuilt at thick restarts) stalls the true residuals of large models above tol (WRN-34-10, 46M weights:
    two of five pairs at 1.4e-3 > 1e-3 after 118 HVPs; with a float64 basis all five converge within the same
    default memory budget, benchmarks/results/scale.md). The HVPs stay in the operator's dtype. Cost: none
    (arithmetic on the plan)."""
    own = op_dtype(op)
    extra_vectors, extra_dtype = (k, own) if return_vectors else (1, None)  # returned pairs, or the residual's

    def plan(dt: torch.dtype, why: str) -> MemoryPlan:
        return replace(plan_top_k(op, k, max_hvps, max_memory, hvp_peak, extra_vectors, dt, extra_dtype),
                       dtype_choice=why)

    if dtype is not None:
        return plan(dtype, "asked")
    if own != torch.float64:
        try:
            return plan(torch.float64, "auto: float64 fits the memory budget")
        except ConfigError:
            return plan(own, "auto: the operator's dtype (a float64 basis does not fit the memory budget)")
    return plan(own, "auto: the operator's dtype")


def plan_density(op: Operator, steps: int, max_memory: int | str | None = None, hvp_peak: int | None = None,
                 reorth: str = "auto", dtype: torch.dtype | None = None) -> MemoryPlan:
    """The basis of one SLQ probe: "full" (``steps + 1`` vectors) when they fit in ``max_memory`` (or when
    asked), else "local" (three vectors); ConfigError (with the estimate) when not even that fits."""
    if reorth not in ("auto", "full", "local"):
        raise ConfigError(f"unknown reorth {reorth!r}; choose auto, full or local")
    n = int(op.num_params)
    dtype = dtype or op_dtype(op)
    budget, is_default = _budget(op, max_memory)
    vb = n * torch.empty((), dtype=dtype).element_size()
    base = int(hvp_peak) if hvp_peak is not None else memory_in_use(op.device)
    check_held("the density", base, budget, hvp_peak is not None)
    work = WORK_VECTORS * vb
    cap = min(int(steps), n) + 1
    full_peak = base + work + cap * vb
    if reorth == "full" or (reorth == "auto" and full_peak <= budget):
        if full_peak > budget:
            raise _refuse("the density (full reorthogonalization)", full_peak, budget,
                          f"{cap} basis vectors of {fmt_bytes(vb)}")
        return MemoryPlan("density", "full", cap, False, str(dtype).replace("torch.", ""), str(op.device), vb,
                          budget, base, full_peak, 0, is_default)
    local_peak = base + work + 3 * vb
    if local_peak > budget:
        raise _refuse("the density", local_peak, budget, f"3 vectors of {fmt_bytes(vb)} + {fmt_bytes(base)} "
                      f"{_BASE}")
    return MemoryPlan("density", "local", 3, False, str(dtype).replace("torch.", ""), str(op.device), vb, budget,
                      base, local_peak, 0, is_default)


# --- tridiagonal / dense projected eigenproblems ------------------------------------------------------

def eigh_tri(alphas, betas) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of the symmetric tridiagonal matrix with diagonal ``alphas`` and
    off-diagonal ``betas`` (float64; a 1 x 1 matrix too, which ``eigh_tridiagonal`` refuses)."""
    a = np.asarray(alphas, dtype=np.float64)
    if len(a) == 1:
        return a.copy(), np.ones((1, 1))
    return eigh_tridiagonal(a, np.asarray(betas, dtype=np.float64))


def gaussian(n: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A standard normal vector drawn (in float64) from the CPU generator ``gen``."""
    return torch.randn(n, generator=gen, dtype=torch.float64).to(device, dtype)


def rademacher(n: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A vector of random signs drawn from the CPU generator ``gen``."""
    return (torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).to(dtype) * 2 - 1).to(device)


_CHUNK = 1 << 20


class Lanczos:
    """Lanczos with a kept basis and full reorthogonalization, in Krylov-Schur form
    ``H V_m = V_m T_m + v_{m+1} c^T``: ``T`` (m x m, float64) is tridiagonal until a thick restart makes it an
    arrowhead, ``c`` couples the pending vector ``v_{m+1}`` to the basis (``beta_m e_m`` for plain Lanczos),
    and a Ritz pair (theta, V y) has residual ``|c . y|`` in exact arithmetic.

    The basis is a preallocated ``capacity x n`` tensor (``dtype``, on ``storage``); one HVP per ``step()``.
    On breakdown (an invariant subspace) the next vector is a random one orthogonal to the basis, with zero
    coupling, so ``T`` stays exact. ``first_hv`` is ``H q0`` when the caller has computed it already.
    """

    def __init__(self, op: Operator, q0: torch.Tensor, gen: torch.Generator, capacity: int,
                 dtype: torch.dtype | None = None, storage: torch.device | str | None = None,
                 first_hv: torch.Tensor | None = None):
        self.op, self.gen, self.n = op, gen, int(q0.numel())
        self.dtype = dtype or q0.dtype
        self.capacity = int(min(capacity, self.n + 1))
        if self.capacity < 2:
            raise ConfigError("a Lanczos basis needs room for at least 2 vectors")
        self.storage = torch.device(storage) if storage is not None else q0.device
        self.Q = torch.empty((self.capacity, self.n), dtype=self.dtype, device=self.storage)
        self.T = np.zeros((self.capacity, self.capacity))
        self.c = np.zeros(self.capacity)   # coupling of the pending vector Q[m] to Q[:m]
        self.m = 0                         # columns of T (vectors multiplied by H)
        self.nv = 0                        # vectors stored (m + 1 while one is pending)
        self.restarts = 0                  # breakdowns
        self.thick_restarts = 0
        self.hvps = 0
        self._first_hv = first_hv
        self._push(q0 / q0.norm())

    def _push(self, q: torch.Tensor) -> None:
        self.Q[self.nv] = q.to(self.storage, self.dtype)
        self.nv += 1

    @property
    def full(self) -> bool:
        """True when no room is left for the next step's vector (``restart`` first)."""
        return self.nv >= self.capacity and not self.exhausted

    @property
    def exhausted(self) -> bool:
        """True when the basis spans the whole space (T is then similar to H)."""
        return self.m >= self.n

    def _orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        """w minus its projection on the stored basis (classical Gram-Schmidt, twice), on the storage device."""
        w = w.to(self.storage, self.dtype)
        Q = self.Q[:self.nv]
        for _ in range(2):
            w = w.addmv_(Q.T, Q @ w, alpha=-1.0) if w.is_contiguous() else w - Q.T @ (Q @ w)
        return w

    def step(self) -> bool:
        """Add one column to T (one HVP). Returns False when the next basis vector came from a restart."""
        if self.full:
            raise RuntimeError("the Lanczos basis is full: restart() first")
        j = self.m
        q = self.Q[j].to(self.op.device)
        if self._first_hv is not None and j == 0:
            w = self._first_hv.to(q.device, q.dtype)
            self._first_hv = None
        else:
            w = hv(self.op, q)
        self.hvps += 1
        alpha = float(q @ w)
        w = w.sub_(q, alpha=alpha) if w is not q else w - alpha * q
        del q
        w = w.to(self.storage)
        for i in np.flatnonzero(self.c[:j]):
            w.sub_(self.Q[i], alpha=float(self.c[i]))
        w = self._orthogonalize(w)
        self.T[j, :j] = self.T[:j, j] = self.c[:j]
        self.T[j, j] = alpha
        self.m = j + 1
        beta = float(w.norm())
        self.c[:] = 0.0
        if self.exhausted:
            return True
        scale = max(float(np.abs(self.T[:self.m, :self.m]).max()), beta, 1e-300)
        if beta > 1e-10 * scale:
            self.c[j] = beta
            self._push(w.div_(beta))
            return True
        self.restarts += 1  # breakdown: the Krylov space is invariant; go on from a fresh random direction
        del w
        r = self._orthogonalize(gaussian(self.n, self.gen, self.storage, self.dtype))
        self._push(r / r.norm())
        return False

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), eigenvectors of T (m x m), and their residual estimates |c . y|."""
        m = self.m
        if self._is_tridiagonal():
            theta, S = eigh_tri(np.diag(self.T[:m, :m]), np.diag(self.T[:m, :m], -1))
        else:
            theta, S = np.linalg.eigh(self.T[:m, :m])
        return theta, S, np.abs(self.c[:m] @ S)

    def _is_tridiagonal(self) -> bool:
        m = self.m
        return self.thick_restarts == 0 or not np.any(np.tril(self.T[:m, :m], -2))

    def vector(self, s: np.ndarray) -> torch.Tensor:
        """The Ritz vector ``Q[:m]^T s`` (on the operator's device, in the basis dtype)."""
        st = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float64)).to(self.storage, self.dtype)
        return (self.Q[:self.m].T @ st).to(self.op.device)

    def restart(self, S: np.ndarray) -> None:
        """Thick restart: keep the Ritz vectors ``Q[:m]^T S`` (S: m x p, orthonormal columns of T's
        eigenvectors) and the pending vector. Rewrites the basis in place, ``_CHUNK`` columns at a time."""
        m, p = self.m, S.shape[1]
        theta = np.einsum("ip,ij,jp->p", S, self.T[:m, :m], S)
        St = torch.from_numpy(np.ascontiguousarray(S.T)).to(self.storage, self.dtype)
        for lo in range(0, self.n, _CHUNK):
            hi = min(lo + _CHUNK, self.n)
            self.Q[:p, lo:hi] = St @ self.Q[:m, lo:hi]
        if self.nv > m:
            self.Q[p] = self.Q[m]
        c = self.c[:m] @ S
        self.T[:] = 0.0
        self.T[np.arange(p), np.arange(p)] = theta
        self.c[:] = 0.0
        self.c[:p] = c
        self.m, self.nv = p, p + (1 if self.nv > m else 0)
        self.thick_restarts += 1


class LocalLanczos:
    """The three-term Lanczos recurrence in O(n) memory: each new vector is orthogonalized (twice) against the
    current and previous ones only. Same interface as ``Lanczos`` for SLQ (``step``, ``ritz``); stops at
    breakdown (``step`` returns False)."""

    def __init__(self, op: Operator, q0: torch.Tensor, first_hv: torch.Tensor | None = None):
        self.op, self.n = op, int(q0.numel())
        self.q, self.prev = q0 / q0.norm(), None
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.hvps, self.restarts, self.thick_restarts = 0, 0, 0
        self._first_hv = first_hv

    @property
    def m(self) -> int:
        return len(self.alphas)

    @property
    def exhausted(self) -> bool:
        return self.m >= self.n

    def step(self) -> bool:
        if self._first_hv is not None:
            w, self._first_hv = self._first_hv.to(self.q.device, self.q.dtype), None
        else:
            w = hv(self.op, self.q)
        self.hvps += 1
        alpha = float(self.q @ w)
        w.sub_(self.q, alpha=alpha)
        if self.prev is not None:
            w.sub_(self.prev, alpha=self.betas[-1])
        for _ in range(2):  # local reorthogonalization
            w.sub_(self.q, alpha=float(self.q @ w))
            if self.prev is not None:
                w.sub_(self.prev, alpha=float(self.prev @ w))
        self.alphas.append(alpha)
        if self.exhausted:
            return True
        beta = float(w.norm())
        scale = max(max(abs(a) for a in self.alphas), max(self.betas, default=0.0), 1e-300)
        if beta <= 1e-10 * scale:
            return False
        self.betas.append(beta)
        self.prev, self.q = self.q, w.div_(beta)
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.m
        theta, S = eigh_tri(self.alphas, self.betas[:m - 1])
        last = self.betas[m - 1] if len(self.betas) >= m else 0.0
        return theta, S, np.abs(last * S[-1])


Callback = Callable[[int, int], None] | None

__all__ = ["Lanczos", "LocalLanczos", "MemoryPlan", "PeakMemory", "plan_top_k", "choose_top_k_plan", "plan_density",
           "parse_memory", "parse_budget", "MIN_BARE_BYTES", "MemoryBudgetError", "check_held", "fmt_bytes", "default_max_memory", "MemoryBudget", "memory_in_use", "time_hvp", "eigh_tri", "min_top_k_capacity"]
