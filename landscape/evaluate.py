"""Clean, PGD and AutoAttack accuracy of a model on a sample set; shared by training and ``landscape-eval``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ._version import __version__
from .attack_spec import AttackSpec, MissingEpsError
from .autoattack import run_autoattack
from .errors import ConfigError
from .inference import accuracy
from .progress import Callback, report
from .inputs import check_batch


@dataclass
class EvalResult:
    """Accuracies in [0, 1] on ``n`` samples, with the attack (``AttackSpec``; None: clean only) that produced them."""
    n: int
    clean_acc: float
    pgd_acc: float | None
    attack: AttackSpec | None
    seed: int
    autoattack_acc: float | None = None
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    autoattack_after: dict | None = None     # robust accuracy after each AutoAttack member
    kind: ClassVar[str] = "evaluation"

    eps = property(lambda self: self.attack.eps if self.attack else None)
    steps = property(lambda self: self.attack.steps if self.attack else None)
    step_size = property(lambda self: self.attack.alpha if self.attack else None)
    restarts = property(lambda self: self.attack.restarts if self.attack else None)

    def to_dict(self) -> dict:
        """JSON-ready: kind, version, every setting (the attack spec included), seconds, then the accuracies
        (eps / steps / step_size / restarts repeated at the top for older readers)."""
        settings = {"samples": self.n, "seed": self.seed, **self.settings,
                    "attack": self.attack.to_dict() if self.attack else None}
        return {"kind": self.kind, "landscape_version": __version__, "settings": settings, "seconds": self.seconds,
                "n": self.n, "clean_acc": self.clean_acc, "pgd_acc": self.pgd_acc,
                "autoattack_acc": self.autoattack_acc, "autoattack_after": self.autoattack_after, "eps": self.eps, "steps": self.steps,
                "step_size": self.step_size, "restarts": self.restarts, "seed": self.seed}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec | None = None, *,
             batch_size: int = 256, seed: int = 0, autoattack: bool = False, autoattack_state: str | None = None,
             callback: Callback = None) -> EvalResult:
    """Clean accuracy and PGD accuracy under ``attack`` (an ``AttackSpec``), optionally AutoAttack (standard;
    ``autoattack_state``: a folder that keeps its per-sample outcome as it comes, so that a rerun resumes:
    ``autoattack.run_autoattack``; ``callback(done, total, stage, unit)``: progress of PGD, then of AutoAttack,
    ``landscape.progress``'s protocol). No attack and no eps: clean accuracy only (``pgd_acc`` None).

    A model whose outputs are NaN or infinite (on the inputs, at PGD's iterates or at its examples) is
    refused (``finite.NonFiniteOutputError``, one line counting the samples) before any accuracy is returned.

    Cost: one forward per batch for clean accuracy; restarts * steps forward+backward passes per sample
    for PGD; AutoAttack's standard ensemble is far more expensive (thousands of passes per sample).
    """
    if attack is not None and not isinstance(attack, AttackSpec):
        raise ConfigError(f"attack must be an AttackSpec, got {type(attack).__name__}")
    if autoattack and attack is None:
        raise MissingEpsError("AutoAttack needs an eps")
    check_batch(model, x, y, "evaluate", unit_interval=attack is not None)   # before any work
    t0 = time.perf_counter()
    clean = accuracy(model, x, y, batch_size)
    robust = None
    if attack is not None and attack.active:
        def pgd(done: int, total: int) -> None:
            report(callback, done, total, f"PGD-{attack.steps}", "sample")
        robust = accuracy(model, attack.examples(model, x, y, seed, callback=pgd), y, batch_size,
                          at="at the PGD examples")
    elif attack is not None:
        robust = clean  # eps 0 or no steps: the inputs stay as they are
    aa = run_autoattack(model, x, y, attack.eps, attack.norm, seed, batch_size, state_dir=autoattack_state,
                        callback=callback) if autoattack else None
    return EvalResult(len(y), clean, robust, attack, seed, aa.accuracy if aa else None, time.perf_counter() - t0,
                      {"batch_size": batch_size, "autoattack": bool(autoattack)},
                      aa.accuracy_after() if aa else None)


__all__ = ["EvalResult", "evaluate"]
