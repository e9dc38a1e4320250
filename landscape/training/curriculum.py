"""SAT curricula: the lambda schedule and the difficulty metrics (see shared/SAT_METHOD.md).

lam_t rises from ``lam0`` to 1 over the first ``ramp`` fraction of the training iterations and stays
at 1 afterwards. The metrics: ``sat-eps`` scales eps by lam (``eps_for_lambda``); ``p-sat`` bounds the
softmax margin (``margin_difficulty``, enforced inside ``attacks.pgd_early_stop``); ``h-sat`` bounds the
normalized sharpness of the adversarial loss (``training.hsat``).
"""
from __future__ import annotations

import math

from ..attacks import margin_difficulty
from ..errors import ConfigError

SCHEDULES = ("linear", "cosine", "step")


def lam_schedule(t: int, total: int, lam0: float = 0.0, ramp: float = 0.4, kind: str = "linear",
                 n_steps: int = 4) -> float:
    """lambda at iteration ``t`` of ``total``: ``lam0`` at t = 0, 1 from t = ramp * total on.

    ``linear``: straight line; ``cosine``: half-cosine ease-in/out; ``step``: ``n_steps`` equal stairs
    (the last reached at the end of the ramp).
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown schedule {kind!r}; choose from {', '.join(SCHEDULES)}")
    if not 0 <= lam0 <= 1:
        raise ConfigError(f"lam0 must lie in [0, 1], got {lam0}")
    if not 0 <= ramp <= 1:
        raise ConfigError(f"ramp must lie in [0, 1], got {ramp}")
    ramp_iters = ramp * total
    if ramp_iters <= 0 or t >= ramp_iters:
        return 1.0
    frac = max(t, 0) / ramp_iters
    if kind == "linear":
        shape = frac
    elif kind == "cosine":
        shape = (1 - math.cos(math.pi * frac)) / 2
    else:
        shape = math.floor(frac * n_steps) / n_steps
    return lam0 + (1 - lam0) * shape


def eps_for_lambda(lam: float, eps_max: float) -> float:
    """SAT-eps: psi = ||delta||_inf / eps_max <= lam is training at eps_t = lam * eps_max."""
    return lam * eps_max


__all__ = ["SCHEDULES", "lam_schedule", "eps_for_lambda", "margin_difficulty"]
