"""The study's tables: mean ± s.d. over seeds per group (``summarize``) and their markdown (``markdown_table``,
``grouped_markdown``), and ``barrier``, the scalar of a 1D path. Pure functions; nothing here reads or writes
files."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def summarize(df: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Mean, sample s.d. (ddof 1; NaN for one seed) and n over seeds of every numeric column, per group; with
    the audit's ``audit_suspect`` column, ``flagged`` (models the audit calls suspect) of ``audited``."""
    values = [c for c in df.columns if c not in (*by, "seed", "audit_suspect")
              and pd.api.types.is_numeric_dtype(df[c])]
    g = df.groupby(list(by), sort=True)
    out = g[values].mean().add_suffix("_mean").join(g[values].std(ddof=1).add_suffix("_sd"))
    out["n"] = g.size()
    cols = [c for v in values for c in (f"{v}_mean", f"{v}_sd")] + ["n"]
    if "audit_suspect" in df.columns:
        out["flagged"], out["audited"] = g["audit_suspect"].sum(), g["audit_suspect"].count()
        cols += ["flagged", "audited"]
    return out[cols].reset_index()


def flagged_cell(flagged: float, audited: float) -> str:
    """'k of m' models of a group flagged by the audit; '–' when none was audited."""
    return f"{int(flagged)} of {int(audited)}" if audited else "–"


def fmt(m: float | None, s: float | None) -> str:
    """'mean ± s.d.' with 3, 2 or 1 decimals (|mean| below 10, below 100, above); the mean alone when the s.d.
    is missing or not finite; '–' when the mean is."""
    if m is None or not np.isfinite(m):
        return "–"
    digits = 3 if abs(m) < 10 else 2 if abs(m) < 100 else 1
    return f"{m:.{digits}f}" if s is None or not np.isfinite(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(summary: pd.DataFrame, by: Sequence[str], columns: Sequence[str] | None = None) -> str:
    """The summary as a markdown table, each value as 'mean ± s.d.' (the s.d. omitted when n = 1); ``columns``
    picks metrics (default all)."""
    values = [c[:-5] for c in summary.columns if c.endswith("_mean") and (columns is None or c[:-5] in columns)]
    audited = "audited" in summary.columns
    head = [*by, *values, "n"] + (["audit: flagged"] if audited else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        cells = [f"{r[b]:g}" if isinstance(r[b], float) else str(r[b]) for b in by]
        cells += [fmt(r[f"{v}_mean"], r[f"{v}_sd"]) for v in values] + [str(int(r["n"]))]
        if audited:
            cells.append(flagged_cell(r["flagged"], r["audited"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: the sections of ``grouped_markdown``: a title and the metric-name prefixes it holds
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("accuracy and training", ("best_epoch", "train_", "test_")),
    ("curvature and 2D surfaces (adversarial loss)", ("eig", "trace", "eigen_plane", "random_plane")),
    ("scalar flatness and the path from AT", ("flat_", "path_")))


def grouped_markdown(summary: pd.DataFrame, by: Sequence[str], groups: Sequence = GROUPS) -> str:
    """``markdown_table`` in sections (``groups``: (title, column prefixes); by default GROUPS: accuracy,
    curvature/surfaces, flatness/path), empty ones left out, the rest under "other"."""
    metrics = [c[:-5] for c in summary.columns if c.endswith("_mean")]
    parts = []
    for title, prefixes in groups:
        cols = [m for m in metrics if m.startswith(prefixes)]
        if cols:
            parts.append(f"### {title}\n\n" + markdown_table(summary, by, cols))
    rest = [m for m in metrics if not m.startswith(tuple(p for _, ps in groups for p in ps))]
    if rest:
        parts.append("### other\n\n" + markdown_table(summary, by, rest))
    return "\n".join(parts)


def barrier(a: Sequence[float], loss: Sequence[float]) -> float:
    """The barrier of a 1D path's loss (the table's ``path_barrier_*`` columns): max over a in [0, 1] of
    L(a) - ((1 - a) L(0) + a L(1)), the loss above the straight line between the path's ends (0 and 1 must be
    on the grid; points outside [0, 1] do not count)."""
    a, loss = np.asarray(a, dtype=float), np.asarray(loss, dtype=float)
    i0, i1 = int(np.flatnonzero(a == 0.0)[0]), int(np.flatnonzero(a == 1.0)[0])
    inside = (a >= 0) & (a <= 1)
    line = (1 - a) * loss[i0] + a * loss[i1]
    return float(np.max((loss - line)[inside]))
