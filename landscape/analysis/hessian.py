"""The Hessian of a model's loss with respect to its weights, as a linear operator (Hessian-vector products).

``HessianOperator`` holds a fixed set of samples (clean, or adversarial examples made once by seeded PGD at
the current weights and then held fixed) and computes ``H v`` where ``H`` is the Hessian of the MEAN
cross-entropy over all samples: ``H = (1/N) sum_b H_b`` with ``H_b`` the Hessian of the SUMMED loss of batch
``b``, so batches of unequal size are weighted by their size.

HVP method, measured with ``benchmarks/spectrum_vs_pyhessian.py`` (CPU, 1 thread, torch 2.14.1, cnn-small
trained on digits, 256 samples, 151k weights; median of 5 calls):

    one gradient (forward + backward) ..............................  42 ms
    double backward, gradient graph built once and reused (1 batch)  73 ms  (1.74 x gradient)
    double backward, graph rebuilt every HVP (2 batches) ........... 117 ms  (2.78 x gradient)
    forward-over-reverse (torch.func.jvp over torch.func.grad) ..... 112 ms  (2.67 x gradient)

Forward-over-reverse cannot reuse a graph; double backward can, which makes it the clear winner when the
graphs can be kept: the operator keeps each batch's gradient graph between HVPs while the graphs fit
``max_graph_memory`` (default: ``memory.GRAPH_SHARE`` of the default memory budget; a ``MemoryBudget``: its
share; a size as ``--max-memory`` reads it, "2GB" or bytes of at least 1 MB; 0: none) and rebuilds the others at
every HVP, where the two methods are within noise of each other. A kept graph is checked before every reuse
against the weights it was built at, and rebuilt when they changed (``_GraphCache``).

``matmat(V)`` (several vectors) measured with ``benchmarks/hvp_matmat.py`` (same model and samples, CPU, 1
thread, a shared and loaded machine: ratios from one run, median of 5 interleaved rounds; seconds per HVP /
one gradient):

    setting                      one vector   block of 16, one pass each   16 in one vmapped pass
    1 batch, graph kept            1.58 x           1.47 x                      1.73 x
    2 batches, graphs kept         1.45 x           1.20 x                      1.75 x
    2 batches, graphs rebuilt      1.99 x           1.15 x                      1.96 x

So on CPU the vmapped pass (``is_grads_batched``) never pays (it is slower than single vectors), while a
block that shares one graph build among its vectors removes the rebuild cost (1.7 x faster when graphs are
rebuilt; no gain when they are kept). On a GPU (H200, PreAct-ResNet-18, 256 samples, ``benchmarks/gpu_check.py``,
2026-12-04) the vmapped pass did not pay either: XTrace's 100 HVPs in vmapped blocks of 16 took 0.40 s per HVP
against 0.18 s for one matvec, at a 48.5 GB peak against the top-5's 25.3 GB, and WRN-34-10's ran out of the
card's 140 GB. Defaults: ``MATMAT_BLOCK`` columns per block, never vmapped (``MATMAT_VMAP``);
``preferred_block`` tells the
estimators when a block pays. Lanczos-type recurrences (one vector at a time, each from the last) gain
nothing from matmat; for them the graph budget is what matters (1.45-1.58 x kept vs 1.99 x rebuilt).

Method (``hvp_method``): "double-backward", "fwd-over-rev" (forward-over-reverse: the weights as dual
tensors of ``torch.autograd.forward_ad``, tangent v, through one forward and one backward pass; the
gradient's tangent is H v; no graph is kept) or "auto" (the default): ``AUTO_HVP[device type]``, the faster
one as measured by ``benchmarks/hvp_modes.py`` (``benchmarks/results/hvp_modes.md``; CPU, 1 thread, float32,
one batch, HVP / gradient; two runs on a shared, loaded 2-core machine, first / second):

    model (samples)          double backward, kept     rebuilt       fwd-over-rev   (torch.func jvp of grad)
    cnn-small (64)                1.53 / 1.30 x      2.48 / 2.18 x   2.81 / 2.56 x       2.67 / 2.83 x
    preact-resnet18 (16)          2.17 / 1.69 x      3.24 / 2.74 x   3.46 / 3.34 x       3.68 / 3.42 x
    wrn-34-10 (8)                 2.11 / 1.83 x      3.16 / 3.28 x   3.17 / 3.85 x       3.47 / 3.26 x

so on the CPU auto is double backward (forward-over-reverse costs what a rebuilt graph costs, or more, and
cannot keep one); on CUDA auto stays double backward until a GPU measurement exists (``benchmarks/
gpu_check.py`` times both). With ``bn="batch"`` on a model with BatchNorm, auto is always double backward, and
"fwd-over-rev" is refused on device types not in ``FWD_OVER_REV_BN_BATCH`` (pytorch#196699: train-mode
batch_norm's nested forward derivative is wrong in forward-over-forward; forward-over-reverse is tested
exact on the CPU, cuDNN's kernels untested). The two methods agree to float round-off (float64: 1e-10 in
the tests; float32: ~3e-7); ``describe()`` records the method that ran and the one requested.

BatchNorm: ``bn="running"`` (default) evaluates the model in eval mode with its running statistics;
``bn="batch"`` normalizes with each batch's own statistics (BatchNorm layers in train mode with
``track_running_stats`` switched off during the forward pass, so the running statistics are never read or
written). Dropout is always off. Parameter ``.grad`` fields are never touched (``torch.autograd.grad`` only).

Distributed (``torchrun``; see ``landscape.distributed``): when a process group with several ranks is
initialized, every rank is given the same samples and keeps a contiguous shard of them, cut on multiples of
the attack batch (and of ``batch_size`` with ``bn="batch"``) so that each adversarial example and each
BatchNorm batch is exactly what a single process makes. One matvec is the local HVP sum over the shard plus
ONE all-reduce of the flat vector, divided by the global sample count; every rank receives the same vector,
so the estimators in ``spectrum`` (whose random probes come from seeded CPU generators) run identically on
all ranks and agree with a single process to float round-off (the sum is taken in another order).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import nn

from ..attack_spec import AttackSpec, resolve_attack
from ..attacks import eval_mode
from ..devices import resolve_device
from ..distributed import all_reduce_sum
from ..errors import ConfigError
from ..precision import full_float32
from .memory import MemoryBudget, graph_memory
from .samples import SampleSet

LOSSES = ("clean", "adversarial")
BN_MODES = ("running", "batch")
HVP_METHODS = ("double-backward", "fwd-over-rev")   # the two implementations of one HVP
HVP_CHOICES = (*HVP_METHODS, "auto")                  # what ``hvp_method=`` accepts
# ``hvp_method="auto"``, by device type: the faster method, as measured by benchmarks/hvp_modes.py (CPU:
# benchmarks/results/hvp_modes.md). CUDA stays on double backward until a GPU measurement exists
# (benchmarks/gpu_check.py times both). A device type not listed: double backward.
AUTO_HVP = {"cpu": "double-backward", "cuda": "double-backward"}
# device types where forward-over-reverse with BatchNorm in train mode (bn="batch") is tested exact
# (tests/test_hvp_modes.py, tests/test_hessian.py). Elsewhere it is refused: pytorch#196699 reports a silent
# error in train-mode batch_norm's nested forward derivative (forward-over-forward; reproduced with torch 2.14
# on the CPU, while forward-over-reverse is exact there); no GPU check has covered cuDNN's kernels yet.
FWD_OVER_REV_BN_BATCH = ("cpu",)
ParamFilter = Callable[[str, nn.Parameter], bool] | str | Sequence[str] | None
Batch = tuple[torch.Tensor, torch.Tensor]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def resolve_hvp_method(method: str, device: torch.device | str, bn: str = "running",
                       batchnorm: bool = True) -> str:
    """The HVP implementation that ``method`` means on ``device``: "auto" is ``AUTO_HVP[device type]`` (double
    backward where not listed), and always double backward with ``bn="batch"`` on a model with BatchNorm
    (``batchnorm``). "fwd-over-rev" with ``bn="batch"`` and BatchNorm on a device type not in
    ``FWD_OVER_REV_BN_BATCH`` is refused (ConfigError): not tested exact there (pytorch#196699)."""
    if method not in HVP_CHOICES:
        raise ConfigError(f"unknown hvp_method {method!r}; choose from {', '.join(HVP_CHOICES)}")
    dtype = torch.device(device).type
    train_bn = bn == "batch" and batchnorm
    if method == "auto":
        return "double-backward" if train_bn else AUTO_HVP.get(dtype, "double-backward")
    if method == "fwd-over-rev" and train_bn and dtype not in FWD_OVER_REV_BN_BATCH:
        raise ConfigError(f"hvp_method='fwd-over-rev' with bn='batch' (BatchNorm in train mode) is tested exact "
                          f"only on {', '.join(FWD_OVER_REV_BN_BATCH)}, not {dtype} (pytorch#196699); use "
                          f"hvp_method='double-backward' or 'auto'")
    return method


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    """cuDNN's autotuner (``torch.backends.cudnn.benchmark``) set to ``on`` inside the block, restored after."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(on)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _select_params(model: nn.Module, param_filter: ParamFilter) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters kept by ``param_filter``: a predicate ``f(name, p)``, or module/parameter names
    (``"4"`` keeps ``4.weight`` and ``4.bias``; ``"4.weight"`` keeps just that one)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if param_filter is None:
        keep = named
    elif callable(param_filter):
        keep = [(n, p) for n, p in named if param_filter(n, p)]
    else:
        prefixes = [param_filter] if isinstance(param_filter, str) else list(param_filter)
        keep = [(n, p) for n, p in named if any(n == s or n.startswith(s.rstrip(".") + ".") for s in prefixes)]
    if not keep:
        raise ConfigError(f"param_filter {param_filter!r} selects no trainable parameter; names are e.g. "
                          f"{', '.join(n for n, _ in named[:4])}")
    return keep


# columns per vmapped double-backward pass in ``matmat``, by device type (measured: benchmarks/hvp_matmat.py)
MATMAT_BLOCK = {"cpu": 16, "cuda": 16}
MATMAT_VMAP = {"cpu": False, "cuda": False}  # one vmapped pass per block (True) or one pass per column


class _GraphCache:
    """Per-batch gradient graphs (``create_graph``) kept between HVPs while they fit ``budget`` bytes.

    A graph is built at a batch's first HVP and its size measured (``HessianOperator._grad_graph``); it is
    kept if the graphs kept so far plus it fit the budget, else that batch's graph is rebuilt at every HVP
    (reusing a graph costs ~1.7 gradients per HVP, rebuilding ~2.6: ``benchmarks/spectrum_vs_pyhessian.py``).
    A single batch's graph is always kept: each HVP needs it whole anyway, so keeping it adds no peak memory.

    Staleness: the kept graphs hold the weights' and activations' values at build time. Before each HVP
    ``check`` compares every model parameter and buffer with a snapshot taken when the first graph was kept
    (autograd version counter, storage, and values: ``p.data = ...`` and ``p.data.copy_()`` bump no version
    counter) and drops all graphs when anything changed (rebuilt on the way; the samples, adversarial ones
    included, stay those the operator was made with). Cost: one compare of the model's tensors per HVP and a
    copy of them in memory. A parameter object replaced in the model cannot be followed: ``ConfigError``.
    """

    def __init__(self, op: "HessianOperator", max_graph_memory: "int | float | str | MemoryBudget | None"):
        # bytes the kept graphs may take, resolved once (memory.graph_memory: the unit rule of --max-memory),
        # and what the caller gave (None: the default share)
        budget, given = graph_memory(max_graph_memory, op.device)
        # a weak reference: the operator owns its cache, and a strong one back would make a cycle that keeps
        # the operator and its gradient graphs alive until the cycle collector happens to run (one cause of
        # a long study process growing to 8.8 GB: ~0.75 GB per model before, ~0.5 GB after this fix)
        self.op, self.given = weakref.proxy(op), given
        self.budget = int(budget)
        self.graphs: dict[int, list[torch.Tensor | None]] = {}
        self.sizes: dict[int, int] = {}   # measured bytes of each batch's graph
        self.rebuilt: set[int] = set()    # batches whose graph did not fit: rebuilt at every HVP
        self.builds = self.stale = 0
        self._snapshot: list[tuple[int, int, torch.Tensor]] | None = None

    def _tensors(self) -> list[torch.Tensor]:
        return [t.detach() for t in [*self.op.model.parameters(), *self.op.model.buffers()]]

    def clear(self) -> None:
        self.graphs.clear()
        self.rebuilt.clear()
        self._snapshot = None

    def check(self) -> None:
        """Refuse a model whose selected parameters were replaced; drop kept graphs the weights outgrew."""
        current = {id(p) for p in self.op.model.parameters()}
        gone = [n for n, p in self.op.params if id(p) not in current]
        if gone:
            raise ConfigError(f"the model's parameter {gone[0]} was replaced by a new tensor object after this "
                              f"HessianOperator was made; make a new operator (assign p.data or copy_ instead)")
        if self._snapshot is None:
            return
        ts = self._tensors()
        if len(ts) != len(self._snapshot) or any(
                t._version != ver or t.data_ptr() != ptr or t.shape != old.shape or not torch.equal(t, old)
                for t, (ver, ptr, old) in zip(ts, self._snapshot)):
            self.clear()
            self.stale += 1

    def get(self, b: int) -> tuple[list[torch.Tensor | None], bool]:
        """Batch ``b``'s gradient graph and whether it is kept (else the caller may free it)."""
        if b in self.graphs:
            return self.graphs[b], True
        x, y = self.op.batches[b]
        grads, nbytes = self.op._grad_graph(x, y)
        self.builds += 1
        self.sizes[b] = nbytes
        if b not in self.rebuilt and (len(self.op.batches) == 1 or self.kept_bytes + nbytes <= self.budget):
            if self._snapshot is None:
                self._snapshot = [(t._version, t.data_ptr(), t.clone()) for t in self._tensors()]
            self.graphs[b] = grads
            return grads, True
        self.rebuilt.add(b)
        return grads, False

    @property
    def kept_bytes(self) -> int:
        return int(sum(self.sizes[b] for b in self.graphs))

    def describe(self) -> dict:
        """The budget and the choice made so far (``planned`` is False before the first HVP)."""
        n = len(self.op.batches)
        return {"budget_bytes": self.budget, "budget_given": self.given,
                "planned": len(self.sizes) == n, "batches": n, "kept": len(self.graphs),
                "rebuilt_per_hvp": len(self.rebuilt), "kept_bytes": self.kept_bytes,
                "graph_bytes_max": max(self.sizes.values(), default=None), "builds": self.builds,
                "stale_rebuilds": self.stale}


class HessianOperator:
    """Hessian of the mean loss over a fixed sample set w.r.t. (some of) the model's weights.

    ``matvec(v)`` (also ``op @ v``) takes and returns flat vectors of length ``num_params``; each call is
    one HVP (``hvp_count``), whatever the number of batches; ``matmat(V)`` is k of them. Cost of one HVP,
    per batch: one double-backward pass through the batch's gradient graph, kept from the first HVP while
    the kept graphs fit ``max_graph_memory`` (always, for a single batch), else rebuilt at every HVP
    (+ one forward and one backward with ``create_graph``); ``describe()["graph_cache"]`` says which.
    ``data`` is a ``SampleSet`` (``analysis.samples``: batches, shard and adversarial examples made once, which
    several operators may share) or raw data, from which one is made here: for ``loss="adversarial"`` the
    PGD examples of ``attack`` (an ``AttackSpec``; cost: ``steps`` forward+backward passes per sample) at the
    model's current weights, then held fixed; ``batches`` holds the samples the Hessian is taken over
    (on this rank: under ``torchrun`` each rank holds the shard ``shard`` of them; ``num_samples`` is the
    total over all ranks). ``distributed=False`` keeps every sample on every rank even in a process group.
    Every pass runs with TF32 off unless ``tf32=True`` (``landscape.precision.full_float32``: TF32 puts a
    ~1e-3 relative floor under each HVP on Ampere and later GPUs); ``describe()["tf32"]`` records it, and
    ``describe()["cudnn_benchmark"]`` cuDNN's autotuner during the passes (``cudnn_benchmark``, off by
    default: no GPU measurement yet; a CUDA flag, False on other devices). ``hvp_method``: see the module's
    docstring (``describe()["hvp_method"]`` is the method that runs, ``"hvp_method_requested"`` the one asked).
    """

    def __init__(self, model: nn.Module, data: Any, loss: str = "clean", attack: AttackSpec | None = None,
                 bn: str = "running", param_filter: ParamFilter = None, batch_size: int | None = None,
                 seed: int = 0, device: str | torch.device | None = None, hvp_method: str = "auto",
                 distributed: bool = True, max_graph_memory: "int | float | str | MemoryBudget | None" = None,
                 tf32: bool = False, cudnn_benchmark: bool = False):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
        if bn not in BN_MODES:
            raise ConfigError(f"unknown bn mode {bn!r}; choose from {', '.join(BN_MODES)}")
        if hvp_method not in HVP_CHOICES:
            raise ConfigError(f"unknown hvp_method {hvp_method!r}; choose from {', '.join(HVP_CHOICES)}")
        if attack is not None and not isinstance(attack, AttackSpec):
            raise ConfigError(f"attack must be an AttackSpec, got {type(attack).__name__}")
        if loss == "adversarial" and attack is None and not isinstance(data, SampleSet):
            raise ConfigError("loss='adversarial' needs attack=AttackSpec(eps=...) (or HessianOperator."
                              "from_checkpoint with a checkpoint whose config has eps)")
        self.model, self.loss, self.bn, self.seed = model, loss, bn, int(seed)
        self.tf32 = bool(tf32)
        self.params = _select_params(model, param_filter)
        self._param_filter = param_filter
        first = self.params[0][1]
        self.device = resolve_device(device) if device is not None else first.device
        self.hvp_requested = hvp_method
        self.hvp_method = resolve_hvp_method(hvp_method, self.device, bn, has_batchnorm(model))
        # cuDNN's autotuner during this operator's passes (a CUDA flag: False on other devices, where it is unused)
        self.cudnn_benchmark = bool(cudnn_benchmark) and self.device.type == "cuda"
        self.dtype = first.dtype
        self._shapes = [p.shape for _, p in self.params]
        self._numels = [p.numel() for _, p in self.params]
        self.num_params = int(sum(self._numels))
        self.attack = attack if loss == "adversarial" else None   # the AttackSpec of the adversarial loss
        if isinstance(data, SampleSet):      # made once, perhaps shared with other operators (one attack)
            if loss == "adversarial" and data.attack is None:
                raise ConfigError("loss='adversarial' on a SampleSet without adversarial examples: make it with "
                                  "SampleSet.make(model, data, attack=...)")
            if loss == "adversarial" and attack is not None and attack != data.attack:
                raise ConfigError("the SampleSet's examples were made with another attack than attack=")
            if loss == "adversarial":
                self.attack = data.attack
            if bn == "batch" and data.world.active and data.batch_size is None:
                raise ConfigError("bn='batch' under torchrun needs batch_size: BatchNorm batches must not be "
                                  "split between ranks")
            self.sample_set = data
        else:
            self.sample_set = SampleSet.make(model, data, self.attack, batch_size=batch_size, seed=seed,
                                             device=self.device, bn=bn, distributed=distributed, tf32=tf32,
                                             what="HessianOperator's data")
        ss = self.sample_set
        self.batch_size, self.batches, self.num_samples, self.shard = ss.batch_size, ss.batches, ss.num_samples, ss.shard
        self.world, self.attack_seconds = ss.world, ss.attack_seconds
        self.hvp_count = 0
        self._graphs = _GraphCache(self, max_graph_memory)
        self.matmat_block = MATMAT_BLOCK.get(self.device.type, 1)
        self.matmat_vmap = MATMAT_VMAP.get(self.device.type, False)

    # --- construction helpers ----------------------------------------------------------------------
    # the attack's settings, read from the spec (None for the clean loss)
    eps = property(lambda self: self.attack.eps if self.attack else None)
    steps = property(lambda self: self.attack.steps if self.attack else None)
    step_size = property(lambda self: self.attack.alpha if self.attack else None)
    norm = property(lambda self: self.attack.norm if self.attack else None)
    restarts = property(lambda self: self.attack.restarts if self.attack else None)

    @classmethod
    def from_checkpoint(cls, ck: Any, data: Any, loss: str = "clean", attack: AttackSpec | None = None,
                        **kwargs: Any) -> "HessianOperator":
        """An operator on ``ck.model``; for the adversarial loss the attack is ``attack``, else the checkpoint's
        training attack (``attack_spec.resolve_attack``; no eps: refused)."""
        if loss == "adversarial" and attack is None:
            attack = resolve_attack(getattr(ck, "config", {}) or {})
        return cls(ck.model, data, loss=loss, attack=attack, **kwargs)

    # --- flat vectors <-> parameter-shaped tensors ---------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_params, self.num_params)

    @property
    def param_names(self) -> list[str]:
        return [n for n, _ in self.params]

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into parameter-shaped views, keyed by parameter name."""
        if v.dim() != 1 or v.numel() != self.num_params:
            raise ConfigError(f"expected a flat vector of {self.num_params} entries, got shape {tuple(v.shape)}")
        return {n: t.view(s) for (n, _), t, s in zip(self.params, torch.split(v, self._numels), self._shapes)}

    def flatten(self, tensors: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate parameter-shaped tensors (a dict by name or a list in ``params`` order) into one vector."""
        ts = [tensors[n] for n, _ in self.params] if isinstance(tensors, dict) else list(tensors)
        return torch.cat([t.reshape(-1) for t in ts])

    def param_vector(self) -> torch.Tensor:
        """The current weights as one flat (detached) vector."""
        return self.flatten([p.detach() for _, p in self.params])

    # --- forward pass in the operator's mode ---------------------------------------------------------
    def _flags(self) -> contextlib.AbstractContextManager:
        """TF32 (``full_float32``) and, on CUDA, cuDNN's autotuner as the operator was made, for one pass."""
        stack = contextlib.ExitStack()
        stack.enter_context(full_float32(self.tf32))
        if self.device.type == "cuda":
            stack.enter_context(_cudnn_benchmark(self.cudnn_benchmark))
        return stack

    def _mode(self) -> contextlib.AbstractContextManager:
        """Eval mode; with bn="batch", BatchNorm layers use batch statistics and never touch their buffers
        (``attacks.eval_mode``, the one owner of that switch; the caller's grad mode is kept)."""
        return eval_mode(self.model, "batch" if self.bn == "batch" else "eval", grad=False)

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """Summed cross-entropy of one batch (through ``functional_call`` when ``params`` are given)."""
        logits = self.model(x) if params is None else torch.func.functional_call(self.model, params, (x,))
        return F.cross_entropy(logits, y, reduction="sum")

    def _grad_graph(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor | None], int]:
        """The gradient of one batch's summed loss with its graph (``create_graph``), and the bytes that
        graph holds: the tensors autograd saves (counted once per storage; weights, buffers and inputs
        excluded, as they live anyway) plus the gradients. One forward + one backward pass."""
        ps = [p for _, p in self.params]
        live = {t.untyped_storage().data_ptr() for t in [*self.model.parameters(), *self.model.buffers(), x]}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            if st.data_ptr() not in live:
                saved[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with self._mode():
                loss = self._batch_loss(x, y)
            grads = list(torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True))
        nbytes = sum(saved.values()) + sum(g.numel() * g.element_size() for g in grads if g is not None)
        return grads, int(nbytes)

    def _double_backward(self, grads: list[torch.Tensor | None], vs: list[torch.Tensor],
                         retain: bool, batched: bool = False) -> list[torch.Tensor]:
        """d(g . v)/dw: one backward pass through the gradient graph (``batched``: each ``vs[i]`` has a
        leading dimension of k vectors, all taken in one vmapped pass, ``is_grads_batched``)."""
        ps = [p for _, p in self.params]
        idx = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not idx:  # the loss is (at most) linear in these weights
            return [torch.zeros_like(v) for v in vs]
        hv = torch.autograd.grad([grads[i] for i in idx], ps, grad_outputs=[vs[i] for i in idx],
                                 retain_graph=retain, allow_unused=True, is_grads_batched=batched)
        return [torch.zeros_like(v) if h is None else h for h, v in zip(hv, vs)]

    def _fwd_over_rev(self, x: torch.Tensor, y: torch.Tensor, vs: list[torch.Tensor]) -> list[torch.Tensor]:
        """H v for one batch's summed loss as the forward derivative of its gradient: the weights become dual
        tensors (value w, tangent v; ``torch.autograd.forward_ad``), one forward and one backward pass
        (``functional_call``, ``torch.autograd.grad`` without ``create_graph``) carry the tangents, and the
        gradient's tangent is H v. No graph outlives the call. The same numbers as ``torch.func.jvp`` over
        ``torch.func.grad``, within noise of its time on the CPU (0.90-1.18 x; benchmarks/hvp_modes.py) without
        its function transforms."""
        with fwad.dual_level():
            duals = {n: fwad.make_dual(p.detach(), v.to(p.dtype)).requires_grad_(True)
                     for (n, p), v in zip(self.params, vs)}
            with self._mode():
                loss = self._batch_loss(x, y, duals)
            ds = list(duals.values())
            grads = torch.autograd.grad(loss, ds, allow_unused=True) if loss.requires_grad else [None] * len(ds)
            hv = [None if g is None else fwad.unpack_dual(g).tangent for g in grads]
        return [torch.zeros_like(v) if h is None else h for h, v in zip(hv, vs)]

    def _hvp_batch(self, b: int, vs: list[torch.Tensor], batched: bool = False) -> list[torch.Tensor]:
        """H_b v for the SUMMED loss of batch ``b`` (``batched``: k vectors stacked on a leading dim)."""
        x, y = self.batches[b]
        if self.hvp_method == "fwd-over-rev":
            if batched:   # one forward-over-reverse pass per vector (nothing is shared between them)
                cols = [self._fwd_over_rev(x, y, [v[j] for v in vs]) for j in range(len(vs[0]))]
                return [torch.stack(c) for c in zip(*cols)]
            return self._fwd_over_rev(x, y, vs)
        grads, kept = self._graphs.get(b)
        if batched and not self.matmat_vmap:  # one graph (built once), the k vectors one pass each
            k = len(vs[0])
            cols = [self._double_backward(grads, [v[j] for v in vs], retain=kept or j < k - 1) for j in range(k)]
            return [torch.stack(c) for c in zip(*cols)]
        return self._double_backward(grads, vs, retain=kept, batched=batched)

    def _local_hvp_sum(self, vs: list[torch.Tensor], batched: bool = False) -> list[torch.Tensor]:
        """sum_b H_b v over this process's batches (summed losses)."""
        self._graphs.check()
        total = [torch.zeros_like(v) for v in vs]
        with self._flags():
            for b in range(len(self.batches)):
                for t, h in zip(total, self._hvp_batch(b, vs, batched)):
                    t.add_(h)
        return total

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` (any float dtype/device); returned in ``v``'s dtype on the
        operator's device. One HVP: the local sum over this rank's batches, one all-reduce under torchrun."""
        v = torch.as_tensor(v)
        out_dtype = v.dtype if v.is_floating_point() else self.dtype
        vs = list(self.unflatten(v.to(self.device, self.dtype)).values())
        hv = self.flatten(self._local_hvp_sum(vs))
        if self.world.active:
            all_reduce_sum(hv)
        self.hvp_count += 1
        return (hv / self.num_samples).to(out_dtype)

    __matmul__ = matvec

    def matmat(self, V: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """``H V`` for an n x k matrix ``V`` (k HVPs, counted as k), ``block`` columns at a time (default
        ``self.matmat_block``): per block, each batch's gradient graph is built at most once (a graph that
        is rebuilt for every matvec is shared by the block's columns), and the columns go through it either
        one double-backward pass each (``self.matmat_vmap`` False) or all in ONE vmapped pass
        (``torch.autograd.grad(..., is_grads_batched=True)``, memory ~ block x one HVP's intermediates).
        ``block=1`` is a loop of ``matvec``. Returned in ``V``'s dtype on the operator's device. Defaults by
        device type: ``MATMAT_BLOCK``, ``MATMAT_VMAP``; ``benchmarks/hvp_matmat.py`` measures them."""
        V = torch.as_tensor(V)
        if V.dim() != 2 or V.shape[0] != self.num_params:
            raise ConfigError(f"expected a {self.num_params} x k matrix, got shape {tuple(V.shape)}")
        out_dtype = V.dtype if V.is_floating_point() else self.dtype
        bs = max(1, int(block if block is not None else self.matmat_block))
        out = torch.empty(V.shape, dtype=out_dtype, device=self.device)
        for j in range(0, V.shape[1], bs):
            if bs == 1:
                out[:, j] = self.matvec(V[:, j])
                continue
            rows = V[:, j:j + bs].T.to(self.device, self.dtype).contiguous()     # k x n
            vs = [t.reshape(len(rows), *s) for t, s in zip(torch.split(rows, self._numels, 1), self._shapes)]
            hv = torch.cat([h.reshape(len(rows), -1) for h in self._local_hvp_sum(vs, batched=True)], 1)
            if self.world.active:
                all_reduce_sum(hv)
            self.hvp_count += len(rows)
            out[:, j:j + bs] = (hv / self.num_samples).T.to(out_dtype)
        return out

    @property
    def preferred_block(self) -> int:
        """Vectors per ``matmat`` call that make an HVP cheaper than ``matvec`` does: ``matmat_block`` where
        a gradient graph is rebuilt at every HVP (a block shares one build; also while a multi-batch plan is
        not made yet) or blocks are vmapped, else 1 (estimators with a stopping rule then check it after
        every vector). Under torchrun always ``matmat_block``: every rank must make the same collective
        calls, and the ranks' graph plans may differ."""
        if self.world.active:
            return self.matmat_block
        if self.hvp_method != "double-backward":
            return 1
        g = self._graphs
        rebuilding = len(self.batches) > 1 and (bool(g.rebuilt) or len(g.sizes) < len(self.batches))
        return self.matmat_block if self.matmat_vmap or rebuilding else 1

    def loss_and_grad(self) -> tuple[float, torch.Tensor]:
        """Mean loss over the samples and its gradient (flat). One forward + backward per batch (and one
        all-reduce of [gradient, loss] under torchrun)."""
        ps = [p for _, p in self.params]
        total = [torch.zeros_like(p) for p in ps] + [torch.zeros(1, dtype=self.dtype, device=self.device)]
        for x, y in self.batches:
            with self._mode(), self._flags():
                loss = self._batch_loss(x, y)
                gs = torch.autograd.grad(loss, ps, allow_unused=True)
            total[-1] += loss.detach()
            for t, g in zip(total, gs):
                if g is not None:
                    t.add_(g)
        flat = torch.cat([t.reshape(-1) for t in total])
        if self.world.active:
            all_reduce_sum(flat)
        return float(flat[-1]) / self.num_samples, flat[:-1] / self.num_samples

    def release_graph(self) -> None:
        """Free the cached gradient graphs (rebuilt on the next matvec)."""
        self._graphs.clear()

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 in and out) whose matvec is one HVP."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
            return self.matvec(v).detach().cpu().numpy().astype(np.float64)

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, dtype=np.float64)

    def describe(self) -> dict:
        """Every setting that defines this operator (JSON-ready)."""
        pf = self._param_filter
        return {"loss": self.loss, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
                "norm": self.norm, "restarts": self.restarts,
                "attack": self.attack.to_dict() if self.attack else None,
                "bn": self.bn, "num_params": self.num_params, "num_samples": self.num_samples,
                "num_batches": len(self.batches), "batch_sizes": sorted({len(x) for x, _ in self.batches}),
                "batch_size": self.batch_size, "seed": self.seed, "hvp_method": self.hvp_method,
                "hvp_method_requested": self.hvp_requested,
                "param_filter": None if pf is None else (getattr(pf, "__name__", "callable") if callable(pf)
                                                          else pf if isinstance(pf, str) else list(pf)),
                "param_names": self.param_names if pf is not None else None,
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device), "tf32": self.tf32,
                "cudnn_benchmark": self.cudnn_benchmark,
                "attack_seconds": self.attack_seconds, "world_size": self.world.size,
                "graph_cache": self._graphs.describe() if self.hvp_method == "double-backward" else None,
                "matmat_block": self.matmat_block, "matmat_vmap": self.matmat_vmap}

    def __repr__(self) -> str:
        return (f"HessianOperator(loss={self.loss!r}, num_params={self.num_params}, "
                f"num_samples={self.num_samples}, bn={self.bn!r}, hvp_count={self.hvp_count})")


def samples(op: HessianOperator) -> Batch:
    """All samples the operator is taken over (adversarial ones for loss='adversarial'), concatenated."""
    return torch.cat([x for x, _ in op.batches]), torch.cat([y for _, y in op.batches])


__all__ = ["HessianOperator", "LOSSES", "BN_MODES", "HVP_METHODS", "HVP_CHOICES", "AUTO_HVP", "resolve_hvp_method",
           "samples"]
