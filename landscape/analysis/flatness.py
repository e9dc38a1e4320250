"""Scalar flatness of a loss at the current weights that depend on no single plane: the average and the
worst-case loss increase within a radius measured in the filter-normalized scale.

Scale. With ``normalization="filter"`` a radius ``r`` means: every output filter w_f of a conv weight (every
row of a linear weight) moves by at most ``r * ||w_f||`` (Li et al. 2018's filter normalization, which makes
radii comparable across models whose weights differ in scale); ``"layer"``: every parameter tensor W by at
most ``r * ||W||`` (the layer-wise relative budget of Wu et al. 2020's adversarial weight perturbation);
``"none"``: plain Euclidean (a random direction is then N(0, I) and the ball ``||delta|| <= r``). Parameters
with one dimension (biases, BatchNorm) stay fixed unless ``include_bn``, as for ``random_directions``.
Call the set B_r.

* ``average_loss_increase``  S_avg(r) = 1/(2R) sum_i sum_{s=+-1} [L(theta + s r d_i) - L(theta)], with d_i the R
  random directions of ``random_directions(model, R, normalization, include_bn, seed)`` (each on the boundary
  of B_1). The pair +-d_i cancels the first-order term: for a quadratic loss with Hessian H it equals
  r^2/(2R) sum_i d_i^T H d_i exactly, whose expectation over filter-normalized directions is
  r^2/2 sum_f ||w_f||^2 tr(H_ff) / n_f (n_f: entries of filter f); with ``"none"``, r^2 tr(H)/2.
  The average-case flatness of Keskar et al. 2017 (loss increase over a neighbourhood) in the scale of
  Li et al. 2018; Stutz, Hein & Schiele 2021 measure the same for the robust loss.
  Cost: 1 + 2 R len(radii) forward passes over the samples.
* ``worst_case_loss_increase``  S_max(r) = max_{delta in B_r} L(theta + delta) - L(theta), estimated from below
  by projected gradient ascent on the weights: start at r d (a random boundary point), then ``steps`` times
  delta_f <- Proj_{B_r}(delta_f + alpha r ||w_f|| g_f / ||g_f||) per filter (g: the loss gradient at
  theta + delta; normalized per filter as PGD-L2 normalizes per sample), keeping the largest loss seen. The
  value is the loss at a point of B_r, so a lower bound of the true maximum. For a quadratic at its minimum
  with a filter-block-diagonal H the maximum is r^2/2 sum_f ||w_f||^2 lambda_max(H_ff) (with ``"none"``:
  r^2 lambda_max(H)/2) and the ascent is a projected power iteration that reaches it.
  The worst-case (epsilon-)sharpness of Keskar et al. 2017, the m-sharpness/SAM ascent of Foret et al. 2021
  in ASAM's normalized ball (Kwon et al. 2021), the weight perturbation of AWP (Wu et al. 2020).
  Cost: len(radii) * restarts * (steps + 1) forward+backward passes over the samples, plus one forward.

Outputs that are NaN or infinite (for any sample, at theta or at any perturbed point) are refused
(``finite.NonFiniteOutputError``, one line counting the samples and saying where): no loss increase is
computed from them.

Loss: ``"clean"``, or ``"adversarial"`` on a FIXED set of PGD examples made once at theta (the very examples
``loss_surface(adv_mode="fixed")`` and ``HessianOperator`` make with the same ``AttackSpec`` and seed), so
that the change measured is the change of the function, not of the attack. The model is evaluated in eval
mode through ``torch.func.functional_call``: its weights are never written to.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._version import __version__
from ..attack_spec import AttackSpec
from ..attacks import eval_mode
from ..data import cut_batches
from ..errors import ConfigError, LandscapeError
from ..finite import OutputWatch
from ..precision import full_float32
from .directions import random_directions

LOSSES = ("clean", "adversarial")
NORMALIZATIONS = ("filter", "layer", "none")  # as random_directions takes them
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default criterion: cross-entropy summed over the batch."""
    return F.cross_entropy(logits, y, reduction="sum")


