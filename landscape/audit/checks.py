"""The audit's checks, one registry: each ``Check`` holds its name, the question it asks, the advice when it
fails, the thresholds it reads, how its evidence is read from the ``Context`` and how that evidence is judged.

Sources (the shared EVALUATION_AUDIT.md): Athalye et al. 2018, Carlini et al. 2019, Pintor et al. 2022 and
AutoAttack's own checks. A judge is a pure function of the stored evidence and the ``Thresholds``, so a stored
audit is re-judged without rerunning anything (``result.rejudge``); it returns None when the check did not
run (the evidence says why)."""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import torch

from .context import Context
from .thresholds import Thresholds, deterministic, rise_ok, within

Evidence = Callable[[Context, Thresholds], dict]
Judge = Callable[[dict, Thresholds], "bool | None"]


@dataclass(frozen=True)
class Check:
    """One check of the audit. ``evidence`` reads its numbers from the context (a dict with a ``summary``
    line; ``not_run`` says why when it could not run); ``judge`` says whether they pass under the thresholds
    (None: not run). ``thresholds`` names the ``Thresholds`` fields the judge reads. ``effect``: a gap
    between attacks, whose flag also needs the broken samples to be ``min_effect`` of all ``n`` samples (kept
    in the evidence)."""
    name: str
    question: str
    advice: str
    thresholds: tuple[str, ...]
    evidence: Evidence
    judge: Judge
    effect: bool = False

    def read(self, ctx: Context, t: Thresholds) -> dict:
        """The evidence from ``ctx``; an effect check's gets ``n`` (all samples) when it ran."""
        ev = self.evidence(ctx, t)
        return {**ev, "n": ctx.n} if self.effect and "not_run" not in ev else ev


def not_run(why: str) -> dict:
    """The evidence of a check that could not run."""
    return {"summary": f"not run: {why}", "not_run": why}


def share(limit: str, effect: bool = False) -> Judge:
    """The judge of a share: ``count`` of ``of`` within the threshold ``limit`` (None without a count); with
    ``effect``, a count under ``min_effect`` of the evidence's ``n`` passes whatever its share."""
    def judge(ev: dict, t: Thresholds) -> bool | None:
        if "count" not in ev:
            return None
        if effect and ev.get("n") and ev["count"] / ev["n"] < t.min_effect:
            return True
        return within(ev["count"], ev["of"], getattr(t, limit), t)
    return judge


def gap(name: str, question: str, advice: str, limit: str, evidence: Evidence) -> Check:
    """A check that counts samples another attack broke: judged on its share against ``limit`` and on its
    effect (``min_effect`` of all samples)."""
    return Check(name, question, advice, (limit, "min_effect"), evidence, share(limit, effect=True), effect=True)


# --- 1. attack agreement -------------------------------------------------------------------------------------

def _attack_agreement(c: Context, t: Thresholds) -> dict:
    """Of the samples PGD-CE left standing, those a margin PGD or AutoAttack broke."""
    acc = c.accuracies()
    other = c.pgd_margin if c.autoattack is None else c.pgd_margin | c.autoattack
    k, m = int((c.pgd_robust & other).sum()), int(c.pgd_robust.sum())
    return {"pgd": acc["pgd"], "pgd_margin": acc["pgd_margin"], "autoattack": acc.get("autoattack"), "count": k,
            "of": m, "fraction": k / m if m else 0.0, "threshold": t.attack_gap,
            "summary": f"PGD-CE {acc['pgd']:.3f}, margin PGD {acc['pgd_margin']:.3f}"
                       + (f", AutoAttack {acc['autoattack']:.3f}" if c.autoattack is not None else "")
                       + f"; {k} of {m} PGD-robust samples broken by another"}


ATTACK_AGREEMENT = gap(
    "attack_agreement", "do PGD on the cross-entropy, PGD on a margin loss and AutoAttack agree?",
    "report the lowest accuracy (AutoAttack's), not PGD's; a gap this large points to a loss the cross-entropy "
    "gradient cannot climb (masking): attack with a margin loss and look at the input-space landscape "
    "(landscape-surface --space input)",
    "attack_gap", _attack_agreement)


# --- 2. more effort ------------------------------------------------------------------------------------------

def _more_effort(c: Context, t: Thresholds) -> dict:
    """Of the PGD-robust samples, those PGD at twice the steps with restarts broke."""
    acc = c.accuracies()
    k, m = int((c.pgd_robust & c.more_effort).sum()), int(c.pgd_robust.sum())
    return {"count": k, "of": m, "steps": c.effort_steps, "restarts": c.effort_restarts,
            "accuracy": acc["more_effort"],
            "summary": f"{c.effort_steps} steps x {c.effort_restarts} restarts: {acc['more_effort']:.3f} vs "
                       f"{acc['pgd']:.3f}; {k} of {m} PGD-robust samples broken"}


MORE_EFFORT = gap(
    "more_effort", "does twice the steps with restarts break more?",
    "the attack has not converged: report the accuracy at more steps and restarts, and raise both until the "
    "accuracy stops falling",
    "more_effort", _more_effort)


