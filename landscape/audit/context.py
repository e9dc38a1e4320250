"""The audit's one context: every attack run once on the same n samples, kept per sample.

``gather`` runs them (randomness, input gradients, PGD on the cross-entropy and on a margin loss with their
loss traces, FGSM, PGD with more effort, the margin PGD along eps to an unbounded budget, random noise,
AutoAttack or Square alone, transfer from a surrogate); a ``Context`` holds what each left broken, and every
check (``checks.CHECKS``) reads its evidence from it. The robust accuracy the audit reports is the worst case
per sample over every attack (a sample counts as robust only if no attack, at no iterate, made it
misclassified)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..attack_spec import AttackSpec
from ..analysis.settings import CONSTRAINTS as ANALYSIS
from ..attacks import AttackTrace, batch_generator, eval_mode, pgd_trace, random_start
from ..autoattack import STANDARD, WHITE_BOX, run_autoattack
from ..constraints import SEED, Interval, check_value, validate
from ..errors import ConfigError
from ..finite import NonFiniteOutputError
from ..inference import input_gradients, predict
from ..progress import Callback, report
from ..seeding import generator
from .thresholds import Thresholds, deterministic

#: the stream of the random-noise draws under the audit's seed (``seeding.derive(seed, NOISE_STREAM)``)
NOISE_STREAM = 424_242
#: a restart r > 0 of the more-effort PGD attacks batch i with the seed ``seed + RESTART_STRIDE * r``
RESTART_STRIDE = 7919
#: the parts of a run, in order, as the progress bar counts them
PARTS = ("clean", "gradients", "pgd", "pgd_margin", "fgsm", "more_effort", "eps_sweep", "random_noise",
         "autoattack", "transfer")


#: the ranges of the audit's own settings (``constraints``); the keywords that are also options of
#: landscape-eval share its words (--seed, --batch-size, --square-queries), the others are named as keywords
CONSTRAINTS = {"seed": SEED, "effort_restarts": Interval(int, 1), "noise_draws": Interval(int, 1),
               "eot": Interval(int, 1), "batch_size": Interval(int, 1), "square_queries": ANALYSIS["square_queries"]}
FLAGS = {"effort_restarts": "effort_restarts", "noise_draws": "noise_draws", "eot": "eot"}
SWEEP_FACTOR = Interval(float, 0.0, lo_open=True)   # each eps of the sweep is the audited eps times a factor


@dataclass(frozen=True)
class AuditSettings:
    """How the audit runs its attacks beyond the audited PGD (``audit``'s keywords, module doc of ``run``)."""
    seed: int = 0
    autoattack: bool = True
    autoattack_state: str | None = None
    effort_restarts: int = 5
    sweep: tuple[float, ...] = (2.0, 4.0)
    noise_draws: int = 20
    eot: int = 10
    batch_size: int = 256
    square_queries: int = 5000

    def __post_init__(self) -> None:
        validate(vars(self), CONSTRAINTS, FLAGS)
        for factor in self.sweep:
            check_value("sweep", factor, SWEEP_FACTOR)

    def to_dict(self, surrogate: bool) -> dict:
        """The settings a stored audit records (beside samples, seed, attack and thresholds)."""
        return {"effort_restarts": self.effort_restarts, "sweep": list(self.sweep), "noise_draws": self.noise_draws,
                "eot": self.eot, "autoattack": bool(self.autoattack), "surrogate": surrogate,
                "batch_size": self.batch_size, "square_queries": None if self.autoattack else self.square_queries}


@dataclass
class Context:
    """Per-sample outcomes (``(n,)`` bool tensors: the attack made the sample misclassified at some iterate)
    of every attack the audit ran on the same samples, and what the attacks ran with. ``autoattack`` (broken
    by the standard ensemble), ``autoattack_white`` (by one of its white-box members), ``square`` (by Square,
    AutoAttack's last member or alone on the white-box survivors) and ``transferred`` (by examples made on
    the surrogate) are None when that attack did not run."""
    attack: AttackSpec
    y: torch.Tensor
    pred: torch.Tensor                # clean predictions
    randomness: dict                  # ``randomness``'s test on the first batch
    eot: int                          # draws each gradient attack averaged (1: the model is deterministic)
    zero_gradient: torch.Tensor       # the cross-entropy's input gradient is all zero or not finite
    saturated: torch.Tensor           # the float32 softmax of the predicted class is exactly 1
    pgd: AttackTrace                  # PGD on the cross-entropy, with its loss trace
    pgd_margin: torch.Tensor
    fgsm: torch.Tensor
    more_effort: torch.Tensor         # PGD-CE at ``effort_steps`` steps, any of ``effort_restarts`` restarts
    effort_steps: int
    effort_restarts: int
    sweep_eps: list[float]            # the margin PGD's larger budgets, the last one unbounded
    swept: list[torch.Tensor]         # broken at each of ``sweep_eps``
    noise: torch.Tensor               # some uniform random point of the eps-ball is misclassified
    autoattack: torch.Tensor | None = None
    autoattack_white: torch.Tensor | None = None
    autoattack_accuracy: float | None = None
    autoattack_after: dict | None = None
    square: torch.Tensor | None = None
    transferred: torch.Tensor | None = None
    note: dict | None = None          # AutoAttack's members and resumed chunks, or why Square did not run

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def correct(self) -> torch.Tensor:
        return self.pred == self.y

    @property
    def pgd_robust(self) -> torch.Tensor:
        """Correct and never broken by PGD-CE."""
        return self.correct & ~self.pgd.ever_adversarial

    @property
    def white_robust(self) -> torch.Tensor:
        """Correct and never broken by a white-box attack (PGD-CE, margin PGD, FGSM, more effort, AutoAttack's
        white-box members)."""
        robust = self.pgd_robust & ~self.pgd_margin & ~self.fgsm & ~self.more_effort
        return robust if self.autoattack_white is None else robust & ~self.autoattack_white

    def accuracy(self, broken: torch.Tensor) -> float:
        """The share of samples correct and not ``broken``."""
        return float((self.correct & ~broken).float().mean())

    def accuracies(self) -> dict:
        """Each attack's accuracy on the same samples, ``worst_case`` over all of them, and ``n``."""
        acc = self.accuracy
        out: dict[str, Any] = {
            "clean": float(self.correct.float().mean()), "pgd": acc(self.pgd.ever_adversarial),
            "pgd_last_iterate": acc(self.pgd.final_adversarial), "pgd_margin": acc(self.pgd_margin),
            "fgsm": acc(self.fgsm), "more_effort": acc(self.more_effort), "random_noise": acc(self.noise)}
        worst = self.pgd.ever_adversarial | self.pgd_margin | self.fgsm | self.more_effort | self.noise
        if self.autoattack is not None:
            out["autoattack"] = self.autoattack_accuracy
            out["autoattack_after"] = self.autoattack_after
            worst = worst | self.autoattack
        if self.square is not None:
            worst = worst | self.square
        if self.transferred is not None:
            out["transfer"] = acc(self.transferred)
            worst = worst | self.transferred
        for e, b in zip(self.sweep_eps, self.swept):
            out[f"margin_pgd_eps{e:g}"] = acc(b)
        out["worst_case"] = acc(worst)
        out["n"] = self.n
        return out


# --- the attacks ----------------------------------------------------------------------------------------------

def randomness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int = 5) -> dict:
    """AutoAttack's randomized-model test on (x, y): ``passes`` forward passes in eval mode; the largest change
    of the L2-normalized logits and whether the number correct differs. Cost: ``passes`` forwards."""
    with eval_mode(model), torch.no_grad():
        outs = [model(x) for _ in range(passes)]
    norm = [o / o.norm(dim=1, keepdim=True).clamp_min(1e-12) for o in outs]
    change = max(float((n - norm[0]).abs().max()) for n in norm)
    correct = {int((o.argmax(1) == y).sum()) for o in outs}
    return {"logit_change": change, "predictions_differ": len(correct) > 1, "passes": passes, "samples": len(y)}


