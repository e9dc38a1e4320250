"""Numeric precision: one owner for TF32 (the analysis) and autocast (training).

TF32. On Ampere and later GPUs PyTorch may run float32 convolutions (cuDNN: on by default) and matmuls
(off by default) in TF32, a 10-bit mantissa: about 1e-3 relative error per product instead of float32's
~1e-7. That is harmless for training but it puts a floor under every Hessian-vector product, far above the
tolerances the analysis promises (top-k at 1e-3 *relative to the eigenvalue*, residuals checked against
it). So the analysis runs with TF32 off (``full_float32``), and each result records it (the operator's
``describe()["tf32"]``). ``benchmarks/gpu_check.py`` measures the floor with TF32 on and off. On the CPU
these flags do nothing.

Autocast. Training may run its forward passes (the attack's included) under bf16 autocast
(``precision="bf16"``): weights, gradients and the optimizer stay float32; bf16 has float32's exponent
range, so no loss scaling is needed (float16 would need ``torch.amp.GradScaler``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16")  # training: float32 throughout, or bf16 autocast of the forward passes


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


def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else ``ConfigError``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a training step: bf16 autocast on ``device``'s type for "bf16", else none."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
