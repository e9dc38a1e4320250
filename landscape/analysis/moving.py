"""Moving a model's weights along directions: theta0 + a*d1 (+ b*d2), cheaply and reversibly.

The model's parameters are pointed (``param.data``) at views of one flat working buffer per (device, dtype);
each move is one ``torch.add(theta0, d1, alpha=a, out=work)`` (plus one ``add_`` for d2) from a saved copy
of theta0, never cumulatively. The original parameter tensors are never written to and are put back on
exit, so the weights afterwards are bit-identical (same storage, same values). Directions may also move
buffers (an interpolation's BatchNorm running statistics).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import LandscapeError


class WeightMover:
    """Context manager pointing the model's parameters at theta0 + a*d1 + b*d2 (one flat buffer per dtype).

    Directions may also hold entries for buffers (an interpolation's BatchNorm running statistics): each such
    buffer is set to b0 + a*d1[b] (+ b*d2[b]), computed in float64 from a saved b0 (running_var clamped at 0,
    integer buffers rounded), and put back on exit."""

    def __init__(self, model: nn.Module, directions: Sequence[Mapping[str, torch.Tensor]]):
        params = list(model.named_parameters())
        names = {n for n, _ in params}
        buffers = dict(model.named_buffers())
        for k, d in enumerate(directions):
            missing = [n for n in names if n not in d]
            extra = [n for n in d if n not in names and n not in buffers]
            if missing or extra:
                what = f"lacks parameter {missing[0]}" if missing else f"has an unknown entry {extra[0]}"
                raise LandscapeError(f"direction {k + 1} does not fit the model: it {what}")
            for n, p in [*params, *((b, t) for b, t in buffers.items() if b in d)]:
                if tuple(d[n].shape) != tuple(p.shape):
                    raise LandscapeError(f"direction {k + 1} has shape {tuple(d[n].shape)} for {n}, the model "
                                         f"{tuple(p.shape)}")
        self.buffers: list[tuple[str, torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []
        with torch.no_grad():
            for n, b in buffers.items():
                if not any(n in d for d in directions):
                    continue
                base = b.detach().double().clone()
                ds = [d[n].detach().to(device=b.device, dtype=torch.float64) if n in d else torch.zeros_like(base)
                      for d in directions]
                if not all(bool(torch.isfinite(v).all()) for v in ds):
                    raise LandscapeError(f"a direction holds NaN or infinite entries (buffer {n})")
                self.buffers.append((n, b, b.detach().clone(), ds))
        groups: dict[tuple, list[tuple[str, nn.Parameter]]] = {}
        for n, p in params:
            groups.setdefault((p.device, p.dtype), []).append((n, p))
        self.groups = []
        self.swaps: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor, bool]] = []
        with torch.no_grad():
            for (dev, dt), members in groups.items():
                theta0 = torch.cat([p.detach().reshape(-1) for _, p in members])  # a new tensor
                dirs = [torch.cat([d[n].detach().to(device=dev, dtype=dt).reshape(-1) for n, _ in members])
                        for d in directions]
                if not all(bool(torch.isfinite(v).all()) for v in dirs):
                    raise LandscapeError("a direction holds NaN or infinite entries")
                work = theta0.clone()
                off = 0
                for _, p in members:
                    k = p.numel()
                    self.swaps.append((p, p.data, work[off:off + k].view(p.shape), p.requires_grad))
                    off += k
                self.groups.append((theta0, dirs, work))

    def __enter__(self) -> "WeightMover":
        for p, _, view, _ in self.swaps:
            p.data = view
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc) -> None:
        for p, original, _, rg in self.swaps:
            p.data = original
            p.requires_grad_(rg)
        with torch.no_grad():
            for _, b, original, _ in self.buffers:
                b.copy_(original)

    def move(self, coords: Sequence[float]) -> None:
        """Set the weights to theta0 + sum_k coords[k] * d_k (from the saved theta0, not cumulatively).
        No autograd mode needed: none of these tensors requires grad."""
        for theta0, dirs, work in self.groups:
            torch.add(theta0, dirs[0], alpha=coords[0], out=work)
            for c, d in zip(coords[1:], dirs[1:]):
                work.add_(d, alpha=c)
        for name, b, b0, dirs in self.buffers:
            v = b0.double()
            for c, d in zip(coords, dirs):
                v = v + c * d
            if name.endswith("running_var"):
                v = v.clamp_min(0.0)  # extrapolating a variance past an endpoint can go negative
            b.copy_(v if b.is_floating_point() else v.round())


__all__ = ["WeightMover"]