@dataclass
class FlatnessResult:
    """Loss increase per radius (``increase[j]`` at ``radii[j]``) over ``base_loss``.

    ``measure`` is "average" (then ``per_direction[j][i]`` is direction i's +- mean increase and ``stderr[j]``
    the standard error over directions) or "worst" (then ``per_restart[j]`` the best increase of each restart).
    """
    measure: str
    loss: str
    radii: list[float]
    increase: list[float]
    base_loss: float
    stderr: list[float] | None = None
    per_direction: list[list[float]] | None = None
    per_restart: list[list[float]] | None = None
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready (kind "flatness"): settings, seconds, then the values."""
        return {"kind": "flatness", "landscape_version": __version__, "settings": self.settings,
                "seconds": self.seconds, "measure": self.measure, "loss": self.loss, "radii": self.radii,
                "base_loss": self.base_loss, "increase": self.increase, "stderr": self.stderr,
                "per_direction": self.per_direction, "per_restart": self.per_restart}

    def to_frame(self):
        """One row per radius: radius, increase (and stderr for the average)."""
        import pandas as pd
        return pd.DataFrame({"radius": self.radii, "increase": self.increase,
                             **({"stderr": self.stderr} if self.stderr is not None else {})})


# --- shared parts -------------------------------------------------------------------------------------

def _check_common(loss: str, attack: AttackSpec | None, radii: Sequence[float], normalization: str) -> list[float]:
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    if loss == "adversarial" and attack is None:
        raise ConfigError("the adversarial loss needs an attack (an AttackSpec)")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
    rs = [float(r) for r in ([radii] if isinstance(radii, (int, float)) else radii)]
    if not rs or not all(math.isfinite(r) and r > 0 for r in rs):
        raise ConfigError(f"radii must be positive numbers, got {radii!r}")
    return rs


def _inputs(model: nn.Module, data: Any, loss: str, attack: AttackSpec | None, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(inputs the loss is taken on, labels, attack seconds): clean data or PGD examples made once at theta."""
    if hasattr(data, "tensors") and callable(data.tensors):
        data = data.tensors()
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise LandscapeError("data must be (inputs, labels) tensors or a landscape Dataset")
    x, y = data
    if len(x) != len(y) or len(x) == 0:
        raise LandscapeError(f"data hold {len(x)} inputs and {len(y)} labels; need the same, non-zero number")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    if loss == "adversarial" and attack is not None and attack.active:
        t0 = time.perf_counter()
        return attack.examples(model, x, y, seed), y, time.perf_counter() - t0
    return x, y, 0.0


