"""Can a robust accuracy be believed? ``audit`` runs the checks the field uses to catch attacks that fail
(gradient masking and its cousins; sources in the shared EVALUATION_AUDIT.md: Athalye et al. 2018, Carlini et al.
2019, Pintor et al. 2022, AutoAttack's own checks) on one sample set and returns each check's verdict, its
evidence and what to do.

Every check is a fraction of samples compared with a stated threshold (``Thresholds``), judged on the lower
end of its Wilson score interval (z = 2), so that a handful of samples cannot raise a flag by chance and a
large share of few samples still can. Each attack's per-sample outcome is kept, so that a check asks "of the
samples attack A left standing, how many did B break?" on the same points. The evidence is stored with the
result and ``judge`` re-applies thresholds to it without rerunning anything.

The robust accuracy the audit reports is the worst case per sample over every attack it ran (a sample counts
as robust only if no attack, at no iterate, made it misclassified).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ._version import __version__
from .attack_spec import AttackSpec
from .attacks import AttackTrace, batch_generator, eval_mode, input_gradient, pgd_trace, random_start
from .errors import ConfigError
from .evaluate import predict
from .finite import NonFiniteOutputError
from .inputs import check_batch


@dataclass(frozen=True)
class Thresholds:
    """The flags' thresholds: each check fails when the lower Wilson bound (``z``) of its fraction exceeds its
    threshold. Calibrated on robust digits models (AT, TRADES, SAT-eps at eps 0.1-0.3: ``tests/test_audit.py``)
    and on the 45 Fashion-MNIST models of results/sat-study (docs/reproduction.md)."""
    z: float = 2.0
    attack_gap: float = 0.5          # share of PGD-robust samples that a margin PGD or AutoAttack breaks
    more_effort: float = 0.15        # share of PGD-robust samples that 2x steps and restarts break
    unbounded_accuracy: float = 0.05  # accuracy left at an unbounded budget (samples with a witness only)
    sweep_rise: float = 0.02         # accuracy rising with eps by more than this (beyond the sampling error)
    incomplete: float = 0.5          # share of surviving samples whose loss still rises at the end (PGD-20 with
    #                                  a step of eps/4 left 36% of an honest AT model's survivors rising: a short
    #                                  PGD's trace creeps; what more optimization would break, more_effort measures)
    frozen: float = 0.05             # share of attacked samples whose loss never moves
    zero_gradient: float = 0.01      # share of samples with an all-zero or non-finite input gradient
    saturated: float = 0.05          # share of samples with a softmax probability of exactly 1 (float32)
    randomized: float = 1e-4         # largest change of the L2-normalized logits between passes (AutoAttack's)
    black_box: float = 0.1           # share of white-box-robust samples that Square or random noise breaks
    transfer: float = 0.1            # share of white-box-robust samples that transferred examples break
    fgsm: float = 0.05               # share of PGD-robust samples that FGSM breaks
    min_effect: float = 0.02         # and the samples another attack breaks must be at least this share of all
    #                                  samples: a gap that moves the robust accuracy by less is not worth a flag
    #                                  (a collapsed AT model of the study: PGD-20 1.2%, AutoAttack 0%, 6 of 6)


def wilson_lower(k: int, m: int, z: float) -> float:
    """Lower end of the Wilson score interval of k successes in m trials (0 when m is 0)."""
    if m <= 0:
        return 0.0
    p = k / m
    centre = p + z * z / (2 * m)
    half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    return max(0.0, (centre - half) / (1 + z * z / m))


@dataclass
class Check:
    """One check: ``passed`` (None: not run, with the reason in ``evidence``), its numbers, and advice."""
    name: str
    passed: bool | None
    evidence: dict
    advice: str
    question: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AuditResult:
    """Per-check verdicts on ``n`` samples under ``attack``; ``accuracies`` maps each attack to its accuracy
    (all on the same n samples); ``cost`` the forward+backward passes and seconds of each part."""
    n: int
    attack: AttackSpec
    seed: int
    checks: list[Check]
    accuracies: dict
    cost: dict
    seconds: float
    thresholds: Thresholds = field(default_factory=Thresholds)
    settings: dict = field(default_factory=dict)
    kind: ClassVar[str] = "audit"

    @property
    def verdict(self) -> str:
        """``suspect`` when any check failed, else ``ok``."""
        return "suspect" if any(c.passed is False for c in self.checks) else "ok"

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if c.passed is False]

    @property
    def robust_acc(self) -> float:
        return self.accuracies["worst_case"]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "landscape_version": __version__,
                "settings": {"samples": self.n, "seed": self.seed, "attack": self.attack.to_dict(),
                             "thresholds": asdict(self.thresholds), **self.settings},
                "seconds": self.seconds, "n": self.n, "clean_acc": self.accuracies["clean"],
                "pgd_acc": self.accuracies["pgd"], "autoattack_acc": self.accuracies.get("autoattack"),
                "robust_acc": self.robust_acc, "accuracies": self.accuracies, "cost": self.cost,
                "audit": {"verdict": self.verdict, "checks": [c.to_dict() for c in self.checks]}}

    def table(self) -> str:
        """The terminal's short table: one line per check."""
        mark = {True: "ok", False: "FLAG", None: "--"}
        lines = [f"audit: {self.verdict} ({len(self.failed)} of {sum(c.passed is not None for c in self.checks)} "
                 f"checks flagged; n={self.n}, worst-case robust accuracy {self.robust_acc:.4f})"]
        for c in self.checks:
            lines.append(f"  {mark[c.passed]:4s} {c.name:18s} {c.evidence.get('summary', '')}")
            if c.passed is False:
                lines.append(f"       -> {c.advice}")
        return "\n".join(lines)


