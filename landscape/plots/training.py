"""Training runs: ``plot_sharpness`` (top Hessian eigenvalue per epoch) and ``plot_training`` (loss, accuracy
and the curriculum), from metrics DataFrames, metrics.csv files, run folders or a CSV of several runs; the best
epoch marked."""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..errors import LandscapeError
from ..results import describe, fmt_value
from ..runs import COLUMN_NAMES, best_epoch, epochs, is_numeric, read_runs, sharpness_column
from .labels import as_list, labels_and_title
from .style import add_legend, new_figure, set_title


def run_frames(metrics: Any) -> list[tuple[Any, dict]]:
    """(metrics DataFrame, run metadata) of every run in ``metrics`` (frames, CSV files, run folders)."""
    out: list = []
    for o in as_list(metrics):
        out += read_runs(o)
    return out


def _epoch_axis(ax: Any) -> None:
    """Integer epochs on the x axis, a light grid."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    ax.grid(alpha=0.3)


def plot_sharpness(metrics: Any, labels: Sequence[str] | None = None) -> Figure:
    """Sharpness (top Hessian eigenvalue) per epoch from metrics DataFrames, metrics.csv files, run folders
    or a CSV of several runs (``method`` column); several runs overlaid, each run's best epoch starred."""
    runs = run_frames(metrics)
    names, _ = labels_and_title([describe(m) for _, m in runs], "", labels)
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    for i, ((df, meta), name) in enumerate(zip(runs, names)):
        col = sharpness_column(df)
        if col is None:
            raise LandscapeError(f"{name or 'run'}: no sharpness column (columns: {', '.join(map(str, df.columns))})")
        x = epochs(df)
        ok = df[col].notna().to_numpy()
        ax.plot(x[ok], df[col].to_numpy()[ok], "o-", color=f"C{i}", ms=4, label=name or COLUMN_NAMES.get(col, col))
        b = best_epoch(df, meta)
        if b is not None and ok[x == b].any():
            ax.plot([b], df[col].to_numpy()[x == b], "*", color=f"C{i}", mec="k", mew=0.6, zorder=5,
                    ms=2.2 * float(matplotlib.rcParams["lines.markersize"]))
    _epoch_axis(ax)
    ax.set_ylabel("sharpness (top eigenvalue)")
    h, _ = ax.get_legend_handles_labels()
    if any(best_epoch(df, m) is not None for df, m in runs):
        h.append(Line2D([], [], ls="", marker="*", color="0.6", mec="k", mew=0.6, ms=11, label="best epoch"))
    add_legend(ax, h)
    infos = [describe(m) for _, m in runs]
    set_title(ax, "sharpness during training" + (f" (ε = {fmt_value(infos[0]['eps'])})" if infos[0]["eps"] is not None
                                                 and len({str(i['eps']) for i in infos}) == 1 else ""))
    return fig


def plot_training(metrics: Any, labels: Sequence[str] | None = None) -> Figure:
    """Training curves by epoch: losses, accuracies (training, validation clean and PGD) and, when the run
    records them, the curriculum (λ and ε_t) in a third panel; the best epoch is marked (dotted line, star).
    One run: a colour per quantity; several runs (or a CSV with a ``method`` column): a colour per run and a
    line style per quantity."""
    runs = run_frames(metrics)
    names, _ = labels_and_title([describe(m) for _, m in runs], "", labels)
    cols: dict[str, list[str]] = {"loss": [], "accuracy": [], "curriculum": []}
    for df, _ in runs:
        num = [c for c in df.columns if c != "epoch" and is_numeric(df[c])
               and df[c].notna().any() and not c.endswith(("_seconds", "_hvps", "_converged")) and c != "seconds"]
        for c in num:
            lc = c.lower()
            group = ("curriculum" if c in ("lam", "eps_t") else "loss" if "loss" in lc else
                     "accuracy" if any(k in lc for k in ("acc", "clean", "pgd", "robust", "aa")) else None)
            if group and c not in cols[group]:
                cols[group].append(c)
    if not cols["loss"] and not cols["accuracy"]:
        raise LandscapeError("no loss or accuracy columns to plot (columns: "
                             f"{', '.join(map(str, runs[0][0].columns))})")
    panels = [g for g in ("loss", "accuracy", "curriculum") if cols[g]]
    fig = new_figure(4.2 * len(panels) + 0.6, 4.2)
    axes = dict(zip(panels, fig.subplots(1, len(panels), squeeze=False)[0]))
    styles = ["-", "--", ":", "-."]
    many = len(runs) > 1
    for r, ((df, meta), name) in enumerate(zip(runs, names)):
        x = epochs(df)
        b = best_epoch(df, meta)
        for g in panels:
            ax = axes[g]
            for k, c in enumerate(cols[g]):
                if c not in df.columns:
                    continue
                color, ls = (f"C{r}", styles[k % 4]) if many else (f"C{k}", "-")
                label = COLUMN_NAMES.get(c, c.replace("_", " "))
                ax.plot(x, df[c], ls, color=color, marker="." if len(x) <= 30 else None,
                        label=(name if k == 0 and g == panels[0] else None) if many else label)
                if b is not None and g == "accuracy" and (c == "val_pgd" or (c == "val_clean" and "val_pgd" not in df)):
                    ax.plot([b], df[c].to_numpy()[x == b], "*", color=color, mec="k", mew=0.6, zorder=5,
                            ms=2.0 * float(matplotlib.rcParams["lines.markersize"]))
            if b is not None and not many:
                ax.axvline(b, color="0.4", ls=":", lw=1)
    for g, ax in axes.items():
        _epoch_axis(ax)
        ax.set_title({"loss": "loss", "accuracy": "accuracy",
                      "curriculum": "curriculum: λ and ε_t"}[g], fontsize="medium")
        h, _ = ax.get_legend_handles_labels()
        if many:
            h = [Line2D([], [], color="0.3", ls=styles[k % 4], label=COLUMN_NAMES.get(c, c.replace("_", " ")))
                 for k, c in enumerate(cols[g])] + (h if g == panels[0] else [])
        if g == "accuracy" and any(best_epoch(df, m) is not None for df, m in runs):
            h.append(Line2D([], [], ls="" if many else ":", marker="*", color="0.4", mfc="0.6", mec="k", mew=0.6,
                            ms=10, label="best epoch"))
        if g == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        if g == "curriculum":
            ax.set_ylabel("λ / ε_t")
        if h:
            add_legend(ax, h, **({"fontsize": "x-small"} if many else {}))
    infos = [describe(m) for _, m in runs]
    head = names[0] if len(runs) == 1 and names[0] else ""
    eps = infos[0]["eps"] if len({str(i['eps']) for i in infos}) == 1 else None
    ds = infos[0]["dataset"] if len({str(i['dataset']) for i in infos}) == 1 else None
    sub = ", ".join(x for x in (f"ε = {fmt_value(eps)}" if eps is not None else "", str(ds or "")) if x)
    set_title(fig, "training" + (f" — {head}" if head else "") + (f" ({sub})" if sub else ""))
    return fig

