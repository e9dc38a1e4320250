"""Adversarial attacks as pure functions of ``(model, x, y, ...)`` returning detached adversarial inputs.

Written here rather than taken from a library because P-SAT needs PGD with *per-sample early stopping*
under a difficulty constraint, which no attack library offers, and all our variants must share one
step rule so that ``pgd_early_stop(lam=1)`` is bit-identical to ``pgd``.

Every attack: puts the model in eval mode and restores its mode afterwards; takes gradients with respect
to the input only (``torch.autograd.grad``), so parameter ``.grad`` fields are never touched; keeps
``x + delta`` in [0, 1] and ``delta`` in the eps-ball. Randomness comes from an optional CPU
``torch.Generator`` so that results do not depend on the device or on global RNG state.
Cost of PGD-k: k forward + k backward passes (plus one forward per restart when restarts > 1).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .finite import nonfinite_rows, refuse_nonfinite
from .seeding import generator

NORMS = ("linf", "l2")


@contextlib.contextmanager
def eval_mode(model: nn.Module, bn: str = "eval", grad: bool = True) -> Iterator[nn.Module]:
    """Temporarily put ``model`` (and all submodules) in eval mode, with gradients enabled (``grad=False``:
    the caller's grad mode is left as it is); restores the flags after. The one place that sets BatchNorm's
    mode for an attack or an analysis (the Hessian's ``bn="running"`` is ``bn="eval"`` here).

    ``bn="batch"``: BatchNorm layers normalize with each batch's own statistics instead (train mode with
    ``track_running_stats`` off, so the running statistics are neither read nor written)."""
    modes = [(m, m.training, getattr(m, "track_running_stats", None)) for m in model.modules()]
    model.eval()
    if bn == "batch":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.track_running_stats = False
    try:
        with torch.enable_grad() if grad else contextlib.nullcontext():  # attacks need input gradients
            yield model
    finally:
        for m, mode, track in modes:
            m.training = mode
            if track is not None:
                m.track_running_stats = track


def check_eps(eps: float, norm: str = "linf") -> None:
    """Raise ``ConfigError`` for an unknown norm or an eps outside [0, 1] (Linf on [0, 1] inputs)."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}")
    if norm == "linf" and not 0 <= eps <= 1:
        raise ConfigError(f"eps must lie in [0, 1] for Linf attacks on [0, 1] inputs, got {eps}")
    if not eps >= 0:   # NaN fails too
        raise ConfigError(f"eps must be >= 0 for {norm.upper()} attacks, got {eps}")


class RowShard:
    """A generator for the rows ``[lo, hi)`` of a batch of ``rows`` samples: every draw of a batch-shaped
    tensor is made for the whole batch from ``generator`` and cut to those rows. Data-parallel training
    gives each process a shard of the global batch and one of these over the same generator, so that every
    sample gets the random start a single process gives it (cost: each process draws the whole batch's
    noise, negligible beside the attack's passes)."""

    def __init__(self, generator: torch.Generator, rows: int, lo: int, hi: int):
        self.generator, self.rows, self.lo, self.hi = generator, rows, lo, hi

    def draw(self, shape: torch.Size, dtype: torch.dtype, normal: bool) -> torch.Tensor:
        if shape[0] != self.hi - self.lo:
            raise ValueError(f"RowShard for rows {self.lo}:{self.hi} asked for a batch of {shape[0]}")
        full = (torch.randn if normal else torch.rand)((self.rows, *shape[1:]), generator=self.generator,
                                                        dtype=dtype)
        return full[self.lo:self.hi]


