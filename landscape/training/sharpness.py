"""Sharpness of the adversarial loss during training: the top Hessian eigenvalue on a fixed probe set.

Shared by H-SAT's calibration and ``--track-hessian-every``. Uses the analysis engine (Lanczos on a
``HessianOperator`` whose adversarial examples are made by seeded PGD at the current weights), so every
estimate is reproducible and draws nothing from global RNG state.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..analysis.hessian import HessianOperator
from ..attack_spec import AttackSpec
from ..analysis.spectrum import top_eigenvalues
from ..data import Dataset


@dataclass
class Sharpness:
    value: float
    hvps: int
    converged: bool
    vector: torch.Tensor | None
    seconds: float


def adversarial_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec | None,
                          seed: int, max_hvps: int, tol: float = 1e-2, v0: torch.Tensor | None = None) -> Sharpness:
    """lambda_max of the Hessian (w.r.t. the weights) of the mean CE at the PGD examples of ``attack`` (None or
    eps 0: the clean loss).

    Cost: ``attack.steps`` forward+backward passes on the probe (none for the clean loss) plus at most
    ``max_hvps`` HVPs; ``v0`` warm-starts Lanczos (e.g. the previous estimate's eigenvector).
    """
    t0 = time.perf_counter()
    adversarial = attack is not None and attack.eps > 0
    op = HessianOperator(model, (x, y), loss="adversarial" if adversarial else "clean",
                         attack=attack if adversarial else None, seed=seed, distributed=False)
    res = top_eigenvalues(op, k=1, tol=tol, max_hvps=max_hvps, seed=seed, return_vectors=True, v0=v0)
    op.release_graph()
    vec = res.vectors[0].detach().float() if res.vectors is not None else None
    return Sharpness(float(res.values[0]), int(res.hvps), bool(res.converged[0]), vec,
                     time.perf_counter() - t0)


def tracking_attack(cfg) -> AttackSpec:
    """The attack of sharpness tracking and H-SAT: the training eps, steps and step size, with the analysis'
    attack batch size (the probe is attacked as one sample set, not in training batches)."""
    return AttackSpec(eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size)


class SharpnessTracker:
    """``--track-hessian-every N``: top eigenvalue of the adversarial loss at the training eps on the first
    ``track_probe`` validation samples, logged to metrics.csv as ``sharpness``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, seed: int, max_hvps: int = 60):
        self.x, self.y, self.attack, self.seed, self.max_hvps = x, y, attack, seed, max_hvps

    @classmethod
    def for_config(cls, cfg, val: Dataset, device: torch.device) -> "SharpnessTracker":
        x, y = val.tensors(min(cfg.track_probe, len(val)), device)
        return cls(x, y, tracking_attack(cfg), cfg.seed)

    def measure(self, model: nn.Module) -> dict:
        s = adversarial_sharpness(model, self.x, self.y, self.attack, self.seed, self.max_hvps)
        return {"sharpness": s.value, "sharpness_hvps": s.hvps, "sharpness_converged": s.converged,
                "sharpness_seconds": s.seconds}
