"""Checks at the entrance of the public functions that take a model and a batch (``evaluate``,
``HessianOperator``): a mistake in the data is named in one line (``DataError``) before any work, instead of
surfacing as a deep ``RuntimeError`` of torch's, or not at all (inputs scaled to [0, 255] give accuracies
without complaint).

What is checked: ``x`` a floating tensor with a batch dimension, finite, of the model's dtype and within
[0, 1] (the attacks' box; ``unit_interval=False`` is the way out for data on another scale, where no attack
runs); ``y`` integer class indices, one per input, in range for the model's outputs; and that the model takes
``x``'s shape (one forward of one sample). Cost: a pass over x and y, and one forward of a single sample.
"""
from __future__ import annotations

import torch
from torch import nn

from .attacks import eval_mode
from .errors import DataError


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's floating parameters (None when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str = "the data",
                unit_interval: bool = True) -> None:
    """Raise ``DataError`` (one line, naming ``what``) unless ``(x, y)`` is a batch ``model`` can be evaluated
    on: see the module doc. Cost: O(len(x)) plus one forward of one sample."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError(f"{what}: inputs and labels must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() < 2:
        raise DataError(f"{what}: inputs need a batch dimension first, got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise DataError(f"{what}: no samples")
    if y.dim() != 1 or len(y) != len(x):
        raise DataError(f"{what}: {len(x)} inputs but labels of shape {tuple(y.shape)}; one class index per input")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integer class indices (int64), got {y.dtype}")
    if not x.is_floating_point():
        raise DataError(f"{what}: inputs must be floating point in [0, 1], got {x.dtype}")
    dt = model_dtype(model)
    if dt is not None and x.dtype != dt:
        raise DataError(f"{what}: inputs are {x.dtype} but the model's weights are {dt}; convert one to the other "
                        f"(x.to({dt}) or model.to({x.dtype}))")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{what}: the inputs hold NaN or infinite values")
    if unit_interval and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(f"{what}: inputs lie in [{float(x.min()):.4g}, {float(x.max()):.4g}], not [0, 1] (the "
                        "attacks' box); scale them to [0, 1] (or normalize inside the model)")
    try:
        with eval_mode(model), torch.no_grad():   # every submodule's mode comes back as it was
            out = model(x[:1])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise DataError(f"{what}: the model cannot take inputs of shape {tuple(x.shape[1:])} ({first})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        return   # not a classifier's logits: the label range cannot be checked here
    classes = out.shape[1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise DataError(f"{what}: labels lie in [{lo}, {hi}] but the model has {classes} outputs (classes 0 to "
                        f"{classes - 1})")


__all__ = ["check_batch", "model_dtype"]
