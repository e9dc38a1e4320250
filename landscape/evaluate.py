"""Clean, PGD and AutoAttack accuracy of a model on a sample set; shared by training and ``landscape-eval``."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import __version__
from .attacks import adversarial_examples, check_eps, eval_mode
from .errors import ConfigError


@dataclass
class EvalResult:
    """Accuracies in [0, 1] on ``n`` samples, with the attack settings that produced them."""
    n: int
    clean_acc: float
    pgd_acc: float | None
    eps: float
    steps: int
    step_size: float | None
    restarts: int
    seed: int
    autoattack_acc: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"landscape_version": __version__, **asdict(self)}


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels, in eval mode and without gradients. One forward pass per batch."""
    with eval_mode(model), torch.inference_mode():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of correctly classified samples."""
    return (predict(model, x, batch_size) == y).float().mean().item() if len(y) else float("nan")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
             step_size: float | None = None, restarts: int = 1, batch_size: int = 256, seed: int = 0,
             autoattack: bool = False) -> EvalResult:
    """Clean accuracy and PGD-``steps`` accuracy (step ``eps/4`` by default), optionally AutoAttack (standard).

    Cost: one forward per batch for clean accuracy; restarts * steps forward+backward passes per batch
    for PGD; AutoAttack's standard ensemble is far more expensive (thousands of passes per sample).
    """
    check_eps(eps)
    t0 = time.perf_counter()
    step_size = eps / 4 if step_size is None else step_size
    clean = accuracy(model, x, y, batch_size)
    robust = None
    if eps > 0 and steps > 0:
        x_adv = adversarial_examples(model, x, y, eps, step_size, steps, restarts=restarts,
                                     batch_size=batch_size, seed=seed)
        robust = accuracy(model, x_adv, y, batch_size)
    elif eps == 0:
        robust = clean
    aa = autoattack_accuracy(model, x, y, eps, batch_size, seed) if autoattack else None
    return EvalResult(len(y), clean, robust, eps, steps, step_size, restarts, seed, aa,
                      time.perf_counter() - t0)


def autoattack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                        batch_size: int = 256, seed: int = 0) -> float:
    """Robust accuracy under AutoAttack (standard version, Linf) from the ``pyautoattack`` package."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise ConfigError("AutoAttack needs the optional extra: pip install 'landscape[autoattack]'") from e
    with eval_mode(model):
        adversary = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=x.device)
        adversary.verbose = False
        x_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return accuracy(model, x_adv, y, batch_size)
