"""Memory of an analysis: the budget, what the process holds, and the plans that keep every estimator inside it.

- **The budget** (``MemoryBudget``): resolved ONCE, at a public entry point (``top_eigenvalues``,
  ``hessian_trace``, ``spectral_density``, ``HessianOperator``, ``--max-memory``), from ``None`` / ``"auto"``
  (``default_max_memory``), a size with a unit ("8GB", "512MB", "1.5GiB", "96kB", "100B": as written) or a
  bare number (8, "8", 6.4e9: bytes, and refused below ``MIN_BARE_BYTES`` = 1 MB in one line asking for the
  unit: ``parse_budget``). Everything below the entry points takes the resolved object.
- **Probing**: what the process holds (``memory_in_use``: the resident set on CPU, torch's allocation on
  CUDA), what is free (``available_memory``), the peak inside a block (``PeakMemory``: VmHWM after resetting
  it through /proc/self/clear_refs; CUDA's peak statistics), and the time and peak of one HVP (``time_hvp``).
- **Plans**: how a Lanczos run keeps its basis (``MemoryPlan``: ``choose_top_k_plan``, ``plan_density``),
  which trace estimator runs with how many probes (``TracePlan``: ``plan_trace``), and the one planned job of
  a spectrum run (``SpectrumJob`` -> ``plan_spectrum`` -> ``SpectrumPlan``), made once after two measured
  HVPs, printed by landscape-spectrum and executed as it is by the estimators. A request that does not fit
  is refused with its estimate in one line (``MemoryBudgetError``, a ``ResourceError``).

The estimate of a run's peak is ``hvp_peak + (basis vectors + work vectors) * bytes per vector``, where
``hvp_peak`` is the measured peak of one HVP (model, data, gradient graph).
"""
from __future__ import annotations

import math
import numbers
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..errors import ConfigError, ResourceError

#: n-vectors besides the basis alive at the peak of a step (the HVP's output and one temporary).
WORK_VECTORS = 2
#: default budget: this fraction of the machine's (or GPU's) memory, at most 0.8 x what is free now.
DEFAULT_FRACTION = 0.35
#: the share of the budget that the operator's kept gradient graphs may take (HessianOperator's default
#: max_graph_memory); the plans count what they took in the measured HVP peak, so the total stays the budget
GRAPH_SHARE = 0.5
#: a bare number (no unit) is bytes, and below this it is refused as ambiguous: ``max_memory=8`` (or
#: ``--max-memory 8``, ``max_graph_memory=8``) meant as 8 GB would be 8 bytes.
MIN_BARE_BYTES = 10 ** 6
#: the trace estimators (``hessian_trace``'s ``method``)
TRACE_METHODS = ("auto", "xtrace", "hutch++", "hutchinson")
#: ``method="auto"``: (smallest HVP budget, method), the last row whose budget <= max_hvps wins; measured in
#: ``benchmarks/trace_estimators.py`` (the table is in ``trace.py``'s docstring)
AUTO_RULE = ((0, "hutchinson"), (20, "xtrace"))

_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
          "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


# --- sizes -----------------------------------------------------------------------------------------------

def parse_memory(text: str | int | float) -> int:
    """Bytes from ``"8GB"``, ``"512MB"``, ``"1.5GiB"``, ``"8G"`` or a plain number of bytes (no lower bound:
    ``parse_budget`` is the rule for budgets). ConfigError for anything else, zero or negative."""
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


def _is_bare_number(value: Any) -> bool:
    """True for a number, or a string holding only a number (no unit)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?\s*", value) is not None


def _is_auto(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "auto")


def parse_budget(value: int | float | str, name: str = "max_memory (--max-memory)") -> int:
    """Bytes of a memory budget, THE rule of every budget (``max_memory=``, ``max_graph_memory=``,
    ``--max-memory``): a size with a unit as written; a bare number is bytes, and one below
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


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


# --- probing ---------------------------------------------------------------------------------------------

def _status(field: str) -> int:
    """Bytes of a field of /proc/self/status (VmRSS, VmHWM); 0 where unreadable."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s*kB", f.read(), re.M)
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes; empty where unreadable."""
    try:
        with open("/proc/meminfo") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
    except (OSError, ValueError):
        return {}