# --- the checks: each a pure function of the evidence ------------------------------------------------------

# The checks that count samples another attack broke: a flag needs both a share of the survivors (Wilson
# bound above the threshold) and an effect on the accuracy (count / n at least ``min_effect``). Each check
# with the Thresholds field its share is judged against: the one list of them (judges, evidence's n).
EFFECT_LIMITS = {"attack_agreement": "attack_gap", "more_effort": "more_effort", "black_box": "black_box",
                 "transfer": "transfer", "fgsm_vs_pgd": "fgsm"}
EFFECT_CHECKS = tuple(EFFECT_LIMITS)


def _judge_share(ev: dict, t: Thresholds, limit_name: str, effect: bool = False) -> bool | None:
    if "count" not in ev:
        return None
    if effect and ev.get("n") and ev["count"] / ev["n"] < t.min_effect:
        return True
    return wilson_lower(ev["count"], ev["of"], t.z) <= getattr(t, limit_name)


JUDGES: dict[str, Callable[[dict, Thresholds], bool | None]] = {
    **{name: (lambda ev, t, limit=limit: _judge_share(ev, t, limit, effect=True))
       for name, limit in EFFECT_LIMITS.items()},
    "loss_traces": lambda ev, t: None if "incomplete" not in ev else (
        wilson_lower(ev["incomplete"], ev["survivors"], t.z) <= t.incomplete
        and wilson_lower(ev["frozen"], ev["attacked"], t.z) <= t.frozen),
    "gradients": lambda ev, t: None if "zero_or_nonfinite" not in ev else (
        wilson_lower(ev["zero_or_nonfinite"], ev["of"], t.z) <= t.zero_gradient),
    "saturated_softmax": lambda ev, t: _judge_share(ev, t, "saturated"),
    "randomized": lambda ev, t: None if "logit_change" not in ev else (
        ev["logit_change"] <= t.randomized and not ev["predictions_differ"]),
    "eps_sweep": lambda ev, t: None if "accuracy" not in ev else (
        wilson_lower(ev["unbounded_robust"] - ev.get("unbounded_without_witness", 0), ev["n"], t.z)
        <= t.unbounded_accuracy
        and all(_rise_ok(a, b, ev["n"], t) for a, b in zip(ev["accuracy"], ev["accuracy"][1:]))),
}


