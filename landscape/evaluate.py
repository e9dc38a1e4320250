"""Clean, PGD and AutoAttack accuracy of a model on a sample set; shared by training and ``landscape-eval``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ._version import __version__
from .attack_spec import AttackSpec, MissingEpsError, takes_attack_spec
from .attacks import eval_mode
from .autoattack import STANDARD, autoattack_accuracy, run_autoattack
from .errors import ConfigError
from .finite import OutputWatch
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


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, at: str = "") -> torch.Tensor:
    """Predicted labels, in eval mode and without gradients. Outputs that are NaN or infinite for any sample
    are refused (``finite.NonFiniteOutputError``, counting them over all of ``x``; ``at`` says where the
    inputs come from, e.g. "at the PGD examples"): the argmax of NaN is no prediction. One forward pass per
    batch (and one synchronization)."""
    watch = OutputWatch(at, "accuracy")
    with eval_mode(model), torch.inference_mode():
        pred = torch.cat([watch(model(x[i:i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)])
    watch.check()
    return pred


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, at: str = "") -> float:
    """Fraction of correctly classified samples (non-finite outputs refused: ``predict``)."""
    return (predict(model, x, batch_size, at) == y).float().mean().item() if len(y) else float("nan")


@takes_attack_spec(default_steps=20, batch_from="batch_size")
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec | None = None, *,
             batch_size: int = 256, seed: int = 0, autoattack: bool = False, autoattack_state: str | None = None,
             progress: bool = False) -> EvalResult:
    """Clean accuracy and PGD accuracy under ``attack`` (an ``AttackSpec``; the old loose keywords eps, steps
    (default 20), step_size, restarts still work, deprecated), optionally AutoAttack (standard;
    ``autoattack_state``: a folder that keeps its per-sample outcome as it comes, so that a rerun resumes:
    ``autoattack.run_autoattack``; ``progress``: a progress line for PGD and AutoAttack). No attack and no eps: clean accuracy only (``pgd_acc`` None).

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
        from .progress import progress_bar
        bar = progress_bar(total=len(y), desc=f"PGD-{attack.steps}", unit="sample", show=progress)
        robust = accuracy(model, attack.examples(model, x, y, seed, callback=lambda done, _: bar.update(done - bar.n)),
                          y, batch_size, at="at the PGD examples")
        bar.close()
    elif attack is not None:
        robust = clean  # eps 0 or no steps: the inputs stay as they are
    aa = run_autoattack(model, x, y, attack.eps, attack.norm, seed, batch_size, state_dir=autoattack_state,
                        progress=progress) if autoattack else None
    return EvalResult(len(y), clean, robust, attack, seed, aa.accuracy if aa else None, time.perf_counter() - t0,
                      {"batch_size": batch_size, "autoattack": bool(autoattack)},
                      aa.accuracy_after() if aa else None)


__all__ = ["EvalResult", "STANDARD", "accuracy", "autoattack_accuracy", "evaluate", "predict"]