def available_memory(device: torch.device | str) -> int:
    """Bytes free on ``device`` now: CUDA's free memory (``torch.cuda.mem_get_info``), else the host's
    MemAvailable (/proc/meminfo; physical memory where that is unreadable). Cost: one read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = _meminfo().get("MemAvailable")
    if avail:
        return avail
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def memory_in_use(device: torch.device | str) -> int:
    """Bytes this process holds now: resident set on CPU, torch's allocation on a CUDA device. Cost: one read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    rss = _status("VmRSS")
    if rss:
        return rss
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def default_max_memory(device: torch.device | str) -> int:
    """The default budget: ``DEFAULT_FRACTION`` of the device's memory, at most 80% of what this process holds
    plus what is free now. Cost: one read of /proc/meminfo (or of CUDA's free memory)."""
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


def op_dtype(op: Any) -> torch.dtype:
    """The operator's floating dtype (float64 when it does not say)."""
    dt = getattr(op, "dtype", None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else torch.float64


def time_hvp(op: Any, seed: int = 0, repeats: int = 2) -> tuple[float, int]:
    """(seconds of one HVP, peak memory during the HVPs) from ``repeats`` HVPs on a seeded random vector;
    the first may build a gradient graph (its time is not counted when there are more). Cost: ``repeats`` HVPs."""
    v = torch.randn(int(op.num_params), generator=torch.Generator().manual_seed(seed)).to(op.device, op_dtype(op))
    times, peak = [], 0
    for _ in range(max(1, repeats)):
        with PeakMemory(op.device) as pk:
            op.matvec(v)
        times.append(pk.seconds)
        peak = max(peak, pk.peak)
    return (min(times[1:]) if len(times) > 1 else times[0]), peak


# --- the budget ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryBudget:
    """THE memory budget of an analysis, resolved once (``MemoryBudget.of``): ``total`` bytes for everything the
    analysis holds on ``device`` (model, data, gradient graphs, Lanczos bases, trace probes); ``default`` when
    the user gave none; ``host``: bytes of host memory a top-k basis may take when it does not fit a CUDA
    device (``default_max_memory("cpu")``, read with the budget; 0 elsewhere). ``graphs``: the gradient
    graphs' share (``GRAPH_SHARE``). Every budgeted function keeps it or refuses the request with its
    estimate (``MemoryBudgetError``), the same way everywhere:

    - what the process holds already (or the measured peak of one HVP) must leave room (``check_held``);
    - a method or basis that was asked for (``method="xtrace"``, ``reorth="full"``, ``basis_dtype=``,
      ``sketch_size=``) is run as asked or refused, never swapped for another;
    - ``auto`` choices (the trace's method and sketch, top-k's basis dtype and thick restarts, the density's
      reorthogonalization) follow their documented rule, and the result records what was chosen and why."""
    total: int
    default: bool
    device: str = "cpu"
    host: int = 0

    @classmethod
    def of(cls, max_memory: "int | float | str | MemoryBudget | None", device: torch.device | str) -> "MemoryBudget":
        """The budget ``max_memory`` asks for on ``device``: None or "auto" the default (``default_max_memory``),
        a size by ``parse_budget``'s rule, or a resolved budget (returned as it is; one made for another
        device type is refused). Cost: none, or one read of /proc/meminfo (or CUDA's free memory)."""
        dev = torch.device(device)
        if isinstance(max_memory, MemoryBudget):
            if torch.device(max_memory.device).type != dev.type:
                raise ConfigError(f"the memory budget was resolved for {max_memory.device}, not {dev}; resolve it "
                                  f"for the operator's device (MemoryBudget.of(max_memory, device))")
            return max_memory
        total = default_max_memory(dev) if _is_auto(max_memory) else parse_budget(max_memory)
        return cls(total, _is_auto(max_memory), str(dev), default_max_memory("cpu") if dev.type == "cuda" else 0)

    @property
    def graphs(self) -> int:
        """Bytes the operator's kept gradient graphs may take (``GRAPH_SHARE`` of the total)."""
        return int(GRAPH_SHARE * self.total)

    def to_dict(self) -> dict:
        return {"max_memory": self.total, "max_memory_default": self.default, "graph_share": GRAPH_SHARE,
                "device": self.device}


def graph_memory(max_graph_memory: "int | float | str | MemoryBudget | None",
                 device: torch.device | str) -> tuple[int, int | None]:
    """(bytes the operator's kept gradient graphs may take, what the caller gave in bytes or None for the
    default) from ``HessianOperator``'s ``max_graph_memory``: None / "auto" / a ``MemoryBudget``: the graphs'
    share of that budget (the caller's total recorded when not the default); 0: no graph is kept (rebuilt at
    every HVP); else a size by ``parse_budget``'s rule (a bare number is bytes, at least 1 MB: the same unit
    as ``--max-memory``). Cost: as ``MemoryBudget.of``."""
    if _is_auto(max_graph_memory) or isinstance(max_graph_memory, MemoryBudget):
        b = MemoryBudget.of(max_graph_memory, device)
        return b.graphs, None if b.default else b.total
    if _is_bare_number(max_graph_memory) and float(str(max_graph_memory).strip()) == 0:
        return 0, 0
    size = parse_budget(max_graph_memory, "max_graph_memory")
    return size, size


def _resolved(budget: Any) -> MemoryBudget:
    """``budget`` itself: the plans take only a resolved budget (the entry points resolve it)."""
    if not isinstance(budget, MemoryBudget):
        raise ConfigError(f"a plan takes a resolved MemoryBudget (MemoryBudget.of(max_memory, device)), "
                          f"got {budget!r}")
    return budget


class MemoryBudgetError(ResourceError, ConfigError):
    """A request that does not fit the memory budget (``max_memory``), refused with its estimate in one line
    by every budgeted function alike. A ``ResourceError``; also a ``ConfigError``, as it was before."""


#: what the base of a plan counts: the measured peak of one HVP, or (before one ran) the process's memory now
_BASE = "already held by this process or reached by one HVP (model, data, gradient graph)"


def refuse(task: str, need: int, budget: int, what: str) -> MemoryBudgetError:
    """The one-line refusal of ``task``, which needs about ``need`` bytes (``what``) of a ``budget``."""
    return MemoryBudgetError(f"{task} cannot fit in memory: it needs about {fmt_bytes(need)} ({what}) but the "
                             f"budget is {fmt_bytes(budget)}; lower the request or raise --max-memory (max_memory)")


def check_held(task: str, held: int, budget: MemoryBudget, measured: bool = False) -> None:
    """Refuse ``task`` at once when what the process already holds (``held``: the measured peak of one HVP,
    or before one ran the memory in use now, a lower bound) leaves nothing of the budget: the same refusal
    for the trace, top-k and the density, before any vector is allocated (or any HVP run). Cost: none."""
    total = _resolved(budget).total
    if held >= total:
        what = "one HVP reaches" if measured else "this process holds"
        raise MemoryBudgetError(f"{task} cannot fit in memory: {what} {fmt_bytes(held)} already (model, data, "
                                f"gradient graph), before any vector of its own, but the budget is "
                                f"{fmt_bytes(total)}; raise --max-memory (max_memory)")


def same_on_all_ranks(op: Any, plan: Any) -> Any:
    """Rank 0's plan on every rank of a distributed operator (measured peaks differ between ranks; the ranks
    must run the same estimator, HVP for HVP, or their all-reduces would not pair up). Cost: one broadcast."""
    w = getattr(op, "world", None)
    if w is not None and getattr(w, "active", False):
        from ..distributed import broadcast_from_main
        return broadcast_from_main(plan)
    return plan


# --- Lanczos bases ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
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


def min_top_k_capacity(k: int) -> int:
    """Fewest basis vectors a thick-restarted search for k pairs works with: k plus a search space."""
    return k + max(3, min(k, 20)) + 1


def default_max_hvps(n: int, k: int) -> int:
    """The default Lanczos step budget of a top-k search: min(n, max(100, 30 k))."""
    return min(int(n), max(100, 30 * int(k)))


def _least_top_k(n: int, k: int, max_hvps: int) -> int:
    """Fewest basis vectors a top-k search with ``max_hvps`` Lanczos steps works with."""
    return min(min_top_k_capacity(k), min(int(max_hvps), n) + 1)


def _vector_bytes(n: int, dtype: torch.dtype) -> int:
    return n * torch.empty((), dtype=dtype).element_size()


def _host_fit(budget: MemoryBudget, vb: int) -> int:
    """Vectors of ``vb`` bytes that a basis kept in host memory may hold (0 off CUDA). Cost: one read."""
    return max(0, (budget.host - memory_in_use("cpu")) // vb) if budget.host else 0


def plan_top_k(op: Any, k: int, max_hvps: int, budget: MemoryBudget, hvp_peak: int | None = None,
               extra_vectors: int = 1, dtype: torch.dtype | None = None,
               extra_dtype: torch.dtype | None = None) -> MemoryPlan:
    """The basis of a top-k search: all ``max_hvps + 1`` vectors when they fit in ``budget``, else as many as
    fit with thick restarts (on CUDA, where not even the fewest fit the device, in host memory within
    ``budget.host``); ``MemoryBudgetError`` (with the estimate) when not even ``min_top_k_capacity(k)`` fit.
    ``hvp_peak``: the measured peak of one HVP (default: the memory in use now, a lower bound);
    ``extra_vectors`` are kept besides (returned eigenvectors, in ``extra_dtype``, default the basis dtype).
    Cost: none (arithmetic)."""
    budget = _resolved(budget)
    n = int(op.num_params)
    dtype = dtype or op_dtype(op)
    vb = _vector_bytes(n, dtype)
    base = int(hvp_peak) if hvp_peak is not None else memory_in_use(op.device)
    check_held(f"top-{k}", base, budget, hvp_peak is not None)   # not even one HVP fits: no host fallback either
    work = WORK_VECTORS * vb + extra_vectors * _vector_bytes(n, extra_dtype or dtype)
    want = min(int(max_hvps), n) + 1
    fit = (budget.total - base - work) // vb
    least = _least_top_k(n, k, max_hvps)
    name = str(dtype).replace("torch.", "")
    if fit < least and torch.device(op.device).type == "cuda":  # the basis in host memory, HVPs on the GPU
        host_fit = _host_fit(budget, vb)
        if host_fit >= least:
            cap = int(min(want, host_fit))
            return MemoryPlan("top-k", "full", cap, cap < want, name, "cpu", vb, budget.total, base, base + work,
                              cap * vb, budget.default)
    if fit < least:
        raise refuse(f"top-{k}", base + work + least * vb, budget.total,
                     f"{least} basis vectors of {fmt_bytes(vb)} + {fmt_bytes(base)} {_BASE}")
    cap = int(min(want, fit))
    return MemoryPlan("top-k", "full", cap, cap < want, name, str(torch.device(op.device)), vb, budget.total, base,
                      base + work + cap * vb, 0, budget.default)


def choose_top_k_plan(op: Any, k: int, max_hvps: int, budget: MemoryBudget, hvp_peak: int | None = None,
                      return_vectors: bool = False, dtype: torch.dtype | None = None) -> MemoryPlan:
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
        return replace(plan_top_k(op, k, max_hvps, budget, hvp_peak, extra_vectors, dt, extra_dtype),
                       dtype_choice=why)

    if dtype is not None:
        return plan(dtype, "asked")
    if own != torch.float64:
        try:
            return plan(torch.float64, "auto: float64 fits the memory budget")
        except ConfigError:
            return plan(own, "auto: the operator's dtype (a float64 basis does not fit the memory budget)")
    return plan(own, "auto: the operator's dtype")


def plan_density(op: Any, steps: int, budget: MemoryBudget, hvp_peak: int | None = None, reorth: str = "auto",
                 dtype: torch.dtype | None = None) -> MemoryPlan:
    """The basis of one SLQ probe: "full" (``steps + 1`` vectors) when they fit in ``budget`` (or when asked),
    else "local" (three vectors); ``MemoryBudgetError`` (with the estimate) when not even that fits.
    Cost: none (arithmetic)."""
    if reorth not in ("auto", "full", "local"):
        raise ConfigError(f"unknown reorth {reorth!r}; choose auto, full or local")
    budget = _resolved(budget)
    n = int(op.num_params)
    dtype = dtype or op_dtype(op)
    vb = _vector_bytes(n, dtype)
    base = int(hvp_peak) if hvp_peak is not None else memory_in_use(op.device)
    check_held("the density", base, budget, hvp_peak is not None)
    work = WORK_VECTORS * vb
    cap = min(int(steps), n) + 1
    full_peak = base + work + cap * vb
    name, device = str(dtype).replace("torch.", ""), str(torch.device(op.device))
    if reorth == "full" or (reorth == "auto" and full_peak <= budget.total):
        if full_peak > budget.total:
            raise refuse("the density (full reorthogonalization)", full_peak, budget.total,
                         f"{cap} basis vectors of {fmt_bytes(vb)}")
        return MemoryPlan("density", "full", cap, False, name, device, vb, budget.total, base, full_peak, 0,
                          budget.default)
    local_peak = base + work + 3 * vb
    if local_peak > budget.total:
        raise refuse("the density", local_peak, budget.total, f"3 vectors of {fmt_bytes(vb)} + {fmt_bytes(base)} "
                     f"{_BASE}")
    return MemoryPlan("density", "local", 3, False, name, device, vb, budget.total, base, local_peak, 0,
                      budget.default)


# --- the trace -------------------------------------------------------------------------------------------

def _whole(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ConfigError(f"{name} must be a whole number, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class TracePlan:
    """What ``hessian_trace`` runs under the memory budget: ``chosen`` (the estimator) for ``method`` (as
    asked), ``sketch_size`` (XTrace: its probes s; Hutch++: its sketch), ``probe_block`` (probes per
    ``matmat``), ``estimated_peak`` (bytes, ``hvp_peak`` included), ``auto_reason`` (why, for ``auto``;
    None otherwise), the budget, and what it was made for (``max_hvps``, ``num_params``, ``sketch_asked``)."""
    method: str
    chosen: str
    sketch_size: int
    probe_block: int
    estimated_peak: int
    hvp_peak: int
    max_memory: int
    max_memory_default: bool
    probe_memory: int
    auto_reason: str | None
    max_hvps: int
    num_params: int
    sketch_asked: int | None = None
    task: str = "trace"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        what = (f"xtrace, {self.sketch_size} probes" if self.chosen == "xtrace" else
                f"hutch++, a sketch of {self.sketch_size}" if self.chosen == "hutch++" else "hutchinson")
        return f"trace: {what}, probes in blocks of {self.probe_block}, peak ~{fmt_bytes(self.estimated_peak)}"


def plan_trace(op: Any, method: str, max_hvps: int | None, budget: MemoryBudget, hvp_peak: int | None = None,
               sketch_size: int | None = None) -> TracePlan:
    """What ``hessian_trace`` will run under ``budget``, decided before any HVP (``TracePlan``). Cost: none
    (arithmetic).

    Memory: XTrace keeps Omega, Q and Z (3 n x s, float64, preallocated; Y in chunks of ~s / 8: counted as
    4 n x s), Hutch++ its sketch (S, HS, Q, HQ: 4 n x s) and then Q beside each block of k probes (G, HG and
    their product: 3 n x k), Hutchinson 3 n x k; all beside ``hvp_peak`` (default: the memory in use now).

    The rule: ``method="auto"`` takes ``AUTO_RULE``'s method for ``max_hvps`` (default 300); where that is
    XTrace and its ``min(max_hvps // 2, n - 1)`` probes do not fit, Hutch++ with the largest sketch (at most
    ``min(max_hvps // 3, 20)``) that fits, else Hutchinson. A method named (or a ``sketch_size``, which asks
    for Hutch++) is run as asked or refused. Only the probe block (probes per ``matmat``; the draws and the
    estimate do not depend on it) shrinks to fit. ``MemoryBudgetError`` (one line with the estimate) when not
    even one probe fits."""
    if method not in TRACE_METHODS:
        raise ConfigError(f"unknown trace method {method!r}; choose from {', '.join(TRACE_METHODS)}")
    budget = _resolved(budget)
    n = int(op.num_params)
    hvps = _whole("max_hvps", max_hvps) if max_hvps is not None else 300
    if hvps < 1:
        raise ConfigError(f"max_hvps must be at least 1, got {max_hvps}")
    asked, kind = method, method
    if sketch_size is not None:
        sketch_size = _whole("sketch_size", sketch_size)
        if method not in ("hutch++", "auto"):
            raise ConfigError(f"sketch_size is Hutch++'s; method={method!r} has no sketch (drop sketch_size or "
                              "use method='hutch++')")
        kind = "hutch++"       # a sketch size asks for Hutch++ by name
        if sketch_size < 0 or 2 * min(sketch_size, n) > hvps:
            raise ConfigError(f"sketch_size {sketch_size} needs 2 * {sketch_size} HVPs, more than max_hvps={hvps}")
    device = getattr(op, "device", torch.device("cpu"))
    measured = hvp_peak is not None
    base = int(hvp_peak) if measured else memory_in_use(device)
    task = "the trace" + ("" if kind == "auto" else f" ({kind})")
    check_held(task, base, budget, measured)
    vec = 8 * n                                        # one float64 n-vector
    room = (budget.total - base) // vec                # n-vectors the budget holds beside the base
    preferred = int(getattr(op, "preferred_block", 1)) if hasattr(op, "matmat") else 1
    base_text = f"{fmt_bytes(base)} " + ("measured in one HVP" if measured else "held already")

    def probes_block(others: int) -> int:              # probes per block beside ``others`` kept vectors
        return int(max(0, min(preferred, hvps, (room - others) // 3)))

    def plan(chosen: str, s: int, block: int, peak_vectors: int, why: str | None) -> TracePlan:
        return TracePlan(asked, chosen, int(s), int(block), int(base + peak_vectors * vec), int(base), budget.total,
                         budget.default, int(max(budget.total - base, 0)), why, hvps, n, sketch_size)

    def xtrace_size() -> int:
        s_max = min(hvps // 2, n - 1)
        if s_max < 2:
            raise ConfigError(f"xtrace needs at least 4 HVPs and 3 parameters (max_hvps={hvps}, n={n})")
        return s_max

    def hutchpp_default() -> int:
        return min(n, hvps // 3, 20)

    def refuse_hutchinson() -> None:
        raise refuse(task, base + 3 * vec, budget.total, f"3 float64 vectors of {fmt_bytes(vec)} for one probe + "
                     f"{base_text}")

    chosen, why = kind, None
    if kind == "auto":
        chosen = [m for b, m in AUTO_RULE if b <= hvps][-1]
        why = f"AUTO_RULE: {chosen} at max_hvps={hvps}"
        if chosen == "xtrace":
            s_max = xtrace_size()
            if 4 * s_max > room:
                fits = [s for s in range(hutchpp_default(), 0, -1) if 4 * s <= room and probes_block(s) >= 1]
                need = fmt_bytes(base + 4 * s_max * vec)
                if fits:
                    s = fits[0]
                    why += (f"; its {s_max} probes need ~{need} ({base_text}), more than the "
                            f"{fmt_bytes(budget.total)} budget: hutch++ with a sketch of {s}, the largest that fits")
                    block = probes_block(s)
                    return plan("hutch++", s, block, max(4 * s, s + 3 * block), why)
                chosen = "hutchinson"
                why += (f"; its {s_max} probes need ~{need} ({base_text}), more than the "
                        f"{fmt_bytes(budget.total)} budget, and no Hutch++ sketch fits: hutchinson")
    if chosen == "xtrace":
        s_max = xtrace_size()
        if 4 * s_max > room:
            fit = room // 4
            hint = (f"at most {fit} probes fit (max_hvps={2 * fit})" if fit >= 2 else "not even 2 probes fit")
            raise refuse(task, base + 4 * s_max * vec, budget.total,
                         f"{s_max} probes for max_hvps={hvps}: 4 x {s_max} float64 vectors of {fmt_bytes(vec)} + "
                         f"{base_text}; {hint}, or method='auto' picks what fits")
        return plan("xtrace", s_max, preferred, 4 * s_max, why)
    if chosen == "hutch++":
        s = hutchpp_default() if sketch_size is None else min(sketch_size, n)
        block = probes_block(s)
        if 4 * s > room or block < 1:
            fit = [t for t in range(s, -1, -1) if 4 * t <= room and probes_block(t) >= 1]
            hint = f"a sketch of at most {fit[0]} fits (sketch_size={fit[0]})" if fit and fit[0] else \
                "no sketch fits"
            raise refuse(task, base + max(4 * s, s + 3) * vec, budget.total,
                         f"a sketch of {s}: 4 x {s} float64 vectors of {fmt_bytes(vec)} + {base_text}; {hint}")
        return plan("hutch++", s, block, max(4 * s, s + 3 * block), why)
    block = probes_block(0)                            # hutchinson, by name or by auto's rule
    if block < 1:
        refuse_hutchinson()
    return plan("hutchinson", 0, block, 3 * block, why)


# --- the planned job of a spectrum run ----------------------------------------------------------------

@dataclass(frozen=True)
class SpectrumJob:
    """What a spectrum run asks for, before anything is measured: the operator's size (``num_params``, the
    HVPs' ``dtype``), the resolved ``budget`` (its device is the operator's), and the parts: top-k
    (``top_k`` > 0; ``max_hvps`` Lanczos steps, None: ``default_max_hvps``), the trace (``trace``; its
    method and HVPs) and the density (``density``; probes x steps, ``reorth``)."""
    num_params: int
    dtype: str
    budget: MemoryBudget
    top_k: int = 0
    max_hvps: int | None = None
    trace: bool = False
    trace_method: str = "auto"
    trace_max_hvps: int = 300
    density: bool = False
    density_probes: int = 3
    density_steps: int = 80
    reorth: str = "auto"

    @property
    def top_k_steps(self) -> int:
        """Lanczos steps of the top-k search (0 without one)."""
        if not self.top_k:
            return 0
        return int(self.max_hvps) if self.max_hvps else default_max_hvps(self.num_params, self.top_k)

    @property
    def hvps(self) -> dict[str, int]:
        """HVPs each part spends at most (top-k: its steps plus one true residual per pair)."""
        return {"top_eigenvalues": self.top_k_steps + self.top_k if self.top_k else 0,
                "trace": int(self.trace_max_hvps) if self.trace else 0,
                "density": self.density_probes * min(self.density_steps, self.num_params) if self.density else 0}

    def check(self) -> None:
        """Refuse at once, before the operator is built (its samples, its attack) or any HVP, what cannot fit
        even at its least beside what the process holds now: the top-k's fewest basis vectors
        (``min_top_k_capacity``) in the HVPs' dtype (on CUDA, or in host memory), the density's three vectors,
        the trace's one probe (three float64 vectors). A lower bound, not a plan: ``plan_spectrum`` plans
        once the HVP's peak is measured. Cost: a read of /proc (or of CUDA's allocation)."""
        b, n = self.budget, self.num_params
        held = memory_in_use(b.device)
        dtype = getattr(torch, self.dtype)
        vb = _vector_bytes(n, dtype)
        if self.top_k:
            check_held(f"top-{self.top_k}", held, b)
            least = _least_top_k(n, self.top_k, self.top_k_steps)
            need = held + (WORK_VECTORS + 1 + least) * vb
            if need > b.total and _host_fit(b, vb) < least:
                raise refuse(f"top-{self.top_k}", need, b.total,
                             f"{least} basis vectors of {fmt_bytes(vb)} + {fmt_bytes(held)} {_BASE}")
        if self.density:
            check_held("the density", held, b)
            if held + (WORK_VECTORS + 3) * vb > b.total:
                raise refuse("the density", held + (WORK_VECTORS + 3) * vb, b.total,
                             f"3 vectors of {fmt_bytes(vb)} + {fmt_bytes(held)} {_BASE}")
        if self.trace:
            check_held("the trace", held, b)
            if held + 3 * 8 * n > b.total:
                raise refuse("the trace", held + 3 * 8 * n, b.total, f"3 float64 vectors of {fmt_bytes(8 * n)} "
                             f"for one probe + {fmt_bytes(held)} held already")


@dataclass(frozen=True)
class SpectrumPlan:
    """The one plan of a spectrum run, made once by ``plan_spectrum``: the ``job``, the measured time and
    peak of one HVP, and each requested part's plan (``top_k``, ``trace``, ``density``; None for a part not
    asked for). landscape-spectrum prints ``describe()`` and records ``to_dict()`` as its "estimate"; the
    estimators run ``top_k`` / ``trace`` / ``density`` as they are (``plan=``)."""
    job: SpectrumJob
    hvp_seconds: float
    hvp_peak: int
    top_k: MemoryPlan | None = None
    trace: TracePlan | None = None
    density: MemoryPlan | None = None
    timing_hvps: int = 2

    @property
    def parts(self) -> dict[str, "MemoryPlan | TracePlan"]:
        """The plans of the requested parts, by name (top_k, density, trace)."""
        return {k: p for k, p in (("top_k", self.top_k), ("density", self.density), ("trace", self.trace))
                if p is not None}

    @property
    def seconds_at_most(self) -> float:
        return sum(self.job.hvps.values()) * self.hvp_seconds

    @property
    def peak_bytes(self) -> int:
        """The estimated peak of the run: the largest of its parts' (they run one after another)."""
        return max([p.estimated_peak for p in self.parts.values()] or [self.hvp_peak])

    def describe(self) -> str:
        """The estimate line: HVPs at most (by part), the time of one HVP and of them all, the peak memory of
        the budget, and each part's plan."""
        hvps = self.job.hvps
        total = sum(hvps.values())
        return (f"at most {total} HVPs ({', '.join(f'{k} {v}' for k, v in hvps.items() if v)}), one HVP "
                f"{self.hvp_seconds:.3g} s, so at most {_duration(self.seconds_at_most)}; peak memory "
                f"~{fmt_bytes(self.peak_bytes)} of {fmt_bytes(self.job.budget.total)} (--max-memory)"
                + "".join(f"; {p.describe()}" for p in self.parts.values()))

    def to_dict(self) -> dict:
        """JSON-ready: HVPs, seconds, the measured HVP peak, the estimated peak, the budget, each part's plan
        (``plans``) and the printed line (``text``)."""
        return {"hvps_at_most": self.job.hvps, "hvp_seconds": self.hvp_seconds,
                "seconds_at_most": self.seconds_at_most, "hvp_peak_bytes": self.hvp_peak,
                "peak_bytes": self.peak_bytes, "max_memory": self.job.budget.total,
                "max_memory_default": self.job.budget.default, "timing_hvps": self.timing_hvps,
                "plans": {k: p.to_dict() for k, p in self.parts.items()}, "text": self.describe()}


def plan_spectrum(op: Any, job: SpectrumJob, seed: int = 0) -> SpectrumPlan:
    """THE plan of a spectrum run on ``op`` (``num_params``, ``device``, ``dtype``, ``matvec``; a
    HessianOperator): two HVPs timed and their peak measured (``time_hvp``), then each requested part planned
    under ``job.budget`` beside that peak (``choose_top_k_plan``, ``plan_density``, ``plan_trace``), rank 0's
    plan on every rank. ``MemoryBudgetError`` (one line, with the estimate) when a part cannot fit. Cost: two
    HVPs, then arithmetic."""
    if int(op.num_params) != job.num_params:
        raise ConfigError(f"the job is for {job.num_params:,} weights, the operator has {int(op.num_params):,}")
    seconds, peak = time_hvp(op, seed=seed)
    b = job.budget
    top = choose_top_k_plan(op, job.top_k, job.top_k_steps, b, peak) if job.top_k else None
    rho = plan_density(op, job.density_steps, b, peak, job.reorth) if job.density else None
    tr = plan_trace(op, job.trace_method, job.trace_max_hvps, b, peak) if job.trace else None
    return same_on_all_ranks(op, SpectrumPlan(job, seconds, peak, top, tr, rho))


__all__ = ["MemoryBudget", "MemoryBudgetError", "MemoryPlan", "TracePlan", "SpectrumJob", "SpectrumPlan",
           "PeakMemory", "parse_memory", "parse_budget", "fmt_bytes", "graph_memory", "available_memory",
           "memory_in_use", "default_max_memory", "time_hvp", "check_held", "refuse", "min_top_k_capacity",
           "default_max_hvps", "plan_top_k", "choose_top_k_plan", "plan_density", "plan_trace", "plan_spectrum",
           "same_on_all_ranks", "op_dtype", "MIN_BARE_BYTES", "GRAPH_SHARE", "DEFAULT_FRACTION", "WORK_VECTORS",
           "TRACE_METHODS", "AUTO_RULE"]
