"""What an audit found and how it is stored: one ``Finding`` per check, the ``AuditResult`` around them, the
one verdict rule, and the re-judging of stored evidence under (other) thresholds without running anything."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar, Sequence

from .._version import __version__
from ..attack_spec import AttackSpec
from .checks import BY_NAME, CHECKS
from .context import Context
from .thresholds import Thresholds


@dataclass
class Finding:
    """One check's outcome: ``passed`` (None: not run, with the reason in ``evidence``), its numbers, the
    advice and the question (stored as in every audit JSON)."""
    name: str
    passed: bool | None
    evidence: dict
    advice: str
    question: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(findings: Sequence[Finding]) -> str:
    """``suspect`` when any check failed, else ``ok``."""
    return "suspect" if any(f.passed is False for f in findings) else "ok"


def apply(ctx: Context, t: Thresholds) -> list[Finding]:
    """Every check of the registry on the context: its evidence, judged under ``t``, in the registry's order."""
    out = []
    for c in CHECKS:
        ev = c.read(ctx, t)
        out.append(Finding(c.name, c.judge(ev, t), ev, c.advice, c.question))
    return out


def judge(findings: Sequence[Finding], thresholds: Thresholds) -> list[Finding]:
    """The findings with ``passed`` recomputed by their checks' judges from the stored evidence under
    ``thresholds`` (no attack runs; a name the registry does not know keeps its stored outcome)."""
    return [replace(f, passed=BY_NAME[f.name].judge(f.evidence, thresholds)) if f.name in BY_NAME else f
            for f in findings]


def rejudge(stored: dict, thresholds: Thresholds | None = None) -> dict:
    """A stored audit (the whole result, or its ``"audit"`` block) re-judged: a new block ``{"verdict",
    "checks"}`` with each check's ``passed`` and the verdict redone under ``thresholds`` (default: today's).
    Given the whole result, its ``n`` fills in the evidence of the checks that need it (``Check.effect``) in
    results stored before the evidence kept it."""
    t = thresholds or Thresholds()
    n = stored.get("n") if "audit" in stored else None
    block = stored["audit"] if "audit" in stored else stored
    findings = [Finding(**c) for c in block["checks"]]
    if n is not None:
        findings = [replace(f, evidence={"n": n, **f.evidence}) if f.name in BY_NAME and BY_NAME[f.name].effect
                    else f for f in findings]
    findings = judge(findings, t)
    return {"verdict": verdict(findings), "checks": [f.to_dict() for f in findings]}


@dataclass
class AuditResult:
    """Per-check findings on ``n`` samples under ``attack``; ``accuracies`` maps each attack to its accuracy
    (all on the same n samples); ``cost`` the forward+backward passes and seconds of each part."""
    n: int
    attack: AttackSpec
    seed: int
    checks: list[Finding]
    accuracies: dict
    cost: dict
    seconds: float
    thresholds: Thresholds = field(default_factory=Thresholds)
    settings: dict = field(default_factory=dict)
    kind: ClassVar[str] = "audit"

    @property
    def verdict(self) -> str:
        """``suspect`` when any check failed, else ``ok``."""
        return verdict(self.checks)

    @property
    def failed(self) -> list[str]:
        """The names of the checks that failed."""
        return [c.name for c in self.checks if c.passed is False]

    @property
    def robust_acc(self) -> float:
        return self.accuracies["worst_case"]

    def to_dict(self) -> dict:
        """The stored form (every audit JSON has it; ``rejudge`` reads it back)."""
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