class _Loss:
    """Mean loss of ``model`` at theta + delta on fixed inputs (functional_call; the model is not written)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: Criterion, batch_size: int):
        self.model, self.criterion = model, criterion
        self.batches, self.n = cut_batches(x, y, batch_size), len(x)
        self.params = {n: p.detach() for n, p in model.named_parameters()}
        self.forwards = self.backwards = 0

    def _total(self, weights: dict[str, torch.Tensor], at: str) -> torch.Tensor:
        """The mean loss; outputs that are NaN or infinite for any sample are refused, saying ``at`` which
        weights (``finite``; one synchronization, which the caller's float() makes anyway)."""
        total, watch = None, OutputWatch(at, "loss increase")
        for xb, yb in self.batches:
            out = self.criterion(watch(torch.func.functional_call(self.model, weights, (xb,))), yb).double()
            total = out if total is None else total + out
        self.forwards += 1
        watch.check()
        return total / self.n  # type: ignore[operator]

    def value(self, delta: dict[str, torch.Tensor] | None = None, at: str = "") -> float:
        w = self.params if delta is None else {n: p + delta[n] if n in delta else p for n, p in self.params.items()}
        with torch.no_grad():
            return float(self._total(w, at))

    def value_and_grad(self, delta: dict[str, torch.Tensor], at: str = "") -> tuple[float, dict[str, torch.Tensor]]:
        leaves = {n: d.detach().clone().requires_grad_(True) for n, d in delta.items()}
        w = {n: p + leaves[n] if n in leaves else p for n, p in self.params.items()}
        loss = self._total(w, at)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        self.backwards += 1
        return float(loss.detach()), {n: (torch.zeros_like(d) if g is None else g)
                                      for (n, d), g in zip(leaves.items(), grads)}


def _moved(model: nn.Module, include_bn: bool) -> list[str]:
    """Names of the parameters that move (those ``random_directions`` gives a non-zero direction)."""
    names = [n for n, p in model.named_parameters() if p.dim() > 1 or include_bn]
    if not names:
        raise LandscapeError("the model has no parameter to perturb (only vectors, and include_bn is off)")
    return names


def _scale(w: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-entry radius of B_1 for parameter ``w``: ||w_f|| per filter/row, ||w|| per tensor, or 1."""
    if normalization == "none":
        return torch.ones((), dtype=w.dtype, device=w.device)
    if normalization == "filter" and w.dim() > 1:
        return w.reshape(w.shape[0], -1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
    return w.norm()


def _group_norms(t: torch.Tensor, normalization: str) -> torch.Tensor:
    """||t_f|| per filter (``filter``, weights of 2+ dims), else the norm of the whole tensor, broadcastable."""
    if normalization == "filter" and t.dim() > 1:
        return t.reshape(t.shape[0], -1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))
    return t.norm()


def _settings(measure: str, loss: str, attack: AttackSpec | None, normalization: str, include_bn: bool, seed: int,
              n: int, batch_size: int, criterion: Criterion, **extra: Any) -> dict:
    return {"measure": measure, "loss": loss, "attack": attack.to_dict() if (attack and loss == "adversarial")
            else None, "adv_mode": "fixed" if loss == "adversarial" else None, "normalization": normalization,
            "include_bn": bool(include_bn), "seed": int(seed), "samples": int(n), "batch_size": int(batch_size),
            "criterion": getattr(criterion, "__name__", "callable"), **extra}


# --- the two measures ---------------------------------------------------------------------------------

def average_loss_increase(model: nn.Module, data: Any, radii: Sequence[float] | float = (0.1,), directions: int = 8,
                      loss: str = "clean", attack: AttackSpec | None = None, normalization: str = "filter",
                      include_bn: bool = False, seed: int = 0, batch_size: int = 512,
                      criterion: Criterion = summed_cross_entropy, tf32: bool = False) -> FlatnessResult:
    """S_avg(r): the mean loss increase at theta +- r d_i over ``directions`` random directions (module doc).

    ``criterion(outputs, labels)`` returns the loss SUMMED over a batch (default cross-entropy); the loss is
    its mean over the samples. Cost: 1 + 2 * directions * len(radii) forward passes (+ one PGD attack).
    """
    rs = _check_common(loss, attack, radii, normalization)
    if directions < 1:
        raise ConfigError(f"directions must be at least 1, got {directions}")
    with full_float32(tf32):   # TF32 would put a ~1e-3 relative floor under every loss
        t0 = time.perf_counter()
        x, y, _ = _inputs(model, data, loss, attack, seed)
        with eval_mode(model):
            f = _Loss(model, x, y, criterion, batch_size)
            base = f.value()
            dirs = random_directions(model, directions, normalization, include_bn, seed)
            per: list[list[float]] = []
            for r in rs:
                row = []
                for i, d in enumerate(dirs):
                    up = f.value({n: r * t for n, t in d.items()}, f"at theta + {r:g} d_{i}")
                    down = f.value({n: -r * t for n, t in d.items()}, f"at theta - {r:g} d_{i}")
                    row.append(0.5 * (up + down) - base)
                per.append(row)
        t = torch.tensor(per, dtype=torch.float64)
        stderr = ((t.std(dim=1, unbiased=True) / math.sqrt(directions)).tolist() if directions > 1
                  else [float("nan")] * len(rs))
        settings = _settings("average", loss, attack, normalization, include_bn, seed, len(x), batch_size, criterion,
                             radii=rs, directions=int(directions), forwards=f.forwards, tf32=bool(tf32))
        return FlatnessResult("average", loss, rs, t.mean(dim=1).tolist(), base, stderr, per, None, settings,
                              time.perf_counter() - t0)


def worst_case_loss_increase(model: nn.Module, data: Any, radii: Sequence[float] | float = (0.1,), steps: int = 5,
                         step_fraction: float = 1.0, restarts: int = 1, loss: str = "clean",
                         attack: AttackSpec | None = None, normalization: str = "filter", include_bn: bool = False,
                         seed: int = 0, batch_size: int = 512,
                         criterion: Criterion = summed_cross_entropy, tf32: bool = False) -> FlatnessResult:
    """S_max(r): the largest loss increase found in B_r by ``steps`` projected gradient-ascent steps on the
    weights of size ``step_fraction * r`` (in the ball's scale), from ``restarts`` random boundary points
    (module doc). A lower bound of the true maximum. Cost: len(radii) * restarts * (steps + 1)
    forward+backward passes + one forward (+ one PGD attack for the adversarial loss).
    """
    rs = _check_common(loss, attack, radii, normalization)
    if steps < 0 or restarts < 1:
        raise ConfigError(f"steps must be >= 0 and restarts >= 1, got {steps} and {restarts}")
    if not (math.isfinite(step_fraction) and step_fraction > 0):
        raise ConfigError(f"step_fraction must be positive, got {step_fraction}")
    with full_float32(tf32):   # TF32 would put a ~1e-3 relative floor under every loss
        t0 = time.perf_counter()
        x, y, _ = _inputs(model, data, loss, attack, seed)
        names = _moved(model, include_bn)
        params = dict(model.named_parameters())
        scale = {n: _scale(params[n].detach(), normalization) for n in names}
        starts = random_directions(model, restarts, normalization, include_bn, seed)

        def project(delta: dict[str, torch.Tensor], r: float) -> dict[str, torch.Tensor]:
            if normalization == "none":  # one Euclidean ball over every moved entry
                tot = math.sqrt(sum(float(d.pow(2).sum()) for d in delta.values()))
                c = min(1.0, r / tot) if tot > 0 else 1.0
                return {n: d * c for n, d in delta.items()}
            return {n: d * torch.clamp(r * scale[n] / _group_norms(d, normalization).clamp_min(1e-30), max=1.0)
                    for n, d in delta.items()}

        def step(g: dict[str, torch.Tensor], r: float) -> dict[str, torch.Tensor]:
            if normalization == "none":
                tot = math.sqrt(sum(float(t.pow(2).sum()) for t in g.values()))
                return {n: step_fraction * r * t / max(tot, 1e-30) for n, t in g.items()}
            return {n: step_fraction * r * scale[n] * t / _group_norms(t, normalization).clamp_min(1e-30)
                    for n, t in g.items()}

        with eval_mode(model):
            f = _Loss(model, x, y, criterion, batch_size)
            base = f.value()
            best_all: list[float] = []
            per: list[list[float]] = []
            for r in rs:
                runs = []
                for d in starts:
                    delta = project({n: r * d[n] for n in names}, r)
                    best = -math.inf
                    for k in range(steps + 1):
                        value, g = f.value_and_grad(delta, f"at ascent step {k} within radius {r:g}")
                        best = max(best, value)
                        if k < steps:
                            s = step(g, r)
                            delta = project({n: delta[n] + s[n] for n in names}, r)
                    runs.append(best - base)
                per.append(runs)
                best_all.append(max(runs))
        settings = _settings("worst", loss, attack, normalization, include_bn, seed, len(x), batch_size, criterion,
                             radii=rs, steps=int(steps), step_fraction=float(step_fraction), restarts=int(restarts),
                             forwards=f.forwards, backwards=f.backwards, tf32=bool(tf32))
        return FlatnessResult("worst", loss, rs, best_all, base, None, None, per, settings, time.perf_counter() - t0)


__all__ = ["FlatnessResult", "average_loss_increase", "worst_case_loss_increase", "summed_cross_entropy", "LOSSES"]