def unbounded_eps(spec: AttackSpec, x: torch.Tensor) -> float:
    """A budget that reaches every input of the [0, 1] box: 1 in Linf, the box's diagonal sqrt(d) in L2."""
    return 1.0 if spec.norm == "linf" else math.sqrt(x[0].numel())


def _batched_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, seed: int, loss: str,
                   eot: int, restart: int = 0) -> AttackTrace:
    """``pgd_trace`` over the whole set in the spec's batches, each seeded as ``AttackSpec.examples`` seeds it
    (restart r > 0 offsets the seed, so its random starts differ)."""
    parts = []
    for i in range(0, len(x), spec.batch_size):
        g = batch_generator(seed + RESTART_STRIDE * restart, i)
        parts.append(pgd_trace(model, x[i:i + spec.batch_size], y[i:i + spec.batch_size], spec.eps,
                               spec.step_size, spec.steps, spec.norm, loss, spec.random_start, g, eot, spec.bn))
    return AttackTrace(torch.cat([p.x_adv for p in parts]), torch.cat([p.loss for p in parts], 1),
                       torch.cat([p.ever_adversarial for p in parts]),
                       torch.cat([p.final_adversarial for p in parts]))


def _noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, seed: int, draws: int,
           batch_size: int) -> torch.Tensor:
    """(n,) bool: some of ``draws`` uniform random points of the eps-ball is misclassified. Cost: ``draws``
    forwards."""
    broken = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    g = generator(seed, NOISE_STREAM)
    for _ in range(draws):
        xn = x + random_start(x, spec.eps, spec.norm, g)
        broken |= predict(model, xn, batch_size, at="at random points of the eps-ball") != y
    return broken