# --- 3. eps sweep --------------------------------------------------------------------------------------------

def _eps_sweep(c: Context, t: Thresholds) -> dict:
    """The margin PGD's accuracy along eps to an unbounded budget, and its survivors there. The unbounded ball
    holds every other input of x: a survivor there is an attack failure when some input is predicted as
    another class (a witness). A model that predicts one class everywhere (collapsed) has no witness for the
    samples of that class: they survive because no other class exists, not by masking."""
    eps = [c.attack.eps, *c.sweep_eps]
    accuracy = [c.accuracy(c.pgd_margin)] + [c.accuracy(b) for b in c.swept]
    classes = c.pred.unique()
    lone = (c.y == classes[0]) if classes.numel() == 1 else torch.zeros_like(c.correct)
    survivors = c.correct & ~c.swept[-1]
    summary = "margin PGD accuracy " + ", ".join(f"{a:.3f}@{e:g}" for e, a in zip(eps, accuracy))
    if classes.numel() == 1:
        summary += f"; the model predicts class {int(classes[0])} for every input (collapsed)"
    return {"eps": eps, "accuracy": accuracy, "unbounded_eps": c.sweep_eps[-1],
            "unbounded_robust": int(survivors.sum()), "unbounded_without_witness": int((survivors & lone).sum()),
            "n": c.n, "loss": "margin", "summary": summary}


def _judge_sweep(ev: dict, t: Thresholds) -> bool | None:
    """Near-zero accuracy (with a witness) at the unbounded budget, and no rise with eps."""
    if "accuracy" not in ev:
        return None
    return (within(ev["unbounded_robust"] - ev.get("unbounded_without_witness", 0), ev["n"], t.unbounded_accuracy, t)
            and all(rise_ok(a, b, ev["n"], t) for a, b in zip(ev["accuracy"], ev["accuracy"][1:])))


EPS_SWEEP = Check(
    "eps_sweep", "does accuracy fall with eps, to (near) zero at an unbounded budget?",
    "accuracy that does not fall to zero at an unbounded budget, or rises with eps, means the attack cannot "
    "reach points that exist: it is failing, not the model robust",
    ("unbounded_accuracy", "sweep_rise"), _eps_sweep, _judge_sweep)


# --- 4. loss traces ------------------------------------------------------------------------------------------

