"""The audit's thresholds and the rules that judge a fraction of samples against them.

Every check is a fraction of samples compared with a stated threshold, judged on the lower end of its Wilson
score interval (z = 2), so that a handful of samples cannot raise a flag by chance and a large share of few
samples still can."""
from __future__ import annotations

import math
from dataclasses import dataclass


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


def within(k: int, m: int, limit: float, t: Thresholds) -> bool:
    """k of m is within ``limit``: the lower Wilson bound of k / m does not exceed it."""
    return wilson_lower(k, m, t.z) <= limit


def rise_ok(a: float, b: float, n: int, t: Thresholds) -> bool:
    """Accuracy b at a larger eps than a: it may not rise by more than ``sweep_rise`` beyond z standard errors."""
    se = math.sqrt(max(a * (1 - a), b * (1 - b), 1 / n) / n)
    return b - a <= t.sweep_rise + t.z * se


def deterministic(randomness: dict, t: Thresholds) -> bool:
    """AutoAttack's randomized-model test passed: the L2-normalized logits moved by at most ``randomized``
    between passes and the number correct stayed the same (``randomness``: ``logit_change``,
    ``predictions_differ``)."""
    return randomness["logit_change"] <= t.randomized and not randomness["predictions_differ"]
