"""``audit``: build the context (every attack run once) and apply every check of the registry to it."""
from __future__ import annotations

import time

import torch
from torch import nn

from ..attack_spec import AttackSpec
from ..errors import ConfigError
from ..inputs import check_batch
from ..progress import Callback
from .context import AuditSettings, gather
from .result import AuditResult, apply
from .thresholds import Thresholds


def _cost(parts: dict, autoattack: bool) -> dict:
    """The result's ``cost``: each part, the audit's own seconds, and their ratio to AutoAttack's."""
    own = sum(p["seconds"] for name, p in parts.items() if name != "autoattack")
    cost = {"parts": parts, "audit_seconds_without_autoattack": own}
    if autoattack and parts.get("autoattack", {}).get("seconds"):
        cost["relative_to_autoattack"] = own / parts["autoattack"]["seconds"]
    return cost


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, *, seed: int = 0,
          autoattack: bool = True, autoattack_state: str | None = None, surrogate: nn.Module | None = None,
          effort_restarts: int = 5, sweep: tuple[float, ...] = (2.0, 4.0), noise_draws: int = 20, eot: int = 10,
          thresholds: Thresholds | None = None, batch_size: int = 256, square_queries: int = 5000,
          callback: Callback = None) -> AuditResult:
    """Every check of ``checks.CHECKS`` on (x, y) under ``attack`` (the PGD being audited).

    Runs: 5 forwards (randomness; if randomized, every gradient attack below averages ``eot`` draws), one
    gradient pass, PGD-CE and PGD-margin with their loss traces (2 x steps), FGSM (1), PGD-CE at 2 x steps with
    ``effort_restarts`` restarts, the margin PGD at eps x ``sweep`` and at an unbounded budget, ``noise_draws``
    random points, AutoAttack (``autoattack``; needs the extra; ``autoattack_state`` makes it resumable),
    else Square alone (``square_queries``) on the white-box survivors, and PGD on ``surrogate`` transferred.
    ``cost`` in the result gives each part's passes per sample and seconds. A model whose outputs are NaN or
    infinite is refused first (``finite.NonFiniteOutputError``, one line counting the samples), not audited.
    ``callback(done, total, stage, unit)``: the parts done, then AutoAttack's members (``landscape.progress``).
    """
    if not isinstance(attack, AttackSpec):
        raise ConfigError(f"audit needs an AttackSpec, got {type(attack).__name__}")
    if not attack.active:
        raise ConfigError("audit needs an attack that moves the inputs (eps > 0 and steps > 0)")
    s = AuditSettings(seed, autoattack, autoattack_state, effort_restarts, tuple(sweep), noise_draws, eot,
                      batch_size, square_queries)
    t = thresholds or Thresholds()
    check_batch(model, x, y, "audit")
    if surrogate is not None:
        check_batch(surrogate, x, y, "audit surrogate")
    t0 = time.perf_counter()
    ctx, parts = gather(model, x, y, attack, s, t, surrogate, callback)
    findings = apply(ctx, t)
    settings = s.to_dict(surrogate is not None)
    if ctx.note:
        settings["autoattack_note"] = ctx.note
    return AuditResult(len(y), attack, seed, findings, ctx.accuracies(), _cost(parts, s.autoattack),
                       time.perf_counter() - t0, t, settings)
