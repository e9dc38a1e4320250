"""Per-batch training losses. Each takes the model (in train mode), a batch and the curriculum state,
and returns a ``BatchLoss``: the scalar to minimize and the logits of the samples trained on.
``attack_model`` (default: ``model``) is what the attack runs on: data-parallel training passes the bare
module there (each process attacks its own samples; no gradient sync) and the DDP wrapper as ``model``.

Costs, with k PGD steps: standard 1 fwd+bwd; at / sat-eps / h-sat k+1 fwd+bwd; p-sat k+1 fwd+bwd
(+1 fwd while lam < 1); trades k+2 fwd + k+1 bwd.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd, pgd_early_stop, trades_attack


@dataclass
class BatchLoss:
    loss: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class Step:
    """The curriculum state for one iteration: the budget and lambda in force, and the attack settings."""
    eps: float          # the eps used by this iteration's attack (eps_t for sat-eps / h-sat)
    lam: float          # curriculum lambda (1 for non-curriculum methods)
    steps: int
    step_size: float
    beta: float = 6.0
    fp16_safe: bool = False  # the attack's input gradients kept from underflowing under fp16 autocast (attacks._logits)


def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: Step, g: torch.Generator,
             attack_model: nn.Module | None = None) -> BatchLoss:
    """Cross-entropy on clean inputs."""
    logits = model(x)
    return BatchLoss(F.cross_entropy(logits, y), logits)


def adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: Step, g: torch.Generator,
                attack_model: nn.Module | None = None) -> BatchLoss:
    """Madry AT: cross-entropy at Linf PGD examples of budget ``s.eps`` (random start)."""
    x_adv = pgd(attack_model or model, x, y, s.eps, s.step_size, s.steps, generator=g, fp16_safe=s.fp16_safe)
    logits = model(x_adv)
    return BatchLoss(F.cross_entropy(logits, y), logits)


def probability_sat(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: Step, g: torch.Generator,
                    attack_model: nn.Module | None = None) -> BatchLoss:
    """P-SAT: cross-entropy at PGD examples early-stopped per sample where psi_P would exceed lam."""
    x_adv = pgd_early_stop(attack_model or model, x, y, s.eps, s.lam, s.step_size, s.steps, generator=g,
                           fp16_safe=s.fp16_safe)
    logits = model(x_adv)
    return BatchLoss(F.cross_entropy(logits, y), logits)


def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: Step, g: torch.Generator,
           attack_model: nn.Module | None = None) -> BatchLoss:
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x_adv)) / batch, x_adv maximizing the KL term."""
    x_adv = trades_attack(attack_model or model, x, s.eps, s.step_size, s.steps, generator=g, fp16_safe=s.fp16_safe)
    return trades_loss(model, x, x_adv, y, s.beta)


class EachInput(nn.Module):
    """``model`` applied to each of several inputs in ONE call: ``(model(x1), model(x2), ...)`` (one input:
    its output). The trainer wraps its model in this before DistributedDataParallel, which expects one
    forward call per backward pass: TRADES' two forward passes then go through one call (``each``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *xs: torch.Tensor):
        outs = tuple(self.model(x) for x in xs)
        return outs[0] if len(outs) == 1 else outs


def each(model: nn.Module, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``model`` applied to each input, in one call when ``model`` wraps an ``EachInput`` (DDP)."""
    if isinstance(getattr(model, "module", None), EachInput):
        return model(*xs)
    return tuple(model(x) for x in xs)


def trades_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, beta: float) -> BatchLoss:
    """The TRADES objective at given adversarial inputs: two forwards, as in the reference code (so that
    BatchNorm sees clean and adversarial batches separately)."""
    clean, adv = each(model, x, x_adv)
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="sum") / len(x)
    return BatchLoss(F.cross_entropy(clean, y) + beta * kl, clean)


OBJECTIVES = {"standard": standard, "at": adversarial, "sat-eps": adversarial, "h-sat": adversarial,
              "p-sat": probability_sat, "trades": trades}
METHODS = tuple(OBJECTIVES)
CURRICULUM_METHODS = ("sat-eps", "p-sat", "h-sat")
