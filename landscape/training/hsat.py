"""H-SAT: the Hessian-based curriculum (shared/SAT_METHOD.md, method 3).

psi_H(eps) = lambda_max(eps) / lambda_max(eps_max), the sharpness of the adversarial loss normalized by
its value at the full budget. Every ``hsat_every`` iterations (default: at the start of each epoch) we
estimate lambda_max on a fixed probe batch (a few Lanczos steps, warm-started from the last top
eigenvector) and bisect for the largest eps_t <= eps_max with psi_H(eps_t) <= lam_t; training then uses
eps_t until the next calibration. Bisection assumes psi_H grows with eps, which holds for the models
we measured but is not guaranteed; every evaluated (eps, lambda_max) pair is logged, so a non-monotone
calibration is visible in ``hsat.json``.
Cost of one calibration: (1 + hsat_bisect) x (PGD on the probe + hsat_iters HVPs).

``normalize="affine"`` uses psi_H(eps) = (lambda_max(eps) - lambda_max(0)) / (lambda_max(eps_max) -
lambda_max(0)) instead (one more estimate per calibration, of the clean loss). Why: in our Fashion-MNIST
runs (docs/reproduction.md) the curvature near eps = 0 was already 55-70% of the curvature at eps_max, so
the ratio stays above lam_t for any eps > 0 during most of the ramp; eps_t is then 0 until lam_t nears 1
and jumps to eps_max at once, an abrupt switch to full-budget AT (which made cnn-small collapse there).
The affine form maps [0, eps_max] onto [0, 1] as the metric intends.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..attack_spec import AttackSpec
from ..data import Dataset
from .sharpness import adversarial_sharpness, tracking_attack


class HSatCalibrator:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, attack: AttackSpec, every: int | None, iters: int,
                 bisect: int, seed: int, normalize: str = "ratio"):
        self.x, self.y = x, y
        self.normalize = normalize
        self.attack, self.eps_max = attack, attack.eps      # the attack at eps_max; eps_t scales its step
        self.every, self.iters, self.bisect, self.seed = every, iters, bisect, seed

    @classmethod
    def for_config(cls, cfg, train: Dataset, device: torch.device) -> "HSatCalibrator":
        x, y = train.tensors(min(cfg.hsat_probe, len(train)), device)
        return cls(x, y, tracking_attack(cfg), cfg.hsat_every, cfg.hsat_iters, cfg.hsat_bisect, cfg.seed,
                   cfg.hsat_normalize)

    def _sharpness(self, model: nn.Module, eps: float, v0: torch.Tensor | None):
        at = self.attack.replace(eps=eps, step_size=self.attack.alpha * eps / self.eps_max) if eps > 0 else None
        return adversarial_sharpness(model, self.x, self.y, at, self.seed, max_hvps=self.iters, tol=1e-3, v0=v0)

    def calibrate(self, model: nn.Module, lam: float, v0: torch.Tensor | None = None) -> dict:
        """eps_t for curriculum level ``lam``: the largest eps in [0, eps_max] (to bisection precision)
        whose normalized sharpness is at most ``lam``. Returns eps_t, the estimates and the new warm start."""
        t0 = time.perf_counter()
        top = self._sharpness(model, self.eps_max, v0)
        evaluations = [(self.eps_max, top.value)]
        hvps = top.hvps
        if lam >= 1.0:
            eps_t = self.eps_max
        else:
            floor = 0.0
            if self.normalize == "affine":
                base = self._sharpness(model, 0.0, top.vector)
                evaluations.append((0.0, base.value))
                hvps += base.hvps
                floor = base.value
            if top.value - floor <= 0:  # no curvature growth to normalize by: fall back to the eps ramp
                eps_t = lam * self.eps_max
            else:
                lo, hi = 0.0, self.eps_max
                for _ in range(self.bisect):
                    mid = (lo + hi) / 2
                    s = self._sharpness(model, mid, top.vector)
                    evaluations.append((mid, s.value))
                    hvps += s.hvps
                    lo, hi = (mid, hi) if (s.value - floor) / (top.value - floor) <= lam else (lo, mid)
                eps_t = lo
        return {"eps_t": eps_t, "lam": lam, "lambda_max": top.value, "evaluations": evaluations, "hvps": hvps,
                "seconds": time.perf_counter() - t0, "vector": top.vector}

    def maybe_calibrate(self, trainer, force: bool = False) -> dict:
        """Calibrate when due (``force`` at an epoch start, or every ``hsat_every`` iterations); store
        eps_t, the warm start and the log in ``trainer.state`` (saved in last.pt) and return the metrics."""
        due = force or (self.every is not None and trainer.step % self.every == 0)
        if not due:
            return {}
        lam = trainer._lam(trainer.step)
        res = self.calibrate(trainer.model, lam, trainer.state.get("hsat_vector"))
        trainer.state["hsat_eps"] = res["eps_t"]
        trainer.state["hsat_vector"] = res["vector"]
        log = trainer.state.setdefault("hsat_log", [])
        log.append({"step": trainer.step, "epoch": trainer.epoch + 1, **{k: v for k, v in res.items() if k != "vector"}})
        return {"hsat_eps": res["eps_t"], "hsat_lambda_max": res["lambda_max"], "hsat_hvps": res["hvps"],
                "hsat_seconds": res["seconds"]}