def _rise_ok(a: float, b: float, n: int, t: Thresholds) -> bool:
    """Accuracy b at a larger eps than a: it may not rise by more than ``sweep_rise`` beyond z standard errors."""
    se = math.sqrt(max(a * (1 - a), b * (1 - b), 1 / n) / n)
    return b - a <= t.sweep_rise + t.z * se


def judge(checks: list[Check], thresholds: Thresholds) -> list[Check]:
    """The checks with ``passed`` recomputed from their stored evidence under ``thresholds`` (no attack runs)."""
    return [replace(c, passed=JUDGES[c.name](c.evidence, thresholds)) if c.name in JUDGES else c for c in checks]


def judge_dict(audit: dict, thresholds: Thresholds | None = None) -> dict:
    """``judge`` on a stored result (or its ``"audit"`` block): a new block with each check and the verdict
    redone. Given the whole result, its ``n`` fills in the evidence of results stored before checks kept it."""
    t = thresholds or Thresholds()
    n = audit.get("n") if "audit" in audit else None
    audit = audit["audit"] if "audit" in audit else audit
    checks = [Check(**c) for c in audit["checks"]]
    if n is not None:
        checks = [replace(c, evidence={"n": n, **c.evidence}) if c.name in EFFECT_CHECKS else c for c in checks]
    checks = judge(checks, t)
    return {"verdict": "suspect" if any(c.passed is False for c in checks) else "ok",
            "checks": [c.to_dict() for c in checks]}


ADVICE = {
    "attack_agreement": "report the lowest accuracy (AutoAttack's), not PGD's; a gap this large points to a loss "
                        "the cross-entropy gradient cannot climb (masking): attack with a margin loss and look "
                        "at the input-space landscape (landscape-surface --space input)",
    "more_effort": "the attack has not converged: report the accuracy at more steps and restarts, and raise both "
                   "until the accuracy stops falling",
    "loss_traces": "losses still rising at the last step need more steps (or a smaller step size); losses that "
                   "never move mean the gradient says nothing (masking): use a margin loss, EOT or a black-box "
                   "attack",
    "gradients": "zero or non-finite input gradients (shattered gradients, saturation, non-differentiable "
                 "layers): attack through a differentiable approximation (BPDA) and rely on black-box attacks",
    "saturated_softmax": "probabilities of exactly 1 zero the cross-entropy's gradient: attack the logits with a "
                         "margin (CW/DLR) loss; AutoAttack's APGD-T and FAB-T do",
    "randomized": "the model is randomized: report accuracy under EOT (gradients averaged over many draws) and "
                  "over several forward passes",
    "black_box": "a gradient-free attack found what gradient attacks missed: the gradients are masked; the "
                 "white-box accuracy is an overestimate",
    "transfer": "examples made on another model succeed where white-box attacks on this one failed: the "
                "gradients are masked",
    "fgsm_vs_pgd": "one step beats many: the iterative attack is failing (a step size too small or a loss "
                   "surface that traps it)",
    "eps_sweep": "accuracy that does not fall to zero at an unbounded budget, or rises with eps, means the attack "
                 "cannot reach points that exist: it is failing, not the model robust",
}

QUESTIONS = {
    "attack_agreement": "do PGD on the cross-entropy, PGD on a margin loss and AutoAttack agree?",
    "more_effort": "does twice the steps with restarts break more?",
    "loss_traces": "is the PGD loss still rising at the end, or never moving?",
    "gradients": "are input gradients zero or not finite?",
    "saturated_softmax": "are probabilities exactly 1 in float32?",
    "randomized": "do two forward passes differ?",
    "black_box": "does a black-box attack (Square, random noise) break what white-box attacks did not?",
    "transfer": "do examples from a surrogate model break what white-box attacks did not?",
    "fgsm_vs_pgd": "does FGSM break what PGD did not?",
    "eps_sweep": "does accuracy fall with eps, to (near) zero at an unbounded budget?",
}


