"""One attack specification (``AttackSpec``) shared by training, evaluation, the Hessian and the surfaces.

A spec holds every setting that decides which adversarial examples an attack makes: eps, norm, PGD steps,
step size (``None``: the one default rule, ``attacks.default_step_size`` = 2.5 * eps / steps), random
start, restarts, the attack batch size (batch b of a sample set is seeded by its position, so the batch
size changes the examples) and the BatchNorm mode during the attack (``eval``: running statistics;
``batch``: each attack batch's own statistics, running statistics untouched). Every result records it
(``to_dict()``), and two callers with equal specs and seeds make identical examples.

``resolve_attack`` is the one rule for analysing a checkpoint: each given value wins, else the checkpoint's
training attack, else the defaults; a checkpoint without an eps (a ``standard`` run, a foreign state_dict)
makes ``MissingEpsError`` unless eps is given.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .attacks import NORMS, adversarial_examples, check_eps, default_step_size
from .constraints import Interval, NoneOr, OneOf, validate
from .errors import ConfigError

ATTACK_BN = ("eval", "batch")
DEFAULT_STEPS = 10
DEFAULT_BATCH_SIZE = 256

#: the range of each AttackSpec field (``constraints``); the console scripts' attack flags take their types
#: from it. eps's upper bound depends on the norm (Linf: at most 1), checked after it (``attacks.check_eps``).
CONSTRAINTS = {
    "norm": OneOf(NORMS),
    "eps": Interval(float, 0.0),
    "steps": Interval(int, 1),          # 0 steps made a "PGD" accuracy of the random start alone
    "step_size": NoneOr(Interval(float, 0.0, lo_open=True)),
    "restarts": Interval(int, 1),
    "batch_size": Interval(int, 1),
    "bn": OneOf(ATTACK_BN),
}
#: the flags of the fields whose flag is not their name (``--steps`` is ``steps``'s)
FLAGS = {"norm": "--attack-norm", "batch_size": "--attack-batch-size", "bn": "--attack-bn"}


class MissingEpsError(ConfigError):
    """An attack is needed but neither the user nor the checkpoint gives an eps."""


@dataclass(frozen=True)
class AttackSpec:
    """PGD settings; validated on construction (``ConfigError``). ``alpha`` is the step size in force."""
    eps: float
    norm: str = "linf"
    steps: int = DEFAULT_STEPS
    step_size: float | None = None      # None: 2.5 * eps / steps (attacks.default_step_size)
    random_start: bool = True
    restarts: int = 1
    batch_size: int = DEFAULT_BATCH_SIZE
    bn: str = "eval"

    def __post_init__(self) -> None:
        if self.eps is None:
            raise MissingEpsError("the attack needs an eps")
        validate(dataclasses.asdict(self), CONSTRAINTS, FLAGS)
        check_eps(self.eps, self.norm)   # the norm's own bound (Linf: eps <= 1)
        for name in ("eps", "step_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("steps", "restarts", "batch_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "random_start", bool(self.random_start))

    @property
    def alpha(self) -> float:
        """The step size in force: ``step_size``, or the default rule 2.5 * eps / steps."""
        return default_step_size(self.eps, self.steps, self.step_size)

    @property
    def passes_per_sample(self) -> int:
        """Forward+backward passes per sample of ``examples``: restarts x steps, plus one forward per restart
        to keep each sample's worst case (counted as a pass: the estimate errs long)."""
        return self.restarts * (self.steps + 1) if self.active else 0

    @property
    def active(self) -> bool:
        """False when the attack leaves inputs unchanged (eps 0 or no steps)."""
        return self.eps > 0 and self.steps > 0

    def replace(self, **changes: Any) -> "AttackSpec":
        """A copy with ``changes`` (validated). Changing eps or steps keeps an explicit step size; pass
        ``step_size=None`` to return to the default rule."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready: every field, ``step_size`` as the number in force and ``step_size_default`` saying
        whether it came from the rule (``from_dict`` restores the spec exactly)."""
        d = dataclasses.asdict(self)
        d["step_size"] = self.alpha
        d["step_size_default"] = self.step_size is None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AttackSpec":
        """The spec ``to_dict`` wrote (unknown keys ignored; missing ones take the defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if d.get("step_size_default"):
            kw["step_size"] = None
        return cls(**kw)

    def examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
                 start: int = 0, callback: Any = None) -> torch.Tensor:
        """Adversarial examples of the whole set ``(x, y)`` under this spec (``attacks.adversarial_examples``:
        batches of ``batch_size`` seeded by (seed, start + position)). Cost: restarts * steps forward+backward
        passes per sample."""
        return adversarial_examples(model, x, y, self.eps, self.step_size, self.steps, self.norm, self.restarts,
                                    self.batch_size, seed, start, random_init=self.random_start, bn=self.bn,
                                    callback=callback)


def config_attack(config: Mapping[str, Any] | None) -> dict:
    """The training attack a checkpoint config records, as AttackSpec fields ({} when it records none).

    New configs hold ``attack`` (a spec dict, or null for a standard run without eps). Older ones hold
    eps / steps / step_size (/ norm) at the top; a ``standard`` run recorded the dataset's default eps there
    although it trained on no attack, so it counts as no eps.
    """
    cfg = dict(config or {})
    if "attack" in cfg:
        att = cfg["attack"]
        if not att:
            return {}
        out = {k: v for k, v in dict(att).items() if k != "step_size_default"}
        if att.get("step_size_default"):
            out["step_size"] = None
        return out
    if cfg.get("method") == "standard" or cfg.get("eps") is None:
        return {}
    return {k: cfg[k] for k in ("eps", "steps", "step_size", "norm") if cfg.get(k) is not None}


def resolve_attack(config: Mapping[str, Any] | None = None, *, eps: float | None = None,
                   steps: int | None = None, step_size: float | None = None, norm: str | None = None,
                   random_start: bool | None = None, restarts: int | None = None, batch_size: int | None = None,
                   bn: str | None = None) -> AttackSpec:
    """The attack for analysing a checkpoint: each given value wins, else the config's training attack
    (``config_attack``), else the defaults. The config's step size is taken only when neither eps nor steps
    was given (it was chosen for those); otherwise the rule 2.5 * eps / steps applies. Batch size and
    BatchNorm mode are analysis settings: not taken from training (which attacks whole training batches).

    Raises ``MissingEpsError`` (one line: pass --eps) when no eps is given and the config records none.
    """
    cfg = dict(config or {})
    train = config_attack(cfg)
    same = eps is None and steps is None
    if eps is None:
        eps = train.get("eps")
    if eps is None:
        method = cfg.get("method")
        why = f"it was trained with method {method!r}" if method else "it records no training attack"
        raise MissingEpsError(f"the checkpoint has no eps ({why}); pass --eps")
    given = {"norm": norm, "random_start": random_start, "restarts": restarts}
    kw: dict[str, Any] = {k: (v if v is not None else train[k]) for k, v in given.items()
                          if v is not None or train.get(k) is not None}
    kw["steps"] = steps if steps is not None else int(train.get("steps") or DEFAULT_STEPS)
    kw["step_size"] = step_size if step_size is not None else (train.get("step_size") if same else None)
    if batch_size is not None:
        kw["batch_size"] = batch_size
    if bn is not None:
        kw["bn"] = bn
    return AttackSpec(eps=eps, **kw)


# --- what an attack costs: passes per sample (above) x the seconds of one pass, timed here -----------------

#: a forward pass alone, in sample-passes (a forward+backward pass is 1; as landscape.study.estimate counts)
FORWARD_PASSES = 1 / 3
#: a Hessian-vector product, in sample-passes (benchmarks/results: 1.7-2.8 gradients on a CPU)
HVP_PASSES = 2.5
#: AutoAttack's standard ensemble on a sample that survives every member: APGD-CE 100 steps, APGD-T 9 x 100,
#: FAB-T 9 x 100, Square 5,000 queries (forwards)
AUTOATTACK_PASSES = 2 * (100 + 9 * 100 + 9 * 100) + 5000 * FORWARD_PASSES


def sample_pass_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE,
                        weights: bool = False, autocast: Any = None) -> float:
    """Seconds of one forward+backward pass of one sample of ``model``: the faster of two passes (the first
    pays for warm-up) on the first ``batch_size`` samples of ``x``, divided by their number. The gradient is
    taken w.r.t. the inputs (an attack's pass), with ``weights`` w.r.t. the parameters too (a training
    step's); in eval mode and through ``torch.autograd.grad``, so that nothing of the model changes (no
    BatchNorm statistics, no ``.grad``, no random draws). ``autocast``: a function making the context
    manager to run each pass under (a training run's mixed precision). Under torchrun every process gets the mean over processes
    (one all-reduce), so that all decide alike on what it estimates. Cost: two forward+backward passes."""
    import contextlib
    import time
    import torch.nn.functional as F
    from .attacks import eval_mode
    from .distributed import all_reduce_sum, world
    b = max(1, min(int(batch_size), len(x)))
    xb, yb = x[:b].detach().clone(), y[:b]
    params = [p for p in model.parameters() if p.requires_grad] if weights else []
    best = math.inf
    with eval_mode(model):
        for _ in range(2):
            if xb.is_cuda:
                torch.cuda.synchronize(xb.device)
            t0 = time.perf_counter()
            inp = xb.requires_grad_(True)
            with autocast() if autocast is not None else contextlib.nullcontext():
                loss = F.cross_entropy(model(inp).float(), yb)
            wrt = [inp, *params]
            if loss.requires_grad:   # a model whose output does not depend on its input: a forward alone
                torch.autograd.grad(loss, wrt, allow_unused=True)
            if xb.is_cuda:
                torch.cuda.synchronize(xb.device)
            best = min(best, time.perf_counter() - t0)
            xb = xb.detach()
    per = best / b
    w = world()
    if w.active:
        t = torch.tensor([per], dtype=torch.float64, device=x.device)
        per = float(all_reduce_sum(t)[0]) / w.size
    return per


__all__ = ["AttackSpec", "ATTACK_BN", "CONSTRAINTS", "FLAGS", "AUTOATTACK_PASSES", "FORWARD_PASSES", "HVP_PASSES", "sample_pass_seconds", "DEFAULT_STEPS", "DEFAULT_BATCH_SIZE", "MissingEpsError",
           "NORMS", "config_attack", "resolve_attack"]
