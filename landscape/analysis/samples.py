"""The sample set an analysis is taken over, made once: its batches on a device, this process's shard under
``torchrun``, and for an adversarial loss the PGD examples of one ``AttackSpec`` at the model's current
weights, then held fixed. ``HessianOperator`` takes one (or raw data, from which it makes one), so that the
attack is run, validated and recorded in one place and several operators (per layer, clean and adversarial
at the same points) can share the same examples without attacking again.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..attack_spec import AttackSpec
from ..data import Dataset, cut_batches
from ..distributed import World, shard_bounds, world
from ..errors import ConfigError, DataError
from ..inputs import check_batch
from ..precision import full_float32

Batch = tuple[torch.Tensor, torch.Tensor]


def _refuse_nonfinite_outputs(model: nn.Module, batches: list, bn: str, tf32: bool, w: World) -> None:
    """A model whose outputs on the samples are not finite has no Hessian or surface to speak of: refuse it
    in one line (``finite.NonFiniteOutputError``) before any work. (Adversarial examples are checked by the
    attack, at every PGD iterate.) Cost: one forward pass over the samples; under torchrun the counts are
    summed over ranks, so that every rank refuses alike."""
    from ..attacks import eval_mode
    from ..distributed import all_reduce_sum
    from ..finite import nonfinite_rows, refuse_nonfinite
    if not batches:
        return
    counts = torch.zeros(2, dtype=torch.float64, device=batches[0][0].device)
    with eval_mode(model, "batch" if bn == "batch" else "eval", grad=False), full_float32(tf32), torch.no_grad():
        for x, _ in batches:
            counts[0] += nonfinite_rows(model(x)).sum()
            counts[1] += len(x)
    if w.active:
        all_reduce_sum(counts)
    refuse_nonfinite(int(counts[0]), int(counts[1]), "at the analysis' samples", "eigenvalue, trace or surface point")


def _as_batches(data: Any, batch_size: int | None, device: torch.device) -> list[Batch]:
    """Normalize ``data`` ((x, y), a Dataset, or an iterable of (x, y) batches) to a list of batches on device.

    A pair or a Dataset is cut into ``batch_size`` chunks (one batch when None); an iterable keeps its own
    batches.
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if isinstance(data, Dataset):
        data = data.tensors()
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise DataError(f"{len(x)} inputs but {len(y)} labels")
        batches = cut_batches(x, y, batch_size)
    else:
        try:
            batches = [tuple(b) for b in data]
        except TypeError as e:
            raise DataError("data must be an (inputs, labels) pair of tensors, a Dataset, or an iterable of "
                            f"(inputs, labels) batches; got {type(data).__name__}") from e
        if any(len(b) != 2 for b in batches):
            raise DataError("every batch must be an (inputs, labels) pair")
    batches = [(x.to(device), y.to(device)) for x, y in batches if len(x)]
    if not batches:
        raise DataError("the Hessian needs at least one sample; got an empty sample set")
    return batches


@dataclass
class SampleSet:
    """``batches`` (this process's, on the device; adversarial examples when ``attack`` is set),
    ``num_samples`` over all processes, ``shard`` this process's [lo, hi) of them, ``batch_size`` (None: one
    batch), and the attack's wall time. Make one with ``SampleSet.make``."""
    batches: list[Batch]
    num_samples: int
    shard: tuple[int, int]
    world: World
    batch_size: int | None
    attack: AttackSpec | None
    seed: int
    attack_seconds: float = 0.0

    def tensors(self) -> Batch:
        """This process's samples, concatenated."""
        return torch.cat([x for x, _ in self.batches]), torch.cat([y for _, y in self.batches])

    @classmethod
    def make(cls, model: nn.Module, data: Any, attack: AttackSpec | None = None, *, batch_size: int | None = None,
             seed: int = 0, device: str | torch.device | None = None, bn: str = "running",
             distributed: bool = True, tf32: bool = False, what: str = "the data") -> "SampleSet":
        """Batches of ``data`` ((x, y), a Dataset, or an iterable of batches) on ``device`` (default: the
        model's), checked against the model (``inputs.check_batch``, before any work); under ``torchrun``
        (unless ``distributed=False``) this process's contiguous shard, cut on whole attack batches (and whole
        ``batch_size`` batches for ``bn="batch"``); with ``attack``, every sample replaced by its PGD example,
        made in fixed attack batches seeded by their global position (``AttackSpec.examples``), so that the
        examples depend neither on how the batches are cut nor on the number of processes.
        Cost: one forward of one sample per batch, plus the attack (steps forward+backward passes per sample)."""
        if attack is not None and not isinstance(attack, AttackSpec):
            raise ConfigError(f"attack must be an AttackSpec, got {type(attack).__name__}")
        if device is None:
            first = next((p for p in model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        batches = _as_batches(data, batch_size, torch.device(device))
        with full_float32(tf32):   # named before any work (the attack, an HVP); one forward of one sample
            for i, (bx, by) in enumerate(batches):
                check_batch(model, bx, by, what + (f" (batch {i + 1})" if len(batches) > 1 else ""),
                            unit_interval=attack is not None)
        n = int(sum(len(x) for x, _ in batches))
        w = world() if distributed else World()
        shard = (0, n)
        if w.active:
            unit = attack.batch_size if attack is not None else 1
            if bn == "batch":
                if batch_size is None:
                    raise ConfigError("bn='batch' under torchrun needs batch_size: BatchNorm batches must not be "
                                      "split between ranks")
                unit = math.lcm(unit, batch_size)
            lo, hi = shard_bounds(n, w, unit)
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            batches, shard = cut_batches(x[lo:hi], y[lo:hi], batch_size), (lo, hi)
        seconds = 0.0
        if attack is not None and batches:
            t0 = time.perf_counter()
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            with full_float32(tf32):
                x_adv = attack.examples(model, x, y, seed, start=shard[0])
            sizes = [len(b[0]) for b in batches]
            batches = list(zip(torch.split(x_adv, sizes), torch.split(y, sizes)))
            seconds = time.perf_counter() - t0
        else:
            _refuse_nonfinite_outputs(model, batches, bn, tf32, w)
        return cls(batches, n, shard, w, batch_size, attack, int(seed), seconds)


__all__ = ["SampleSet"]