class _Parts:
    """Forward/backward passes and seconds per part of the run (the result's ``cost``), and the parts done,
    reported to ``callback`` (``landscape.progress``)."""

    def __init__(self, callback: Callback) -> None:
        self.cost: dict[str, dict] = {}
        self.callback, self.done = callback, 0

    def add(self, part: str, passes: float, seconds: float) -> None:
        p = self.cost.setdefault(part, {"passes_per_sample": 0.0, "seconds": 0.0})
        p["passes_per_sample"] += passes
        p["seconds"] += seconds

    def run(self, part: str, passes: float, fn: Callable[[], Any]) -> Any:
        """``fn()``, its seconds and ``passes`` counted under ``part``."""
        t1 = time.perf_counter()
        out = fn()
        self.add(part, passes, time.perf_counter() - t1)
        self.step(part)
        return out

    def step(self, part: str) -> None:
        self.done += 1
        report(self.callback, self.done, len(PARTS), "audit", "part")


def gather(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, s: AuditSettings,
           t: Thresholds, surrogate: nn.Module | None = None, callback: Callback = None) -> tuple[Context, dict]:
    """Every attack of the audit run once on (x, y): the context, and the cost of each part (passes per sample
    and seconds). The gradient attacks average ``s.eot`` draws when the randomness test fails under ``t``."""
    parts = _Parts(callback)
    n, bs, seed = len(y), s.batch_size, s.seed
    # NaN or infinite outputs are refused here, before any check could blame masking, randomness or a
    # collapse on them (``finite``); every attack below refuses them at its iterates too.
    pred = parts.run("clean", 1, lambda: predict(model, x, bs))
    correct = pred == y
    rnd = randomness(model, x[:bs], y[:bs])
    parts.add("randomness", 5 * min(bs, n) / n, 0.0)
    k = 1 if deterministic(rnd, t) else s.eot
    grads = parts.run("gradients", 1, lambda: input_gradients(model, x, y, bs))
    ce = parts.run("pgd", k * attack.steps + 1, lambda: _batched_trace(model, x, y, attack, seed, "ce", k))
    mg = parts.run("pgd_margin", k * attack.steps + 1,
                   lambda: _batched_trace(model, x, y, attack, seed, "margin", k).ever_adversarial)
    fg_spec = attack.replace(steps=1, step_size=attack.eps, random_start=False)
    fg = parts.run("fgsm", k + 1, lambda: _batched_trace(model, x, y, fg_spec, seed, "ce", k).ever_adversarial)
    effort_spec = attack.replace(steps=2 * attack.steps)

    def effort() -> torch.Tensor:
        broken = torch.zeros_like(correct)
        for r in range(s.effort_restarts):
            broken |= _batched_trace(model, x, y, effort_spec, seed, "ce", k, restart=r + 1).ever_adversarial
        return broken
    more = parts.run("more_effort", s.effort_restarts * (k * effort_spec.steps + 1), effort)
    big = unbounded_eps(attack, x)
    eps_list = [attack.eps * f for f in s.sweep if attack.eps * f < big] + [big]

    def sweep_run() -> list[torch.Tensor]:
        return [_batched_trace(model, x, y, attack.replace(eps=e), seed, "margin", k).ever_adversarial
                for e in eps_list]
    swept = parts.run("eps_sweep", len(eps_list) * (k * attack.steps + 1), sweep_run)
    noise = parts.run("random_noise", s.noise_draws, lambda: _noise(model, x, y, attack, seed, s.noise_draws, bs))
    ctx = Context(attack=attack, y=y, pred=pred, randomness=rnd, eot=k, zero_gradient=grads["zero"],
                  saturated=grads["saturated"], pgd=ce, pgd_margin=mg, fgsm=fg, more_effort=more,
                  effort_steps=effort_spec.steps, effort_restarts=s.effort_restarts, sweep_eps=eps_list, swept=swept,
                  noise=noise)
    t1 = time.perf_counter()
    if s.autoattack:
        aa = run_autoattack(model, x, y, attack.eps, attack.norm, seed, bs, state_dir=s.autoattack_state,
                            callback=callback)
        ctx.autoattack = ~aa.robust.to(y.device)
        ctx.autoattack_white = torch.tensor([b in WHITE_BOX for b in aa.broken_by], device=y.device)
        ctx.square = torch.tensor([b == "square" for b in aa.broken_by], device=y.device)
        ctx.autoattack_accuracy, ctx.autoattack_after = aa.accuracy, aa.accuracy_after()
        parts.add("autoattack", float("nan"), time.perf_counter() - t1)
        ctx.note = {"members": list(STANDARD), "resumed_chunks": aa.resumed_chunks}
    else:
        try:
            idx = ctx.white_robust.nonzero().flatten()
            square = torch.zeros_like(correct)
            if len(idx):
                sq = run_autoattack(model, x[idx], y[idx], attack.eps, attack.norm, seed, bs, attacks=("square",),
                                    square_queries=s.square_queries)
                square[idx] = torch.tensor([b == "square" for b in sq.broken_by], device=y.device)
            ctx.square = square
            parts.add("square", float("nan"), time.perf_counter() - t1)
        except ConfigError as e:
            ctx.note = {"square_not_run": str(e)}
    parts.step("autoattack" if s.autoattack else "square")
    if surrogate is not None:
        def transfer() -> torch.Tensor:
            try:
                x_t = _batched_trace(surrogate, x, y, attack, seed, "ce", 1).x_adv
            except NonFiniteOutputError as e:   # the surrogate's outputs, not the audited model's
                raise NonFiniteOutputError(str(e).replace("the model's", "the surrogate model's", 1)) from None
            return predict(model, x_t, bs, at="at the surrogate's examples") != y
        ctx.transferred = parts.run("transfer", attack.steps + 1, transfer)
    else:
        parts.step("transfer")
    return ctx, parts.cost
