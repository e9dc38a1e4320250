"""Short SHA-256 digests of tensors: the one place that hashes weights, data or directions (so that a resume
can refuse a run whose inputs changed). Imports only torch."""
from __future__ import annotations

import hashlib
from typing import Iterable

import torch


def tensor_digest(items: Iterable[tuple[str, torch.Tensor]]) -> str:
    """16 hex digits of SHA-256 over each (label, tensor): the label (when not empty), shape, dtype and raw
    bytes, in the order given. Cost: one pass over the bytes (a CPU copy of each tensor)."""
    h = hashlib.sha256()
    for label, t in items:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(((f"{label}:" if label else "") + f"{tuple(t.shape)}:{t.dtype};").encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
