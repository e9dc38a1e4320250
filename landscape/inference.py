"""Batched inference in eval mode: the one loop over a sample set that predicts, scores, sums losses and takes
input gradients. Evaluation, AutoAttack, the audit, the trainer's validation and the surfaces all go through
it, so a model is scored the same way everywhere.

Every entrance runs the model in ``attacks.eval_mode`` (BatchNorm on its running statistics, dropout off) and,
except for input gradients, without autograd (``torch.inference_mode``). Batches are cut in order
(``data.cut_batches``); per-batch sums are accumulated in float64 on the samples' device (no
synchronization per batch). Outputs that are NaN or infinite are refused where a prediction is made
(``finite``: the argmax of NaN is no prediction) and counted where sums are made (the caller decides).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import eval_mode, input_gradient
from .data import cut_batches
from .finite import OutputWatch, nonfinite_rows

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


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
    """Fraction of correctly classified samples (NaN for no samples; non-finite outputs refused:
    ``predict``). One forward pass per batch."""
    return (predict(model, x, batch_size, at) == y).float().mean().item() if len(y) else float("nan")


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, at: str = "") -> torch.Tensor:
    """The number of correctly classified samples, a 0-dim int64 tensor on ``y``'s device (non-finite outputs
    refused: ``predict``), for counts summed over shards. One forward pass per batch."""
    return (predict(model, x, batch_size, at) == y).sum()


def batch_sums(model: nn.Module, batches: Batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, number correct, number of samples whose outputs are not finite) over
    ``batches``, as 0-dim device tensors (the loss sum float64: each batch's float32 sum made float64 and added
    in order); no synchronization. The caller chooses the model's mode and the grad mode (the surface's
    points run inside one of each). One forward pass per batch."""
    loss_sum = count = bad = None
    for xb, yb in batches:
        logits = model(xb)
        ls = F.cross_entropy(logits, yb, reduction="sum").double()
        c = (logits.argmax(1) == yb).sum()
        k = nonfinite_rows(logits).sum()
        loss_sum = ls if loss_sum is None else loss_sum + ls
        count = c if count is None else count + c
        bad = k if bad is None else bad + k
    if loss_sum is None:   # no samples
        zero = torch.zeros((), dtype=torch.int64)
        return torch.zeros((), dtype=torch.float64), zero, zero.clone()
    return loss_sum, count, bad  # type: ignore[return-value]


def loss_sums(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch_sums`` over (x, y) cut into batches of ``batch_size``, in eval mode and without gradients.
    Non-finite outputs are counted, not refused (the third number). One forward pass per batch."""
    with eval_mode(model), torch.inference_mode():
        return batch_sums(model, cut_batches(x, y, batch_size))


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Mean cross-entropy on (x, y) (``loss_sums``' float64 sum over the number of samples; 0 for none; NaN
    when some output is not finite). One forward pass per batch, one synchronization."""
    return float(loss_sums(model, x, y, batch_size)[0]) / max(len(y), 1)


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
                    ) -> dict[str, torch.Tensor]:
    """Per sample, in batches of ``batch_size``: ``zero`` (the cross-entropy's input gradient is all zero or
    not finite: ``attacks.input_gradient``) and ``saturated`` (the float32 softmax of the predicted class is
    exactly 1), (n,) bool tensors. Non-finite outputs are refused (``finite.NonFiniteOutputError``). In eval
    mode. Cost: one forward+backward pass."""
    zero, sat = [], []
    for xb, yb in cut_batches(x, y, batch_size):
        _, logits, dead = input_gradient(model, xb, yb, check_finite=True)
        zero.append(dead)
        sat.append(logits.float().softmax(1).amax(1) == 1.0)
    return {"zero": torch.cat(zero), "saturated": torch.cat(sat)}


__all__ = ["accuracy", "batch_sums", "correct", "input_gradients", "loss_sums", "mean_loss", "predict"]