def _rand(shape: torch.Size, x: torch.Tensor, generator: torch.Generator | RowShard | None, normal: bool = False):
    if isinstance(generator, RowShard):
        return generator.draw(shape, x.dtype, normal).to(x.device)
    r = (torch.randn if normal else torch.rand)(shape, generator=generator, dtype=x.dtype)
    return r.to(x.device)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``delta`` onto the eps-ball and so that ``x + delta`` lies in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform random point of the eps-ball (Linf: uniform cube; L2: random direction, radius U(0, eps))."""
    if norm == "linf":
        delta = (2 * _rand(x.shape, x, generator) - 1) * eps
    else:
        d = _rand(x.shape, x, generator, normal=True)
        r = _rand(torch.Size([x.shape[0]]), x, generator).view(-1, *([1] * (x.dim() - 1)))
        delta = d / _per_sample_norm(d) * r * eps
    return _project(x, delta, eps, norm)


def _ascent(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, eps: float, step_size: float,
            norm: str) -> torch.Tensor:
    """One projected steepest-ascent step: sign step for Linf, normalized-gradient step for L2. A sample whose
    gradient is not finite (a NaN from a layer with no derivative at its input) takes no step: its
    gradient says nothing, and a NaN step would make its input NaN. A finite gradient is used as it is."""
    grad = torch.where(torch.isfinite(grad.flatten(1)).all(1).view(-1, *([1] * (grad.dim() - 1))), grad, 0.0)
    if norm == "linf":
        step = step_size * grad.sign()
    else:
        step = step_size * grad / _per_sample_norm(grad)
    return _project(x, delta + step, eps, norm)


def default_step_size(eps: float, steps: int, step_size: float | None = None) -> float:
    """THE step-size rule of every attack: ``step_size`` when given, else 2.5 * eps / steps (Madry et al.)."""
    return step_size if step_size is not None else 2.5 * eps / max(steps, 1)


_default_step = default_step_size


def _input_grad(loss: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """d loss / d delta; zero where the loss does not depend on ``delta`` through autograd (a model that
    quantizes, detaches or rounds its inputs: its input gradient is zero, a result, not an error)."""
    if not loss.requires_grad:
        return torch.zeros_like(delta)
    g = torch.autograd.grad(loss, delta, allow_unused=True)[0]
    return torch.zeros_like(delta) if g is None else g


ITERATES = "at PGD's iterates"


def _finite_check(check_finite: bool | str, n: int, device: torch.device) -> tuple[torch.Tensor | None, str]:
    """The per-sample mask of non-finite logits an attack keeps (None: no check), and where it says they were."""
    if not check_finite:
        return None, ""
    return torch.zeros(n, dtype=torch.bool, device=device), (check_finite if isinstance(check_finite, str)
                                                             else ITERATES)


def _logits(model: nn.Module, x: torch.Tensor, fp16_safe: bool = False) -> torch.Tensor:
    """``model(x)``. With ``fp16_safe`` (training under fp16 autocast: ``landscape.precision``) the logits
    in float32, with a hook that scales each sample's logit gradient to a largest entry of 1 before it
    flows back through the half-precision network: a confidently classified sample's gradient (1 - p_y
    ~ 1e-9) would otherwise flush to zero in fp16 and the sample would never be attacked, while one
    loss scale for the whole batch overflows on the misclassified samples. Each PGD step uses only the
    sign (Linf) or direction (L2) of each sample's gradient, which a per-sample positive factor leaves
    alone."""
    logits = model(x)
    if not fp16_safe:
        return logits
    logits = logits.float()
    if logits.requires_grad:
        logits.register_hook(lambda g: g / g.abs().amax(1, keepdim=True).clamp_min(1e-30))
    return logits


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float | None = None,
        steps: int = 10, norm: str = "linf", random_init: bool = True, restarts: int = 1,
        generator: torch.Generator | None = None, bn: str = "eval", fp16_safe: bool = False,
        check_finite: bool | str = False) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy (Madry et al. 2018); returns ``x + delta``, detached.

    ``step_size`` defaults to 2.5 * eps / steps. With ``restarts > 1`` each sample keeps its worst
    restart: misclassified beats correct, then higher loss wins. ``bn``: see ``eval_mode``; ``fp16_safe``:
    see ``_logits``. ``check_finite`` (True, or a phrase saying where): refuse logits that are NaN or
    infinite at any iterate (``finite.NonFiniteOutputError``, counting the samples), after the attack (one
    synchronization). Off here because training's objectives call ``pgd`` and the trainer's own loss check
    names the last good checkpoint; every evaluation entrance (``adversarial_examples``,
    ``AttackSpec.examples``) turns it on.
    Cost: restarts * steps forward+backward passes, plus one forward per restart when restarts > 1.
    """
    check_eps(eps, norm)
    if eps == 0 or steps == 0:
        return x.detach().clone()
    alpha = _default_step(eps, steps, step_size)
    best, best_key = x.detach().clone(), None
    bad, at = _finite_check(check_finite, len(x), x.device)
    with eval_mode(model, bn):
        for _ in range(max(restarts, 1)):
            delta = random_start(x, eps, norm, generator) if random_init else torch.zeros_like(x)
            for _ in range(steps):
                delta.requires_grad_(True)
                logits = _logits(model, x + delta, fp16_safe)
                if bad is not None:
                    bad |= nonfinite_rows(logits)
                loss = F.cross_entropy(logits, y, reduction="sum")
                delta = _ascent(x, delta.detach(), _input_grad(loss, delta), eps, alpha, norm)
            x_adv = (x + delta).detach()
            if restarts <= 1:
                if bad is not None:
                    refuse_nonfinite(bad, len(x), at, "adversarial example")
                return x_adv
            with torch.no_grad():
                logits = model(x_adv)
                if bad is not None:
                    bad |= nonfinite_rows(logits)
                key = torch.stack([(logits.argmax(1) != y).float(),
                                   F.cross_entropy(logits, y, reduction="none")], 1)
            if best_key is None:
                best, best_key = x_adv, key
            else:
                better = (key[:, 0] > best_key[:, 0]) | ((key[:, 0] == best_key[:, 0]) & (key[:, 1] > best_key[:, 1]))
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
                best_key = torch.where(better.view(-1, 1), key, best_key)
    if bad is not None:
        refuse_nonfinite(bad, len(x), at, "adversarial example")
    return best


