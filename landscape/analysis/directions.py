"""Directions in weight space for loss surfaces: dicts from parameter name to a tensor shaped like it.

* ``random_direction`` / ``random_directions``: Gaussian directions with filter, layer or no normalization
  (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").
* ``orthogonalize``: Gram-Schmidt of one direction against another (over all parameters at once).
* ``eigen_directions``: top Hessian eigenvectors of the clean or adversarial loss (the spectrum engine).
* ``interpolation_direction``: theta1 - theta0, the straight line to another checkpoint; by default its
  buffers too (BatchNorm running statistics), so that a = 1 is the other model exactly.
* ``pca_directions``: top principal components of a training trajectory (scikit-learn PCA).

Random, eigen and PCA directions move only parameters: buffers (BatchNorm running statistics) stay those of
the model. An interpolation direction also holds, for every buffer, buffer1 - buffer0 in float64; a surface
then moves the buffers along with the weights (``moving.WeightMover``).
``meta["normalization"]`` of random directions was ``meta["norm"]`` in older files: ``current_meta`` reads both.
Everything random is drawn on the CPU from a seeded ``torch.Generator``, so a seed gives the same
direction on every device and without touching the global RNG.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..attack_spec import AttackSpec
from ..digest import tensor_digest
from ..errors import CheckpointError, ConfigError, LandscapeError

Direction = dict[str, torch.Tensor]
NORMALIZATIONS = ("filter", "layer", "none")
BUFFER_MODES = ("interpolate", "fixed")


@dataclass
class DirectionSet(Sequence):
    """A list of directions plus what produced them (``meta``: kind, seed, eigenvalues, explained variance...).

    Behaves as the list: ``d1, d2 = eigen_directions(...)`` works.
    """
    directions: list[Direction]
    meta: dict = field(default_factory=dict)

    def __getitem__(self, i):  # type: ignore[override]
        return self.directions[i]

    def __len__(self) -> int:
        return len(self.directions)

    def __iter__(self) -> Iterator[Direction]:
        return iter(self.directions)


def _params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in model.named_parameters()]


def _is_vector(p: torch.Tensor) -> bool:
    """Biases and BatchNorm/LayerNorm scales and shifts: parameters with at most one dimension."""
    return p.dim() <= 1


def current_meta(meta: Mapping[str, Any]) -> dict:
    """A copy of directions' ``meta`` in today's vocabulary: the old key ``norm`` (the normalization of
    random directions, in files written before it was renamed) becomes ``normalization``."""
    out = dict(meta)
    if "norm" in out and "normalization" not in out:
        out["normalization"] = out.pop("norm")
    return out


def _normalize_(d: torch.Tensor, w: torch.Tensor, normalization: str) -> None:
    """Rescale ``d`` in place: per output filter / row (``filter``), as a whole (``layer``), or not at all."""
    if normalization == "none":
        return
    if normalization == "filter" and d.dim() > 1:
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        d.mul_((wn / dn.clamp_min(1e-12)).view(-1, *([1] * (d.dim() - 1))))
    else:
        d.mul_(w.norm() / d.norm().clamp_min(1e-12))


def random_directions(model: nn.Module, k: int = 2, normalization: str = "filter", include_bn: bool = False,
                      seed: int = 0) -> DirectionSet:
    """``k`` Gaussian directions drawn one after another from one generator seeded with ``seed``.

    Normalization (Li et al. 2018): ``filter`` rescales each output filter of a conv weight (each row of a
    linear weight) to the norm of the same filter of the weights; ``layer`` rescales each parameter tensor
    to the tensor's norm; ``none`` keeps N(0, 1) entries.

    Parameters with one dimension (biases, BatchNorm weight and bias) get a zero direction unless
    ``include_bn``. With ``include_bn`` they get a random direction rescaled to the norm of the whole
    vector (a vector has no filters, so ``filter`` acts as ``layer`` there). We do not follow Li et al.'s
    code, which copies the weights into the direction (d = w) for these: that makes the entry the same in
    every direction, so two "random" directions would share it. With ``normalization="none"`` they get N(0, 1).
    Draws happen for every parameter in ``named_parameters`` order whatever ``include_bn`` is, so the
    weight entries do not depend on it.
    Cost: one randn per parameter, on the CPU.
    """
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown direction normalization {normalization!r}; choose from "
                          f"{', '.join(NORMALIZATIONS)}")
    if k < 1:
        raise ConfigError(f"the number of directions must be at least 1, got {k}")
    gen = torch.Generator().manual_seed(int(seed))
    params = _params(model)
    if not params:
        raise LandscapeError("the model has no parameters to move")
    out: list[Direction] = []
    for _ in range(k):
        d: Direction = {}
        for name, p in params:
            w = p.detach()
            r = torch.randn(w.shape, generator=gen, dtype=torch.float64)
            if _is_vector(w) and not include_bn:
                r.zero_()
            else:
                _normalize_(r, w.double().cpu(), normalization)
            d[name] = r.to(device=w.device, dtype=w.dtype)
        out.append(d)
    return DirectionSet(out, {"kind": "random", "normalization": normalization, "include_bn": bool(include_bn),
                              "seed": int(seed)})


def random_direction(model: nn.Module, normalization: str = "filter", include_bn: bool = False,
                     seed: int = 0) -> Direction:
    """One random direction (the first of ``random_directions(model, 1, normalization, include_bn, seed)``)."""
    return random_directions(model, 1, normalization, include_bn, seed)[0]


def _check_same_keys(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    if set(a) != set(b):
        extra = sorted(set(a) ^ set(b))
        raise LandscapeError(f"the two directions cover different parameters (e.g. {extra[0]})")
    for n in a:
        if a[n].shape != b[n].shape:
            raise LandscapeError(f"direction entries for {n} differ in shape: {tuple(a[n].shape)} vs "
                                 f"{tuple(b[n].shape)}")


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Inner product of two directions over all their entries (in float64)."""
    _check_same_keys(a, b)
    return float(sum((a[n].double() * b[n].double()).sum().item() for n in a))


