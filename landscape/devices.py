"""Which device a job runs on: one rule for the console scripts' ``--device`` and the API's ``device=``."""
from __future__ import annotations

import torch

from .errors import LandscapeError

DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA when available)"


def resolve_device(name: "str | torch.device | None" = "auto") -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else the CPU; any other name as ``torch.device`` reads it.
    An unknown name, or CUDA on a machine without it, is a one-line ``LandscapeError`` (not torch's error
    deep inside the first ``.to``)."""
    if isinstance(name, torch.device):
        dev = name
    elif name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError) as e:
            raise LandscapeError(f"unknown device {name!r} (choose {DEVICE_HELP})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError(f"device {str(dev)!r} was asked for but no CUDA device is available")
    return dev