ATTACK_LOSSES = ("ce", "margin")


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """Each sample's attack loss: ``ce`` the cross-entropy; ``margin`` the CW margin max_{j != y} z_j - z_y
    on the logits (Carlini & Wagner 2017), which stays informative where a saturated softmax makes the
    cross-entropy's gradient exactly zero. Above 0 the margin means misclassified."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "margin":
        z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
        return logits.scatter(1, y.view(-1, 1), float("-inf")).amax(1) - z_y
    raise ConfigError(f"unknown attack loss {loss!r}; choose from {', '.join(ATTACK_LOSSES)}")


@dataclass
class AttackTrace:
    """What ``pgd_trace`` saw: the last iterate ``x_adv``; ``loss`` (steps + 1, n), each sample's attack loss at
    the start point and after every step; ``ever_adversarial`` (n,), some iterate was misclassified (the
    sample is broken even when the last iterate is not: Pintor et al.'s "silent success");
    ``final_adversarial`` (n,), the last iterate is misclassified."""
    x_adv: torch.Tensor
    loss: torch.Tensor
    ever_adversarial: torch.Tensor
    final_adversarial: torch.Tensor


def pgd_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float | None = None,
              steps: int = 10, norm: str = "linf", loss: str = "ce", random_init: bool = True,
              generator: torch.Generator | None = None, eot: int = 1, bn: str = "eval",
              check_finite: bool | str = True) -> AttackTrace:
    """PGD as ``pgd`` (same start, step and projection: with ``loss="ce"`` and ``eot=1`` its last iterate is
    ``pgd``'s bit for bit) on the attack loss ``loss`` (``per_sample_loss``), recording every sample's loss
    at every iterate and whether any iterate was misclassified. ``eot > 1``: each step's gradient is the
    mean over ``eot`` forward+backward passes (expectation over transformation, for randomized models).
    ``check_finite``: as ``pgd``'s, on by default (the audit's attack: a NaN logit is no attack loss).
    Cost: eot * steps forward+backward passes plus one forward.
    """
    check_eps(eps, norm)
    per_sample_loss(x.new_zeros(1, 2), y.new_zeros(1), loss)   # an unknown loss fails before any work
    alpha = _default_step(eps, steps, step_size)
    active = eps > 0 and steps > 0
    losses, ever = [], torch.zeros(len(x), dtype=torch.bool, device=x.device)
    bad, at = _finite_check(check_finite, len(x), x.device)
    with eval_mode(model, bn):
        delta = random_start(x, eps, norm, generator) if random_init and active else torch.zeros_like(x)
        for i in range(steps + 1):
            last = i == steps or not active
            delta.requires_grad_(not last)
            grad = torch.zeros_like(x)
            for _ in range(1 if last else max(eot, 1)):
                logits = model(x + delta)
                if bad is not None:
                    bad |= nonfinite_rows(logits)
                value = per_sample_loss(logits, y, loss)
                if not last:
                    grad = grad + _input_grad(value.sum(), delta)
            with torch.no_grad():
                losses.append(value.detach())
                wrong = logits.argmax(1) != y
                ever |= wrong
            if last:
                break
            delta = _ascent(x, delta.detach(), grad / max(eot, 1), eps, alpha, norm)
    if bad is not None:
        refuse_nonfinite(bad, len(x), at, "attack loss")
    trace = torch.stack(losses) if active else losses[0].unsqueeze(0)
    return AttackTrace((x + delta).detach(), trace, ever, wrong)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, check_finite: bool | str = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad, logits, dead): the gradient of the summed cross-entropy with respect to ``x``, the logits
    (detached), and per sample whether that gradient is all zero or not finite (shattered or saturated; a
    model whose output does not depend on its input through autograd, one that rounds or detaches it, has
    a zero gradient). ``check_finite`` (True, or a phrase saying where): refuse NaN or infinite logits
    first (``finite.NonFiniteOutputError``): those are a broken model, not a masked gradient; the audit and
    the input-space surface turn it on (off, a sample with non-finite logits is simply dead).
    Runs in ``eval_mode``. Cost: one forward+backward pass."""
    with eval_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        if check_finite:
            refuse_nonfinite(nonfinite_rows(logits), len(x),
                             check_finite if isinstance(check_finite, str) else "", "input gradient")
        grad = _input_grad(F.cross_entropy(logits, y, reduction="sum"), xg)
    flat = grad.flatten(1)
    return grad, logits.detach(), (flat == 0).all(1) | ~torch.isfinite(flat).all(1)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one signed step of size eps. One fwd + bwd."""
    return pgd(model, x, y, eps, step_size=eps, steps=1, random_init=False)


def margin_difficulty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """P-SAT's difficulty psi_P = (max_{j != y} p_j - p_y + 1) / 2 in [0, 1]; above 0.5 means misclassified."""
    p = logits.softmax(1)
    p_y = p.gather(1, y.view(-1, 1)).squeeze(1)
    p_other = p.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return (p_other - p_y + 1) / 2


def pgd_early_stop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, lam: float,
                   step_size: float | None = None, steps: int = 10, norm: str = "linf",
                   random_init: bool = True, generator: torch.Generator | None = None,
                   fp16_safe: bool = False, check_finite: bool | str = False) -> torch.Tensor:
    """PGD with per-sample early stopping under psi_P(x + delta) <= lam (P-SAT's constrained attack).

    After every forward pass, a sample whose difficulty exceeds ``lam`` is frozen at its last iterate
    that satisfied the constraint; a sample that violates it at its start point returns ``x`` itself
    (delta = 0). With ``lam >= 1`` nothing ever stops and the output equals ``pgd``'s bit for bit.
    ``check_finite``: as ``pgd``'s (off: training calls it).
    Cost: as PGD-k (k forward + k backward passes), plus one forward to check the last iterate when lam < 1.
    Frozen samples stay in the batch (the batch shape is constant, so the loop runs at PGD's speed).
    """
    check_eps(eps, norm)
    if eps == 0 or steps == 0:
        return x.detach().clone()
    alpha = _default_step(eps, steps, step_size)
    constrained = lam < 1.0  # psi_P <= 1 always: lam >= 1 is plain PGD
    shape = (-1, *([1] * (x.dim() - 1)))
    bad, at = _finite_check(check_finite, len(x), x.device)
    with eval_mode(model):
        delta = random_start(x, eps, norm, generator) if random_init else torch.zeros_like(x)
        kept = torch.zeros_like(x)
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = _logits(model, x + delta, fp16_safe)
            if bad is not None:
                bad |= nonfinite_rows(logits)
            if constrained:
                with torch.no_grad():
                    active &= margin_difficulty(logits, y) <= lam
                    kept = torch.where(active.view(shape), delta.detach(), kept)
            loss = F.cross_entropy(logits, y, reduction="sum")
            stepped = _ascent(x, delta.detach(), _input_grad(loss, delta), eps, alpha, norm)
            delta = torch.where(active.view(shape), stepped, delta.detach())
        if not constrained:
            if bad is not None:
                refuse_nonfinite(bad, len(x), at, "adversarial example")
            return (x + delta).detach()
        with torch.no_grad():
            logits = model(x + delta)
            if bad is not None:
                bad |= nonfinite_rows(logits)
            active &= margin_difficulty(logits, y) <= lam
            kept = torch.where(active.view(shape), delta, kept)
    if bad is not None:
        refuse_nonfinite(bad, len(x), at, "adversarial example")
    return (x + kept).detach()


