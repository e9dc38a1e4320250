"""The Lanczos engine shared by ``top_eigenvalues`` and ``spectral_density``; how much of a basis it keeps is
decided beforehand by a memory plan (``memory.MemoryPlan``: ``choose_top_k_plan`` / ``plan_density``).

Two ways to keep the basis:

- ``Lanczos`` (reorth "full"): the basis is a PREALLOCATED ``capacity x n`` tensor (rows are written as the
  basis grows; nothing is copied), in the plan's dtype (float64 for a top-k search when enough float64
  vectors fit the budget, else and for the density the operator's) on the plan's device; every new vector is
  reorthogonalized against all kept ones (classical Gram-Schmidt, twice). When the plan holds fewer vectors
  than the HVP budget needs, ``restart`` performs a thick restart (Wu & Simon 2000; Stewart's Krylov-Schur
  form): it keeps the ``p`` wanted Ritz vectors, rewritten in place chunk by chunk, and the projected matrix
  becomes an arrowhead.
- ``LocalLanczos`` (reorth "local"): the three-term recurrence with reorthogonalization against the two
  previous vectors only; O(n) memory (three vectors), for stochastic Lanczos quadrature, whose nodes and
  weights remain accurate without global orthogonality (the lost orthogonality shows as duplicated "ghost"
  Ritz values whose weights add up to the one true value's; Meurant & Strakos 2006). Tested against the
  exact spectra of tiny networks (moments, extreme nodes) in tests/test_lanczos.py.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ..errors import ConfigError


class Operator(Protocol):
    """What the estimators need: ``num_params``, ``device`` and ``matvec`` (a HessianOperator qualifies)."""
    num_params: int
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def hv(op: Operator, v: torch.Tensor) -> torch.Tensor:
    """``op @ v`` in ``v``'s dtype (one HVP)."""
    return op.matvec(v).to(v.dtype)


def op_settings(op: Any) -> dict:
    """What a result records about its operator: ``op.describe()`` (loss, attack, samples...), else its size."""
    return op.describe() if hasattr(op, "describe") else {"num_params": int(op.num_params)}


# --- tridiagonal / dense projected eigenproblems ------------------------------------------------------

def eigh_tri(alphas, betas) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of the symmetric tridiagonal matrix with diagonal ``alphas`` and
    off-diagonal ``betas`` (float64; a 1 x 1 matrix too, which ``eigh_tridiagonal`` refuses)."""
    a = np.asarray(alphas, dtype=np.float64)
    if len(a) == 1:
        return a.copy(), np.ones((1, 1))
    return eigh_tridiagonal(a, np.asarray(betas, dtype=np.float64))


def gaussian(n: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A standard normal vector drawn (in float64) from the CPU generator ``gen``."""
    return torch.randn(n, generator=gen, dtype=torch.float64).to(device, dtype)


