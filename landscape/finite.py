"""Model outputs that are not finite: the one check, called wherever outputs are scored, differentiated or drawn.

The argmax of a row of NaN logits is class 0, so a broken model (NaN weights that a checkpoint check cannot
see, an overflow in the forward pass, a log of 0) would otherwise be scored as an accuracy, attacked with NaN
gradients or drawn as a surface. Every entrance refuses it instead, in one line that says how many samples
gave NaN or infinite outputs (``NonFiniteOutputError``, a ``ModelError``: the console scripts print it as
``prog: error: ...`` and exit 2).

The check reads the outputs the caller has already computed (no extra forward pass): ``nonfinite_rows`` marks
the samples without synchronizing a device, ``OutputWatch`` adds batches up, and ``refuse_nonfinite`` /
``check_outputs`` raise (one synchronization). Cost: one pass over the logits (n x classes).
"""
from __future__ import annotations

import torch

from .errors import ModelError


class NonFiniteOutputError(ModelError):
    """The model's outputs (logits) are NaN or infinite for some samples; nothing is computed from them."""


def nonfinite_rows(out: torch.Tensor) -> torch.Tensor:
    """(n,) bool on ``out``'s device: the samples whose outputs hold a NaN, +inf or -inf. No synchronization."""
    out = out.detach()
    if out.dim() == 0:
        out = out.reshape(1)
    return ~torch.isfinite(out.reshape(len(out), -1)).all(1)


def nonfinite_message(bad: int, n: int, at: str = "", no: str = "accuracy") -> str:
    """The one line: ``at`` says where the outputs were taken (e.g. "at the PGD examples"), ``no`` what is
    not computed from them (e.g. "accuracy", "surface point")."""
    where = f" {at}" if at else ""
    return (f"the model's outputs are not finite for {bad} of {n} samples{where} (NaN or inf logits); "
            f"no {no} is computed from them")


def refuse_nonfinite(bad: torch.Tensor | int, n: int, at: str = "", no: str = "accuracy") -> None:
    """Raise ``NonFiniteOutputError`` when ``bad`` (a count, or a per-sample bool mask) is not zero. One
    synchronization when ``bad`` is a device tensor."""
    k = int(bad.sum()) if isinstance(bad, torch.Tensor) else int(bad)
    if k:
        raise NonFiniteOutputError(nonfinite_message(k, n, at, no))


def check_outputs(out: torch.Tensor, at: str = "", no: str = "accuracy") -> torch.Tensor:
    """``out`` itself, after refusing it when some sample's outputs are not finite (one synchronization)."""
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        refuse_nonfinite(nonfinite_rows(out), len(out) if out.dim() else 1, at, no)
    return out


class OutputWatch:
    """Counts, over the batches of one pass, the samples with non-finite outputs, without synchronizing;
    ``check()`` raises at the end of the pass (one synchronization) naming the count over all the batches.

        watch = OutputWatch(at="at the PGD examples")
        for xb in batches:
            logits = watch(model(xb))
        watch.check()
    """

    def __init__(self, at: str = "", no: str = "accuracy"):
        self.at, self.no = at, no
        self.bad: torch.Tensor | None = None
        self.n = 0

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dim():
            k = nonfinite_rows(out).sum()
            self.bad = k if self.bad is None else self.bad + k
            self.n += len(out)
        return out

    def check(self) -> None:
        if self.bad is not None:
            refuse_nonfinite(self.bad, self.n, self.at, self.no)


__all__ = ["NonFiniteOutputError", "OutputWatch", "check_outputs", "nonfinite_message", "nonfinite_rows",
           "refuse_nonfinite"]
