"""Can a robust accuracy be believed? ``audit`` runs the checks the field uses to catch attacks that fail
(gradient masking and its cousins; sources in the shared EVALUATION_AUDIT.md: Athalye et al. 2018, Carlini et al.
2019, Pintor et al. 2022, AutoAttack's own checks) on one sample set and returns each check's verdict, its
evidence and what to do.

The modules, low to high: ``thresholds`` (``Thresholds``, the Wilson bound), ``context`` (every attack run once,
its per-sample outcomes in one ``Context``), ``checks`` (the registry ``CHECKS``: each ``Check``'s question,
advice, thresholds, evidence and judge), ``result`` (``Finding``, ``AuditResult``, the verdict rule and
``rejudge`` of stored evidence), ``run`` (``audit``)."""
from __future__ import annotations

from .checks import BY_NAME, CHECKS, Check
from .context import AuditSettings, Context, gather, randomness, unbounded_eps
from .result import AuditResult, Finding, apply, judge, rejudge, verdict
from .run import audit
from .thresholds import Thresholds, wilson_lower

__all__ = ["AuditResult", "AuditSettings", "BY_NAME", "CHECKS", "Check", "Context", "Finding", "Thresholds", "apply",
           "audit", "gather", "judge", "randomness", "rejudge", "unbounded_eps", "verdict", "wilson_lower"]
