"""What the figures call things: one legend label per result and a title from the settings the results share
(method, eps, loss, samples, dataset; never file names). The captions and axis names themselves come from
the results owner (``landscape.results.caption``, ``axis_names``)."""
from __future__ import annotations

from typing import Any, Sequence

from ..analysis.surface import SurfaceResult
from ..errors import LandscapeError
from ..results import caption, describe, fmt_value


def as_list(obj: Any) -> list:
    """One result or a list/tuple of them, as a list."""
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def labels_and_title(infos: list[dict], what: str, labels: Sequence[str] | None = None,
                     noun: str = "loss") -> tuple[list[str], str]:
    """One legend label per result (its method / run name, plus whatever differs between them) and a title
    ``what — the settings they share``."""
    if labels is not None:
        if len(labels) != len(infos):
            raise LandscapeError(f"{len(labels)} labels for {len(infos)} results")
        out = list(labels)
    else:
        out = [i["name"] or f"result {k + 1}" for k, i in enumerate(infos)]
        for key, fmt in (("eps", lambda v: f"ε = {fmt_value(v)}"), ("loss", str), ("n", lambda v: f"n = {v}")):
            vals = {str(i.get(key)) for i in infos}
            if len(vals) > 1:
                out = [f"{o}, {fmt(i[key])}" if i.get(key) is not None else o for o, i in zip(out, infos)]
        if len(set(out)) < len(out):
            out = [f"{o} ({k + 1})" for k, o in enumerate(out)]
    shared = {k: infos[0].get(k) for k in ("loss", "eps", "n", "dataset")
              if len({str(i.get(k)) for i in infos}) == 1}
    rest = caption(shared, noun=noun)
    return out, (f"{what} — {rest}" if what else rest) if rest else what


def surface_title(r: SurfaceResult, field: str) -> str:
    """``AT: adversarial loss (ε = 0.3), n = 512`` (or ``... accuracy ...``) from the surface's settings."""
    info = describe(r)
    what = caption(info, noun=field) or field
    return f"{info['name']}: {what}" if info["name"] else what