def _check(name: str, ev: dict, t: Thresholds, n: int | None = None) -> Check:
    """The check ``name`` judged on ``ev``; ``n`` (all samples) goes into the evidence of EFFECT_CHECKS."""
    if name in EFFECT_CHECKS and n is not None:
        ev = {**ev, "n": n}
    c = Check(name, None, ev, ADVICE[name], QUESTIONS[name])
    return judge([c], t)[0]


def _not_run(name: str, why: str) -> Check:
    return Check(name, None, {"summary": f"not run: {why}", "not_run": why}, ADVICE[name], QUESTIONS[name])


# --- running the attacks ------------------------------------------------------------------------------------

class _Counter:
    """Forward/backward passes and seconds per part of the audit (``cost`` of the result)."""

    def __init__(self) -> None:
        self.parts: dict[str, dict] = {}

    def add(self, part: str, passes: float, seconds: float) -> None:
        p = self.parts.setdefault(part, {"passes_per_sample": 0.0, "seconds": 0.0})
        p["passes_per_sample"] += passes
        p["seconds"] += seconds


def _batched_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, seed: int, loss: str,
                   eot: int, restart: int = 0) -> AttackTrace:
    """``pgd_trace`` over the whole set in the spec's batches, each seeded as ``AttackSpec.examples`` seeds it
    (restart r > 0 offsets the seed, so its random starts differ)."""
    parts = []
    for i in range(0, len(x), spec.batch_size):
        g = batch_generator(seed + 7919 * restart, i)
        parts.append(pgd_trace(model, x[i:i + spec.batch_size], y[i:i + spec.batch_size], spec.eps,
                               spec.step_size, spec.steps, spec.norm, loss, spec.random_start, g, eot, spec.bn))
    return AttackTrace(torch.cat([p.x_adv for p in parts]), torch.cat([p.loss for p in parts], 1),
                       torch.cat([p.ever_adversarial for p in parts]),
                       torch.cat([p.final_adversarial for p in parts]))


def randomness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, passes: int = 5) -> dict:
    """AutoAttack's randomized-model test on (x, y): ``passes`` forward passes in eval mode; the largest change
    of the L2-normalized logits and whether the number correct differs. Cost: ``passes`` forwards."""
    with eval_mode(model), torch.no_grad():
        outs = [model(x) for _ in range(passes)]
    norm = [o / o.norm(dim=1, keepdim=True).clamp_min(1e-12) for o in outs]
    change = max(float((n - norm[0]).abs().max()) for n in norm)
    correct = {int((o.argmax(1) == y).sum()) for o in outs}
    return {"logit_change": change, "predictions_differ": len(correct) > 1, "passes": passes, "samples": len(y)}


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> dict:
    """Per sample: the cross-entropy's input gradient is all zero or not finite; the float32 softmax of the
    predicted class is exactly 1. Cost: one forward+backward pass."""
    zero, sat = [], []
    for i in range(0, len(x), batch_size):
        _, logits, dead = input_gradient(model, x[i:i + batch_size], y[i:i + batch_size], check_finite=True)
        zero.append(dead)
        sat.append(logits.float().softmax(1).amax(1) == 1.0)
    return {"zero": torch.cat(zero), "saturated": torch.cat(sat)}


def _noise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, seed: int, draws: int,
           batch_size: int) -> torch.Tensor:
    """(n,) bool: some of ``draws`` uniform random points of the eps-ball is misclassified. Cost: ``draws``
    forwards."""
    broken = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    g = torch.Generator().manual_seed(seed * 1_000_003 + 424_242)
    for _ in range(draws):
        xn = x + random_start(x, spec.eps, spec.norm, g)
        broken |= predict(model, xn, batch_size, at="at random points of the eps-ball") != y
    return broken


