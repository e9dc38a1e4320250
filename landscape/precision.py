"""Numeric precision: one owner for TF32 (the analysis) and autocast (training).

TF32. On Ampere and later GPUs PyTorch may run float32 convolutions (cuDNN: on by default) and matmuls
(off by default) in TF32, a 10-bit mantissa: about 1e-3 relative error per product instead of float32's
~1e-7. That is harmless for training but it puts a floor under every Hessian-vector product, far above the
tolerances the analysis promises (top-k at 1e-3 *relative to the eigenvalue*, residuals checked against
it). So the analysis runs with TF32 off (``full_float32``), and each result records it (the operator's
``describe()["tf32"]``). ``benchmarks/gpu_check.py`` measures the floor with TF32 on and off. On the CPU
these flags do nothing.

Mixed precision (training). ``amp`` is "off" (float32), "bf16" or "fp16": the training step's forward
passes, the attack's included, run under autocast; weights, gradients, the optimizer, validation and all
analysis stay float32. bf16 has float32's exponent range and needs no loss scaling. fp16 does: the weight
gradient goes through ``torch.amp.GradScaler``, and the attack scales each sample's logit gradient to
O(1) before it flows back through the fp16 network (``landscape.attacks._logits``, ``fp16_safe``): every
PGD step uses only the sign (Linf) or direction (L2) of each sample's gradient, which that leaves alone,
while unscaled fp16 backward passes flush the small gradients of confidently classified samples to zero
(those samples would never be attacked) and one scale for the whole batch overflows on the others. "auto":
bf16 on a CUDA device that supports it, else off.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import ConfigError

AMP_MODES = ("off", "bf16", "fp16")  # training's autocast; "auto" resolves to one of them (resolve_amp)


@contextlib.contextmanager
def full_float32(tf32: bool = False) -> Iterator[None]:
    """Inside the block, CUDA float32 matmuls and cuDNN convolutions use TF32 only if ``tf32``; the
    previous flags are restored after (process-wide flags: PyTorch has no per-thread switch)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = bool(tf32)
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def resolve_amp(amp: str, device: torch.device | str) -> str:
    """``amp`` checked, with "auto" resolved for ``device``: bf16 on a CUDA device that supports it, else off."""
    if amp == "auto":
        dev = torch.device(device)
        return "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if amp not in AMP_MODES:
        raise ConfigError(f"unknown --amp {amp!r}; choose from auto, {', '.join(AMP_MODES)}")
    return amp


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context of a training step on ``device`` for a resolved ``amp`` (none for "off")."""
    if resolve_amp(amp, device) == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device | str, amp: str) -> torch.amp.GradScaler:
    """The loss scaler of a training run: active for fp16 only (disabled, it changes no number)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")