def rademacher(n: int, gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A vector of random signs drawn from the CPU generator ``gen``."""
    return (torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).to(dtype) * 2 - 1).to(device)


_CHUNK = 1 << 20


class Lanczos:
    """Lanczos with a kept basis and full reorthogonalization, in Krylov-Schur form
    ``H V_m = V_m T_m + v_{m+1} c^T``: ``T`` (m x m, float64) is tridiagonal until a thick restart makes it an
    arrowhead, ``c`` couples the pending vector ``v_{m+1}`` to the basis (``beta_m e_m`` for plain Lanczos),
    and a Ritz pair (theta, V y) has residual ``|c . y|`` in exact arithmetic.

    The basis is a preallocated ``capacity x n`` tensor (``dtype``, on ``storage``); one HVP per ``step()``.
    On breakdown (an invariant subspace) the next vector is a random one orthogonal to the basis, with zero
    coupling, so ``T`` stays exact. ``first_hv`` is ``H q0`` when the caller has computed it already.
    """

    def __init__(self, op: Operator, q0: torch.Tensor, gen: torch.Generator, capacity: int,
                 dtype: torch.dtype | None = None, storage: torch.device | str | None = None,
                 first_hv: torch.Tensor | None = None):
        self.op, self.gen, self.n = op, gen, int(q0.numel())
        self.dtype = dtype or q0.dtype
        self.capacity = int(min(capacity, self.n + 1))
        if self.capacity < 2:
            raise ConfigError("a Lanczos basis needs room for at least 2 vectors")
        self.storage = torch.device(storage) if storage is not None else q0.device
        self.Q = torch.empty((self.capacity, self.n), dtype=self.dtype, device=self.storage)
        self.T = np.zeros((self.capacity, self.capacity))
        self.c = np.zeros(self.capacity)   # coupling of the pending vector Q[m] to Q[:m]
        self.m = 0                         # columns of T (vectors multiplied by H)
        self.nv = 0                        # vectors stored (m + 1 while one is pending)
        self.restarts = 0                  # breakdowns
        self.thick_restarts = 0
        self.hvps = 0
        self._first_hv = first_hv
        self._push(q0 / q0.norm())

    def _push(self, q: torch.Tensor) -> None:
        self.Q[self.nv] = q.to(self.storage, self.dtype)
        self.nv += 1

    @property
    def full(self) -> bool:
        """True when no room is left for the next step's vector (``restart`` first)."""
        return self.nv >= self.capacity and not self.exhausted

    @property
    def exhausted(self) -> bool:
        """True when the basis spans the whole space (T is then similar to H)."""
        return self.m >= self.n

    def _orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        """w minus its projection on the stored basis (classical Gram-Schmidt, twice), on the storage device."""
        w = w.to(self.storage, self.dtype)
        Q = self.Q[:self.nv]
        for _ in range(2):
            w = w.addmv_(Q.T, Q @ w, alpha=-1.0) if w.is_contiguous() else w - Q.T @ (Q @ w)
        return w

    def step(self) -> bool:
        """Add one column to T (one HVP). Returns False when the next basis vector came from a restart."""
        if self.full:
            raise RuntimeError("the Lanczos basis is full: restart() first")
        j = self.m
        q = self.Q[j].to(self.op.device)
        if self._first_hv is not None and j == 0:
            w = self._first_hv.to(q.device, q.dtype)
            self._first_hv = None
        else:
            w = hv(self.op, q)
        self.hvps += 1
        alpha = float(q @ w)
        w = w.sub_(q, alpha=alpha) if w is not q else w - alpha * q
        del q
        w = w.to(self.storage)
        for i in np.flatnonzero(self.c[:j]):
            w.sub_(self.Q[i], alpha=float(self.c[i]))
        w = self._orthogonalize(w)
        self.T[j, :j] = self.T[:j, j] = self.c[:j]
        self.T[j, j] = alpha
        self.m = j + 1
        beta = float(w.norm())
        self.c[:] = 0.0
        if self.exhausted:
            return True
        scale = max(float(np.abs(self.T[:self.m, :self.m]).max()), beta, 1e-300)
        if beta > 1e-10 * scale:
            self.c[j] = beta
            self._push(w.div_(beta))
            return True
        self.restarts += 1  # breakdown: the Krylov space is invariant; go on from a fresh random direction
        del w
        r = self._orthogonalize(gaussian(self.n, self.gen, self.storage, self.dtype))
        self._push(r / r.norm())
        return False

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ritz values (ascending), eigenvectors of T (m x m), and their residual estimates |c . y|."""
        m = self.m
        if self._is_tridiagonal():
            theta, S = eigh_tri(np.diag(self.T[:m, :m]), np.diag(self.T[:m, :m], -1))
        else:
            theta, S = np.linalg.eigh(self.T[:m, :m])
        return theta, S, np.abs(self.c[:m] @ S)

    def _is_tridiagonal(self) -> bool:
        m = self.m
        return self.thick_restarts == 0 or not np.any(np.tril(self.T[:m, :m], -2))

    def vector(self, s: np.ndarray) -> torch.Tensor:
        """The Ritz vector ``Q[:m]^T s`` (on the operator's device, in the basis dtype)."""
        st = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float64)).to(self.storage, self.dtype)
        return (self.Q[:self.m].T @ st).to(self.op.device)

    def restart(self, S: np.ndarray) -> None:
        """Thick restart: keep the Ritz vectors ``Q[:m]^T S`` (S: m x p, orthonormal columns of T's
        eigenvectors) and the pending vector. Rewrites the basis in place, ``_CHUNK`` columns at a time."""
        m, p = self.m, S.shape[1]
        theta = np.einsum("ip,ij,jp->p", S, self.T[:m, :m], S)
        St = torch.from_numpy(np.ascontiguousarray(S.T)).to(self.storage, self.dtype)
        for lo in range(0, self.n, _CHUNK):
            hi = min(lo + _CHUNK, self.n)
            self.Q[:p, lo:hi] = St @ self.Q[:m, lo:hi]
        if self.nv > m:
            self.Q[p] = self.Q[m]
        c = self.c[:m] @ S
        self.T[:] = 0.0
        self.T[np.arange(p), np.arange(p)] = theta
        self.c[:] = 0.0
        self.c[:p] = c
        self.m, self.nv = p, p + (1 if self.nv > m else 0)
        self.thick_restarts += 1


class LocalLanczos:
    """The three-term Lanczos recurrence in O(n) memory: each new vector is orthogonalized (twice) against the
    current and previous ones only. Same interface as ``Lanczos`` for SLQ (``step``, ``ritz``); stops at
    breakdown (``step`` returns False)."""

    def __init__(self, op: Operator, q0: torch.Tensor, first_hv: torch.Tensor | None = None):
        self.op, self.n = op, int(q0.numel())
        self.q, self.prev = q0 / q0.norm(), None
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.hvps, self.restarts, self.thick_restarts = 0, 0, 0
        self._first_hv = first_hv

    @property
    def m(self) -> int:
        return len(self.alphas)

    @property
    def exhausted(self) -> bool:
        return self.m >= self.n

    def step(self) -> bool:
        if self._first_hv is not None:
            w, self._first_hv = self._first_hv.to(self.q.device, self.q.dtype), None
        else:
            w = hv(self.op, self.q)
        self.hvps += 1
        alpha = float(self.q @ w)
        w.sub_(self.q, alpha=alpha)
        if self.prev is not None:
            w.sub_(self.prev, alpha=self.betas[-1])
        for _ in range(2):  # local reorthogonalization
            w.sub_(self.q, alpha=float(self.q @ w))
            if self.prev is not None:
                w.sub_(self.prev, alpha=float(self.prev @ w))
        self.alphas.append(alpha)
        if self.exhausted:
            return True
        beta = float(w.norm())
        scale = max(max(abs(a) for a in self.alphas), max(self.betas, default=0.0), 1e-300)
        if beta <= 1e-10 * scale:
            return False
        self.betas.append(beta)
        self.prev, self.q = self.q, w.div_(beta)
        return True

    def ritz(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.m
        theta, S = eigh_tri(self.alphas, self.betas[:m - 1])
        last = self.betas[m - 1] if len(self.betas) >= m else 0.0
        return theta, S, np.abs(last * S[-1])


__all__ = ["Lanczos", "LocalLanczos", "Operator", "hv", "op_settings", "eigh_tri", "gaussian", "rademacher"]