def trades_attack(model: nn.Module, x: torch.Tensor, eps: float, step_size: float | None = None,
                  steps: int = 10, generator: torch.Generator | None = None,
                  fp16_safe: bool = False, check_finite: bool | str = False) -> torch.Tensor:
    """TRADES' inner maximization (Zhang et al. 2019): Linf PGD on KL(f(x) || f(x + delta)).

    Starts at x + 0.001 * N(0, I), unclamped (the start may leave [0, 1] by up to ~0.004), exactly as the
    reference code (trades.py) does; every step is then projected onto the eps-ball and into [0, 1].
    ``check_finite``: as ``pgd``'s (off: training calls it).
    Cost: 1 forward + steps forward+backward passes.
    """
    check_eps(eps, "linf")
    if eps == 0 or steps == 0:
        return x.detach().clone()
    alpha = _default_step(eps, steps, step_size)
    bad, at = _finite_check(check_finite, len(x), x.device)
    with eval_mode(model):
        with torch.no_grad():
            clean = model(x)
            if bad is not None:
                bad |= nonfinite_rows(clean)
            p_clean = clean.softmax(1)
        delta = 0.001 * _rand(x.shape, x, generator, normal=True)   # no projection: as the reference
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = _logits(model, x + delta, fp16_safe)
            if bad is not None:
                bad |= nonfinite_rows(logits)
            loss = F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="sum")
            delta = _ascent(x, delta.detach(), _input_grad(loss, delta), eps, alpha, "linf")
    if bad is not None:
        refuse_nonfinite(bad, len(x), at, "adversarial example")
    return (x + delta).detach()


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The CPU generator for the batch of a sample set that begins at sample index ``start``.

    Seeding by (seed, start) makes a batch's attack independent of the batches before it.
    """
    return generator(seed, start)


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                         step_size: float | None = None, steps: int = 10, norm: str = "linf",
                         restarts: int = 1, batch_size: int = 256, seed: int = 0, start: int = 0,
                         random_init: bool = True, bn: str = "eval",
                         callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """PGD adversarial examples for a whole sample set, attacked in batches of ``batch_size``
    (``callback(done, total)``, samples, after each batch: progress).

    Batch b (starting at sample i) uses ``batch_generator(seed, start + i)``, so results are reproducible;
    ``start`` is the index of ``x[0]`` in a larger set of which ``x`` is a shard (a shard that begins on a
    multiple of ``batch_size`` gets exactly the examples the whole set would get). Logits that are NaN or
    infinite at any iterate are refused (``pgd``'s ``check_finite``), naming the batch they came from.
    Cost: as ``pgd`` on every batch.
    """
    out = torch.empty_like(x)
    for i in range(0, len(x), batch_size):
        hi = min(i + batch_size, len(x))
        where = ITERATES if len(x) <= batch_size else f"{ITERATES} (the batch of samples {start + i}-{start + hi - 1})"
        out[i:i + batch_size] = pgd(model, x[i:i + batch_size], y[i:i + batch_size], eps, step_size, steps,
                                    norm, random_init, restarts, batch_generator(seed, start + i), bn,
                                    check_finite=where)
        if callback is not None:
            callback(min(i + batch_size, len(x)), len(x))
    return out
