"""EMA weights: an exponential moving average of the weights, kept beside the trained model.

Built on ``torch.optim.swa_utils.AveragedModel`` (its deep copy, ``n_averaged`` counter and state_dict);
what it lacks, and this adds: the usual warm-up, decay_t = min(decay, (1 + t) / (10 + t)) after t updates
(so the first updates follow the weights instead of the random init), and BatchNorm buffers COPIED from
the trained model after each update (running statistics of averaged weights are not averages of running
statistics; copying is what timm's ModelEmaV2 and the robust-overfitting codebases do).
Cost per update: one lerp over the weights and one copy of the buffers.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..constraints import Interval, check_value

#: a decay ``ema_model`` takes; ``TrainConfig``'s ``ema`` is this or 0 (no EMA)
DECAY = Interval(float, 0.0, 1.0, lo_open=True, hi_open=True)


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """An ``AveragedModel`` of ``model`` whose ``update_parameters`` applies the warm-up EMA with ``decay``
    in (0, 1); call ``update_ema`` (which also copies the buffers) after each optimizer step."""
    check_value("--ema", decay, DECAY)

    def lerp(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        t = int(n_averaged)
        d = min(decay, (1 + t) / (10 + t))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return AveragedModel(model, multi_avg_fn=lerp, use_buffers=False)


def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """One EMA step of ``ema`` toward ``model``'s weights, then ``model``'s buffers copied into it."""
    ema.update_parameters(model)
    with torch.no_grad():
        for mine, theirs in zip(ema.module.buffers(), model.buffers()):
            mine.copy_(theirs)