def _loss_traces(c: Context, t: Thresholds) -> dict:
    """PGD-CE's loss traces (Pintor et al.'s incomplete optimization; a loss that never moves): survivors
    whose trace, rescaled to [0, 1] and made monotone, still rises by 0.05 over the last quarter of the steps;
    correct samples whose loss never moves; silent successes."""
    trace = c.pgd.loss.T                                    # (n, steps + 1)
    lo, hi = trace.amin(1, keepdim=True), trace.amax(1, keepdim=True)
    scaled = ((trace - lo) / (hi - lo).clamp_min(1e-12)).cummax(1).values
    tail = max(2, c.attack.steps // 4)
    rising = (scaled[:, -1] - scaled[:, -1 - min(tail, trace.shape[1] - 1)]) > 0.05
    frozen = (hi - lo).squeeze(1) <= 1e-6 * (1 + lo.abs().squeeze(1))
    correct = c.correct
    ev = {"incomplete": int((rising & c.pgd_robust).sum()), "survivors": int(c.pgd_robust.sum()),
          "frozen": int((frozen & correct).sum()), "attacked": int(correct.sum()), "tail_steps": tail,
          "silent_success": int((c.pgd.ever_adversarial & ~c.pgd.final_adversarial & correct).sum()),
          "mean_trace": trace[correct].mean(0).tolist() if bool(correct.any()) else []}
    ev["summary"] = (f"{ev['incomplete']} of {ev['survivors']} survivors still rising over the last {tail} steps; "
                     f"{ev['frozen']} of {ev['attacked']} losses never move; {ev['silent_success']} silent "
                     "successes")
    return ev


def _judge_traces(ev: dict, t: Thresholds) -> bool | None:
    """Few survivors still rising and few losses frozen."""
    if "incomplete" not in ev:
        return None
    return (within(ev["incomplete"], ev["survivors"], t.incomplete, t)
            and within(ev["frozen"], ev["attacked"], t.frozen, t))


LOSS_TRACES = Check(
    "loss_traces", "is the PGD loss still rising at the end, or never moving?",
    "losses still rising at the last step need more steps (or a smaller step size); losses that never move "
    "mean the gradient says nothing (masking): use a margin loss, EOT or a black-box attack",
    ("incomplete", "frozen"), _loss_traces, _judge_traces)


# --- 5. gradients and saturation (on the correctly classified samples) ----------------------------------------

def _gradients(c: Context, t: Thresholds) -> dict:
    """Correct samples whose input gradient is all zero or not finite."""
    m, k = int(c.correct.sum()), int((c.zero_gradient & c.correct).sum())
    return {"zero_or_nonfinite": k, "of": m, "threshold": t.zero_gradient,
            "summary": f"{k} of {m} input gradients all zero or not finite"}


def _judge_gradients(ev: dict, t: Thresholds) -> bool | None:
    return None if "zero_or_nonfinite" not in ev else within(ev["zero_or_nonfinite"], ev["of"], t.zero_gradient, t)


GRADIENTS = Check(
    "gradients", "are input gradients zero or not finite?",
    "zero or non-finite input gradients (shattered gradients, saturation, non-differentiable layers): attack "
    "through a differentiable approximation (BPDA) and rely on black-box attacks",
    ("zero_gradient",), _gradients, _judge_gradients)


def _saturated(c: Context, t: Thresholds) -> dict:
    """Correct samples whose float32 softmax is exactly 1."""
    m, k = int(c.correct.sum()), int((c.saturated & c.correct).sum())
    return {"count": k, "of": m, "summary": f"{k} of {m} probabilities exactly 1"}


SATURATED_SOFTMAX = Check(
    "saturated_softmax", "are probabilities exactly 1 in float32?",
    "probabilities of exactly 1 zero the cross-entropy's gradient: attack the logits with a margin (CW/DLR) "
    "loss; AutoAttack's APGD-T and FAB-T do",
    ("saturated",), _saturated, share("saturated"))


# --- 6. randomness -------------------------------------------------------------------------------------------

def _randomized(c: Context, t: Thresholds) -> dict:
    """AutoAttack's randomized-model test and the EOT draws the attacks then used."""
    r = c.randomness
    return {**r, "eot": c.eot, "summary": f"largest logit change {r['logit_change']:.2e} over {r['passes']} passes"
                                          + (f"; attacks used EOT over {c.eot} draws" if c.eot > 1 else "")}


def _judge_randomized(ev: dict, t: Thresholds) -> bool | None:
    return None if "logit_change" not in ev else deterministic(ev, t)


RANDOMIZED = Check(
    "randomized", "do two forward passes differ?",
    "the model is randomized: report accuracy under EOT (gradients averaged over many draws) and over several "
    "forward passes",
    ("randomized",), _randomized, _judge_randomized)


# --- 7. black box: Square (AutoAttack's last member, or alone) and random noise on the white-box survivors -----

def _black_box(c: Context, t: Thresholds) -> dict:
    """Of the white-box-robust samples, those Square or random noise broke."""
    wr = c.white_robust
    m = int(wr.sum())
    if c.square is None:
        k = int((c.noise & wr).sum())
        return {"count": k, "of": m, "random_noise": k, "square": None, "note": c.note,
                "summary": f"{k} of {m} white-box-robust samples broken by random noise (Square not run)"}
    k = int(((c.square | c.noise) & wr).sum())
    return {"count": k, "of": m, "square": int((c.square & wr).sum()), "random_noise": int((c.noise & wr).sum()),
            "summary": f"{k} of {m} white-box-robust samples broken by Square or random noise"}


BLACK_BOX = gap(
    "black_box", "does a black-box attack (Square, random noise) break what white-box attacks did not?",
    "a gradient-free attack found what gradient attacks missed: the gradients are masked; the white-box "
    "accuracy is an overestimate",
    "black_box", _black_box)


# --- 8. transfer ---------------------------------------------------------------------------------------------

def _transfer(c: Context, t: Thresholds) -> dict:
    """Of the white-box-robust samples, those the surrogate's examples broke."""
    if c.transferred is None:
        return not_run("no surrogate model given")
    wr = c.white_robust
    k, m = int((c.transferred & wr).sum()), int(wr.sum())
    return {"count": k, "of": m, "accuracy": c.accuracy(c.transferred),
            "summary": f"{k} of {m} white-box-robust samples broken by examples from the surrogate"}


TRANSFER = gap(
    "transfer", "do examples from a surrogate model break what white-box attacks did not?",
    "examples made on another model succeed where white-box attacks on this one failed: the gradients are masked",
    "transfer", _transfer)


# --- 9. FGSM vs PGD ------------------------------------------------------------------------------------------

def _fgsm(c: Context, t: Thresholds) -> dict:
    """Of the PGD-robust samples, those FGSM broke."""
    acc = c.accuracies()
    k, m = int((c.pgd_robust & c.fgsm).sum()), int(c.pgd_robust.sum())
    return {"count": k, "of": m, "fgsm": acc["fgsm"], "pgd": acc["pgd"],
            "summary": f"FGSM {acc['fgsm']:.3f} vs PGD {acc['pgd']:.3f}; {k} of {m} PGD-robust samples broken by "
                       "FGSM"}


FGSM_VS_PGD = gap(
    "fgsm_vs_pgd", "does FGSM break what PGD did not?",
    "one step beats many: the iterative attack is failing (a step size too small or a loss surface that traps it)",
    "fgsm", _fgsm)


#: every check, in the order an audit runs and stores them
CHECKS: tuple[Check, ...] = (ATTACK_AGREEMENT, MORE_EFFORT, EPS_SWEEP, LOSS_TRACES, GRADIENTS, SATURATED_SOFTMAX,
                             RANDOMIZED, BLACK_BOX, TRANSFER, FGSM_VS_PGD)
#: each check by its name
BY_NAME: Mapping[str, Check] = MappingProxyType({c.name: c for c in CHECKS})