def direction_norm(d: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of a direction over all its entries."""
    return float(sum(d[n].double().pow(2).sum().item() for n in d)) ** 0.5


def orthogonalize(d2: Mapping[str, torch.Tensor], d1: Mapping[str, torch.Tensor]) -> Direction:
    """``d2`` minus its projection on ``d1`` (one Gram-Schmidt step over all parameters at once).

    The result is orthogonal to ``d1``; its norm shrinks a little, and filter norms no longer match the
    weights exactly. A zero ``d1`` leaves ``d2`` as it is.
    """
    n1 = dot(d1, d1)
    c = dot(d2, d1) / n1 if n1 > 0 else 0.0
    return {n: (d2[n].double() - c * d1[n].double()).to(d2[n].dtype) for n in d2}


def _fix_sign(v: torch.Tensor) -> torch.Tensor:
    """Flip ``v`` so that its entry of largest magnitude is positive (eigenvectors and PCs have no sign)."""
    i = int(v.abs().argmax())
    return -v if v[i] < 0 else v


def eigen_directions(model: nn.Module, data: Any, loss: str = "clean", attack: AttackSpec | None = None,
                     k: int = 2, tol: float = 1e-3, seed: int = 0, **operator_kwargs: Any) -> DirectionSet:
    """The top-``k`` Hessian eigenvectors of the clean or adversarial loss on ``data``, as directions.

    Uses ``HessianOperator`` and ``top_eigenvalues`` (Lanczos). Each vector has unit norm over all
    parameters; its sign is fixed so that its largest-magnitude entry is positive. ``meta["eigenvalues"]``
    holds the eigenvalues. The adversarial loss uses ``attack`` (an ``AttackSpec``): with the same spec
    and seed, ``loss_surface`` attacks the very same examples. Cost: what ``top_eigenvalues`` needs (tens of Hessian-vector products, each
    about two forward+backward passes over ``data``; plus one PGD attack for the adversarial loss).
    """
    from .hessian import HessianOperator
    from .spectrum import top_eigenvalues
    if loss not in ("clean", "adversarial"):
        raise ConfigError(f"unknown loss {loss!r}; choose clean or adversarial")
    op = HessianOperator(model, data, loss=loss, attack=attack if loss == "adversarial" else None, seed=seed,
                         **operator_kwargs)
    res = top_eigenvalues(op, k=k, tol=tol, seed=seed, return_vectors=True)
    vectors = res.vectors
    if vectors is None:
        raise LandscapeError("the spectrum engine returned no eigenvectors")
    dirs: list[Direction] = []
    own = dict(_params(model))
    for i in range(k):
        v = _fix_sign(torch.as_tensor(vectors[i]))
        parts = op.unflatten(v)
        d: Direction = {}
        for name, p in own.items():
            t = parts.get(name)
            d[name] = (torch.zeros_like(p.detach()) if t is None
                       else t.detach().reshape(p.shape).to(device=p.device, dtype=p.dtype).clone())
        dirs.append(d)
    values = [float(v) for v in torch.as_tensor(res.values).flatten()[:k].tolist()]
    meta = {"kind": "eigen", "loss": loss, "k": k, "tol": tol, "seed": int(seed), "eigenvalues": values}
    if loss == "adversarial":
        meta.update(eps=op.eps, steps=op.steps, step_size=op.step_size, attack=op.attack.to_dict())
    return DirectionSet(dirs, meta)


def _state_of(obj: Any) -> Mapping[str, torch.Tensor]:
    if hasattr(obj, "model") and isinstance(obj.model, nn.Module):  # a Checkpoint
        obj = obj.model
    if isinstance(obj, nn.Module):
        return {**dict(obj.named_buffers()), **dict(obj.named_parameters())}
    if isinstance(obj, Mapping):
        from ..checkpoint import strip_prefixes
        return strip_prefixes(dict(obj))
    raise LandscapeError(f"cannot read weights from a {type(obj).__name__}")


def _buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's persistent buffers (its state_dict entries that are not parameters)."""
    params = {n for n, _ in model.named_parameters()}
    return [(n, t) for n, t in model.state_dict().items() if n not in params]


def interpolation_direction(model: nn.Module, other: Any, buffers: str = "interpolate") -> Direction:
    """theta1 - theta0: the direction from ``model``'s parameters to those of ``other``.

    ``other`` is a model, a ``Checkpoint`` or a state_dict (``module.`` prefixes are dropped); it must
    hold every parameter of ``model`` with the same shape. Along it, a = 0 is the model, a = 1 the other.
    ``buffers="interpolate"`` (default) adds buffer1 - buffer0 (float64) for every buffer of the model
    (BatchNorm running_mean / running_var / num_batches_tracked ...): a surface then sets each buffer to
    buffer0 + a * (buffer1 - buffer0) (running_var clamped at 0 when extrapolating, integer buffers rounded),
    so both endpoints are the two models exactly. ``"fixed"`` moves parameters only (the model's running
    statistics everywhere, so a = 1 is NOT the other model when it has BatchNorm).
    """
    if buffers not in BUFFER_MODES:
        raise ConfigError(f"unknown buffer mode {buffers!r}; choose from {', '.join(BUFFER_MODES)}")
    theirs = _state_of(other)
    d: Direction = {}
    for name, b in (_buffers(model) if buffers == "interpolate" else []):
        if name not in theirs:
            raise CheckpointError(f"the other model has no buffer {name} to interpolate (buffers='fixed' keeps "
                                  "this model's)")
        t = theirs[name]
        if tuple(t.shape) != tuple(b.shape):
            raise CheckpointError(f"buffer {name} has shape {tuple(t.shape)} in the other model, "
                                  f"{tuple(b.shape)} in this one")
        d[name] = t.detach().to(device=b.device, dtype=torch.float64) - b.detach().double()
    for name, p in _params(model):
        if name not in theirs:
            raise CheckpointError(f"the other model has no parameter {name}")
        t = theirs[name]
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(f"parameter {name} has shape {tuple(t.shape)} in the other model, "
                                  f"{tuple(p.shape)} in this one")
        d[name] = (t.detach().to(device=p.device, dtype=torch.float64)
                   - p.detach().double()).to(p.dtype)
    return d


def trajectory_files(folder: str | os.PathLike) -> list[Path]:
    """The ``epoch_XXX.pt`` files of a training run, in epoch order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"trajectory folder {folder} does not exist")
    files = sorted(folder.glob("epoch_*.pt"))
    if not files:
        raise CheckpointError(f"{folder} holds no epoch_XXX.pt trajectory checkpoints")
    return files


def _flat(state: Mapping[str, torch.Tensor], names: Sequence[str]) -> np.ndarray:
    return torch.cat([state[n].detach().double().cpu().reshape(-1) for n in names]).numpy()


def pca_directions(trajectory: Iterable[Any] | str | os.PathLike, final_model: nn.Module, k: int = 2,
                   arch: str | None = None, dataset: str | None = None) -> DirectionSet:
    """Top-``k`` principal components of a training trajectory around the final model (Li et al. 2018, s. 7).

    ``trajectory`` is a folder of ``epoch_XXX.pt`` files, or a list of checkpoint paths, models or
    state_dicts; checkpoint files whose (training) configs differ are refused (two runs mixed). The rows theta_i - theta_final go through scikit-learn's ``PCA`` (exact SVD, centered);
    each component is a unit-norm direction (sign fixed: largest entry positive). ``meta`` holds the
    explained variance ratios and the trajectory's coordinates in the plane (``coords``, one row per
    checkpoint) for drawing the path. Cost: loads every checkpoint; memory n_checkpoints x n_params floats.
    """
    from sklearn.decomposition import PCA
    from ..checkpoint import load_checkpoint
    names = [n for n, _ in _params(final_model)]
    if isinstance(trajectory, (str, os.PathLike)):
        trajectory = trajectory_files(trajectory)
    labels: list[str] = []
    rows: list[np.ndarray] = []
    first: tuple[str, dict] | None = None   # (label, training config) of the first checkpoint file
    final = _flat(dict(final_model.named_parameters()), names)
    for item in trajectory:
        if isinstance(item, (str, os.PathLike)):
            ck = load_checkpoint(item, arch=arch, dataset=dataset)
            state, label = dict(ck.model.named_parameters()), str(item)
            run = ck.config.get("train", ck.config)
            if first is None:
                first = (label, run)
            elif run != first[1]:
                keys = sorted(k for k in set(run) | set(first[1]) if run.get(k) != first[1].get(k))
                raise CheckpointError(f"trajectory checkpoints {first[0]} and {label} come from different runs "
                                      f"(their configs differ in {', '.join(keys[:5])}); refusing to mix them")
        else:
            state, label = _state_of(item), f"#{len(labels)}"
        missing = [n for n in names if n not in state]
        if missing:
            raise CheckpointError(f"trajectory checkpoint {label} lacks parameter {missing[0]}")
        rows.append(_flat(state, names) - final)
        labels.append(label)
    if len(rows) < k + 1:
        raise LandscapeError(f"PCA of a trajectory needs at least {k + 1} checkpoints, got {len(rows)}")
    matrix = np.stack(rows)
    pca = PCA(n_components=k, svd_solver="full")
    pca.fit(matrix)
    dirs: list[Direction] = []
    comps = []
    for i in range(k):
        v = _fix_sign(torch.from_numpy(pca.components_[i].copy()))
        comps.append(v.numpy())
        d, off = {}, 0
        for name, p in final_model.named_parameters():
            n = p.numel()
            d[name] = v[off:off + n].reshape(p.shape).to(device=p.device, dtype=p.dtype)
            off += n
        dirs.append(d)
    coords = matrix @ np.stack(comps).T   # projections of theta_i - theta_final on the components
    meta = {"kind": "pca", "k": k, "checkpoints": labels,
            "explained_variance_ratio": [float(r) for r in pca.explained_variance_ratio_],
            "coords": coords.tolist()}
    return DirectionSet(dirs, meta)


def directions_digest(directions: Sequence[Mapping[str, torch.Tensor]]) -> str:
    """A short SHA-256 of the directions' names, shapes, dtypes and values (to refuse mismatched resumes)."""
    return tensor_digest((name, d[name]) for d in directions for name in sorted(d))


__all__ = ["Direction", "DirectionSet", "NORMALIZATIONS", "BUFFER_MODES", "current_meta", "random_direction",
           "random_directions", "orthogonalize", "eigen_directions", "interpolation_direction", "pca_directions",
           "trajectory_files", "dot", "direction_norm", "directions_digest"]