def unbounded_eps(spec: AttackSpec, x: torch.Tensor) -> float:
    """A budget that reaches every input of the [0, 1] box: 1 in Linf, the box's diagonal sqrt(d) in L2."""
    return 1.0 if spec.norm == "linf" else math.sqrt(x[0].numel())


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, *, seed: int = 0,
          autoattack: bool = True, autoattack_state: str | None = None, surrogate: nn.Module | None = None,
          effort_restarts: int = 5, sweep: tuple[float, ...] = (2.0, 4.0), noise_draws: int = 20, eot: int = 10,
          thresholds: Thresholds | None = None, batch_size: int = 256, square_queries: int = 5000,
          progress: bool = False) -> AuditResult:
    """Every check of the module doc on (x, y) under ``attack`` (the PGD being audited).

    Runs: 5 forwards (randomness; if randomized, every gradient attack below averages ``eot`` draws), one
    gradient pass, PGD-CE and PGD-margin with their loss traces (2 x steps), FGSM (1), PGD-CE at 2 x steps with
    ``effort_restarts`` restarts, the margin PGD at eps x ``sweep`` and at an unbounded budget, ``noise_draws``
    random points, AutoAttack (``autoattack``; needs the extra; ``autoattack_state`` makes it resumable),
    else Square alone (``square_queries``) on the white-box survivors, and PGD on ``surrogate`` transferred. ``cost`` in the
    result gives each part's passes per sample and seconds. A model whose outputs are NaN or infinite is
    refused first (``finite.NonFiniteOutputError``, one line counting the samples), not audited.
    """
    if not isinstance(attack, AttackSpec):
        raise ConfigError(f"audit needs an AttackSpec, got {type(attack).__name__}")
    if not attack.active:
        raise ConfigError("audit needs an attack that moves the inputs (eps > 0 and steps > 0)")
    for name, v in (("effort_restarts", effort_restarts), ("noise_draws", noise_draws), ("eot", eot)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"audit {name} must be a positive integer, got {v!r}")
    t = thresholds or Thresholds()
    check_batch(model, x, y, "audit")
    if surrogate is not None:
        check_batch(surrogate, x, y, "audit surrogate")
    from .progress import progress_bar
    stages = ["randomness", "gradients", "pgd", "margin", "fgsm", "effort", "sweep", "noise", "autoattack",
              "transfer"]
    bar = progress_bar(total=len(stages), desc="audit", unit="part", show=progress)
    cost, t0 = _Counter(), time.perf_counter()
    n, bs = len(y), batch_size

    def timed(part: str, passes: float, fn: Callable[[], Any]) -> Any:
        t1 = time.perf_counter()
        out = fn()
        cost.add(part, passes, time.perf_counter() - t1)
        bar.set_postfix(part=part)
        bar.update(1)
        return out

    # NaN or infinite outputs are refused here, before any check could blame masking, randomness or a
    # collapse on them (``finite``); every attack below refuses them at its iterates too.
    pred = timed("clean", 1, lambda: predict(model, x, bs))
    correct = pred == y
    rnd = randomness(model, x[:bs], y[:bs])
    cost.add("randomness", 5 * min(bs, n) / n, 0.0)
    k = eot if (rnd["logit_change"] > t.randomized or rnd["predictions_differ"]) else 1
    grads = timed("gradients", 1, lambda: input_gradients(model, x, y, bs))
    ce = timed("pgd", k * attack.steps + 1, lambda: _batched_trace(model, x, y, attack, seed, "ce", k))
    mg = timed("pgd_margin", k * attack.steps + 1, lambda: _batched_trace(model, x, y, attack, seed, "margin", k))
    fg_spec = attack.replace(steps=1, step_size=attack.eps, random_start=False)
    fg = timed("fgsm", k + 1, lambda: _batched_trace(model, x, y, fg_spec, seed, "ce", k))
    effort_spec = attack.replace(steps=2 * attack.steps)

    def effort() -> torch.Tensor:
        broken = torch.zeros_like(correct)
        for r in range(effort_restarts):
            broken |= _batched_trace(model, x, y, effort_spec, seed, "ce", k, restart=r + 1).ever_adversarial
        return broken
    more = timed("more_effort", effort_restarts * (k * effort_spec.steps + 1), effort)
    big = unbounded_eps(attack, x)
    eps_list = [attack.eps * f for f in sweep if attack.eps * f < big] + [big]

    def sweep_run() -> list[torch.Tensor]:
        return [_batched_trace(model, x, y, attack.replace(eps=e), seed, "margin", k).ever_adversarial
                for e in eps_list]
    swept = timed("eps_sweep", len(eps_list) * (k * attack.steps + 1), sweep_run)
    noise = timed("random_noise", noise_draws, lambda: _noise(model, x, y, attack, seed, noise_draws, bs))

    pgd_robust = correct & ~ce.ever_adversarial
    white_robust = pgd_robust & ~mg.ever_adversarial & ~fg.ever_adversarial & ~more
    aa_res, aa_white, square_broken, aa_note = None, None, None, None
    t1 = time.perf_counter()
    if autoattack:
        from .autoattack import STANDARD, WHITE_BOX, run_autoattack
        aa_res = run_autoattack(model, x, y, attack.eps, attack.norm, seed, bs, state_dir=autoattack_state,
                                progress=progress)
        by = aa_res.broken_by
        aa_white = torch.tensor([b in WHITE_BOX for b in by], device=y.device)
        square_broken = torch.tensor([b == "square" for b in by], device=y.device)
        white_robust &= ~aa_white
        cost.add("autoattack", float("nan"), time.perf_counter() - t1)
        aa_note = {"members": list(STANDARD), "resumed_chunks": aa_res.resumed_chunks}
    else:
        try:
            from .autoattack import run_autoattack
            idx = white_robust.nonzero().flatten()
            square_broken = torch.zeros_like(correct)
            if len(idx):
                sq = run_autoattack(model, x[idx], y[idx], attack.eps, attack.norm, seed, bs, attacks=("square",),
                                    square_queries=square_queries)
                square_broken[idx] = torch.tensor([b == "square" for b in sq.broken_by], device=y.device)
            cost.add("square", float("nan"), time.perf_counter() - t1)
        except ConfigError as e:
            aa_note = {"square_not_run": str(e)}
    bar.update(1)
    transferred = None
    if surrogate is not None:
        def transfer() -> torch.Tensor:
            try:
                x_t = _batched_trace(surrogate, x, y, attack, seed, "ce", 1).x_adv
            except NonFiniteOutputError as e:   # the surrogate's outputs, not the audited model's
                raise NonFiniteOutputError(str(e).replace("the model's", "the surrogate model's", 1)) from None
            return predict(model, x_t, bs, at="at the surrogate's examples") != y
        transferred = timed("transfer", attack.steps + 1, transfer)
    else:
        bar.update(1)
    bar.close()

    def acc(broken: torch.Tensor) -> float:
        return float((correct & ~broken).float().mean())
    accuracies = {"clean": float(correct.float().mean()), "pgd": acc(ce.ever_adversarial),
                  "pgd_last_iterate": acc(ce.final_adversarial), "pgd_margin": acc(mg.ever_adversarial),
                  "fgsm": acc(fg.ever_adversarial), "more_effort": acc(more), "random_noise": acc(noise)}
    worst = ce.ever_adversarial | mg.ever_adversarial | fg.ever_adversarial | more | noise
    if aa_res is not None:
        accuracies["autoattack"] = aa_res.accuracy
        accuracies["autoattack_after"] = aa_res.accuracy_after()
        worst = worst | ~aa_res.robust.to(y.device)
    if square_broken is not None:
        worst = worst | square_broken
    if transferred is not None:
        accuracies["transfer"] = acc(transferred)
        worst = worst | transferred
    for e, b in zip(eps_list, swept):
        accuracies[f"margin_pgd_eps{e:g}"] = acc(b)
    accuracies["worst_case"] = acc(worst)
    accuracies["n"] = n

    checks = []
    # 1. attack agreement: of the samples PGD-CE left standing, the share a margin PGD or AutoAttack broke
    other = mg.ever_adversarial | (~aa_res.robust.to(y.device) if aa_res is not None else torch.zeros_like(correct))
    k_gap, m_gap = int((pgd_robust & other).sum()), int(pgd_robust.sum())
    ev = {"pgd": accuracies["pgd"], "pgd_margin": accuracies["pgd_margin"],
          "autoattack": accuracies.get("autoattack"), "count": k_gap, "of": m_gap,
          "fraction": k_gap / m_gap if m_gap else 0.0, "threshold": t.attack_gap,
          "summary": f"PGD-CE {accuracies['pgd']:.3f}, margin PGD {accuracies['pgd_margin']:.3f}"
                     + (f", AutoAttack {accuracies['autoattack']:.3f}" if aa_res is not None else "")
                     + f"; {k_gap} of {m_gap} PGD-robust samples broken by another"}
    checks.append(_check("attack_agreement", ev, t, n))
    # 2. more effort
    k_eff = int((pgd_robust & more).sum())
    checks.append(_check("more_effort", {"count": k_eff, "of": m_gap, "steps": effort_spec.steps,
                                         "restarts": effort_restarts, "accuracy": accuracies["more_effort"],
                                         "summary": f"{effort_spec.steps} steps x {effort_restarts} restarts: "
                                                    f"{accuracies['more_effort']:.3f} vs {accuracies['pgd']:.3f}; "
                                                    f"{k_eff} of {m_gap} PGD-robust samples broken"}, t, n))
    # 3. eps sweep
    sweep_acc = [accuracies["pgd_margin"]] + [acc(b) for b in swept]
    # The unbounded ball holds every other input of x: a survivor there is an attack failure when some input
    # is predicted as another class (a witness). A model that predicts one class everywhere (collapsed) has
    # no witness for the samples of that class: they survive because no other class exists, not by masking.
    classes = pred.unique()
    lone = (y == classes[0]) if classes.numel() == 1 else torch.zeros_like(correct)
    survivors = correct & ~swept[-1]
    summary = "margin PGD accuracy " + ", ".join(f"{a:.3f}@{e:g}" for e, a in zip([attack.eps, *eps_list], sweep_acc))
    if classes.numel() == 1:
        summary += f"; the model predicts class {int(classes[0])} for every input (collapsed)"
    checks.append(_check("eps_sweep", {"eps": [attack.eps, *eps_list], "accuracy": sweep_acc,
                                       "unbounded_eps": big, "unbounded_robust": int(survivors.sum()),
                                       "unbounded_without_witness": int((survivors & lone).sum()),
                                       "n": n, "loss": "margin", "summary": summary}, t))
    # 4. loss traces of PGD-CE (Pintor et al.'s incomplete optimization; a loss that never moves)
    trace = ce.loss.T                                        # (n, steps + 1)
    lo, hi = trace.amin(1, keepdim=True), trace.amax(1, keepdim=True)
    scaled = ((trace - lo) / (hi - lo).clamp_min(1e-12)).cummax(1).values
    tail = max(2, attack.steps // 4)
    rising = (scaled[:, -1] - scaled[:, -1 - min(tail, trace.shape[1] - 1)]) > 0.05
    frozen = (hi - lo).squeeze(1) <= 1e-6 * (1 + lo.abs().squeeze(1))
    survivors = pgd_robust
    ev = {"incomplete": int((rising & survivors).sum()), "survivors": int(survivors.sum()),
          "frozen": int((frozen & correct).sum()), "attacked": int(correct.sum()), "tail_steps": tail,
          "silent_success": int((ce.ever_adversarial & ~ce.final_adversarial & correct).sum()),
          "mean_trace": trace[correct].mean(0).tolist() if bool(correct.any()) else []}
    ev["summary"] = (f"{ev['incomplete']} of {ev['survivors']} survivors still rising over the last {tail} steps; "
                     f"{ev['frozen']} of {ev['attacked']} losses never move; {ev['silent_success']} silent "
                     "successes")
    checks.append(_check("loss_traces", ev, t))
    # 5. gradients and saturation (on the correctly classified samples)
    m_c = int(correct.sum())
    zg = int((grads["zero"] & correct).sum())
    checks.append(_check("gradients", {"zero_or_nonfinite": zg, "of": m_c, "threshold": t.zero_gradient,
                                       "summary": f"{zg} of {m_c} input gradients all zero or not finite"}, t))
    ks = int((grads["saturated"] & correct).sum())
    checks.append(_check("saturated_softmax", {"count": ks, "of": m_c,
                                               "summary": f"{ks} of {m_c} probabilities exactly 1"}, t))
    # 6. randomness
    rnd_ev = {**rnd, "eot": k, "summary": f"largest logit change {rnd['logit_change']:.2e} over {rnd['passes']} "
                                          f"passes" + (f"; attacks used EOT over {k} draws" if k > 1 else "")}
    checks.append(_check("randomized", rnd_ev, t))
    # 7. black box: Square (AutoAttack's last member, or alone) and random noise on the white-box survivors
    m_w = int(white_robust.sum())
    if square_broken is not None:
        bb = (square_broken | noise) & white_robust
        k_bb = int(bb.sum())
        checks.append(_check("black_box", {"count": k_bb, "of": m_w, "square": int((square_broken & white_robust).sum()),
                                           "random_noise": int((noise & white_robust).sum()),
                                           "summary": f"{k_bb} of {m_w} white-box-robust samples broken by Square "
                                                      "or random noise"}, t, n))
    else:
        k_bb = int((noise & white_robust).sum())
        checks.append(_check("black_box", {"count": k_bb, "of": m_w, "random_noise": k_bb, "square": None,
                                           "note": aa_note, "summary": f"{k_bb} of {m_w} white-box-robust "
                                           "samples broken by random noise (Square not run)"}, t, n))
    # 8. transfer
    if transferred is not None:
        k_tr = int((transferred & white_robust).sum())
        checks.append(_check("transfer", {"count": k_tr, "of": m_w, "accuracy": accuracies["transfer"],
                                          "summary": f"{k_tr} of {m_w} white-box-robust samples broken by "
                                                     "examples from the surrogate"}, t, n))
    else:
        checks.append(_not_run("transfer", "no surrogate model given"))
    # 9. FGSM vs PGD
    k_fg = int((pgd_robust & fg.ever_adversarial).sum())
    checks.append(_check("fgsm_vs_pgd", {"count": k_fg, "of": m_gap, "fgsm": accuracies["fgsm"],
                                         "pgd": accuracies["pgd"],
                                         "summary": f"FGSM {accuracies['fgsm']:.3f} vs PGD {accuracies['pgd']:.3f}; "
                                                    f"{k_fg} of {m_gap} PGD-robust samples broken by FGSM"}, t, n))
    seconds = time.perf_counter() - t0
    parts = cost.parts
    own = sum(p["seconds"] for name, p in parts.items() if name not in ("autoattack",))
    cost_d = {"parts": parts, "audit_seconds_without_autoattack": own}
    if aa_res is not None and parts.get("autoattack", {}).get("seconds"):
        cost_d["relative_to_autoattack"] = own / parts["autoattack"]["seconds"]
    settings = {"effort_restarts": effort_restarts, "sweep": list(sweep), "noise_draws": noise_draws, "eot": eot,
                "autoattack": bool(autoattack), "surrogate": surrogate is not None, "batch_size": bs,
                "square_queries": None if autoattack else square_queries}
    if aa_note:
        settings["autoattack_note"] = aa_note
    return AuditResult(n, attack, seed, checks, accuracies, cost_d, seconds, t, settings)


__all__ = ["AuditResult", "Check", "Thresholds", "audit", "judge", "judge_dict", "wilson_lower"]
