"""Hessian spectra: ``plot_eigenvalues`` (top-k by rank, open markers where not converged), ``plot_density``
(SLQ densities overlaid, the eigenvalues as rug ticks), ``plot_spectrum`` (whatever one spectrum result holds,
the trace in the title)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator

from ..errors import LandscapeError
from ..results import DENSITY_FLOOR, caption, describe, format_trace, spectrum_parts
from .labels import as_list, labels_and_title
from .style import add_legend, new_figure, set_title


def _eig_markers(ax: Any, x: np.ndarray, values: list[float], conv: list[bool] | None, color: str,
                 label: str) -> bool:
    """Eigenvalues as markers: filled where converged, open (and ringed) where not; True if any is not."""
    ok = np.ones(len(values), bool) if conv is None else np.asarray(conv, bool)
    v = np.asarray(values)
    ax.plot(x[ok], v[ok], "o", color=color, label=label, ls="")
    if (~ok).any():
        ax.plot(x[~ok], v[~ok], "o", mfc="none", mec=color, ls="", label=None if ok.any() else label)
        return True
    return False


def _unconverged_handle() -> Line2D:
    """The legend entry of the open (not converged) markers."""
    return Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="not converged (residual > tol)")


def plot_eigenvalues(results: Any, labels: Sequence[str] | None = None, log: bool = False) -> Figure:
    """Top-k Hessian eigenvalues by rank as markers, one series per result (e.g. AT vs SAT); open markers
    are pairs whose residual did not reach the tolerance."""
    objs = as_list(results)
    parts = [(spectrum_parts(o)[0], describe(o)) for o in objs]
    names, title = labels_and_title([p[1] for p in parts], "top Hessian eigenvalues", labels)
    fig = new_figure(6.0, 4.2)
    ax = fig.add_subplot()
    drawn = kmax = 0
    any_unconv = False
    for i, ((eig, _), name) in enumerate(zip(parts, names)):
        if not eig or not np.isfinite(eig["values"]).any():   # nothing to draw: no empty panel passed off
            continue
        bad = int((~np.isfinite(eig["values"])).sum())
        if bad:
            name = f"{name} ({bad} not finite, not drawn)"
        ranks = np.arange(1, len(eig["values"]) + 1) + (i - (len(objs) - 1) / 2) * 0.08
        any_unconv |= _eig_markers(ax, ranks, eig["values"], eig["converged"], f"C{i}", name)
        drawn, kmax = drawn + 1, max(kmax, len(eig["values"]))
    if not drawn:
        raise LandscapeError("no finite eigenvalues in the result(s) (NaN or missing): nothing to draw")
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    if log:
        ax.set_yscale("symlog")
    ax.set_xticks(np.arange(1, kmax + 1) if kmax <= 12 else MaxNLocator(10, integer=True).tick_values(1, kmax))
    ax.grid(alpha=0.3)
    h, lab = ax.get_legend_handles_labels()
    if any_unconv:
        h.append(_unconverged_handle())
    add_legend(ax, h)
    set_title(ax, title)
    return fig


def _density_axis(ax: Any, series: list[tuple[dict, dict | None, str, str]], log: bool) -> None:
    """Densities (floored at DENSITY_FLOOR of the peak on a log axis) with the top-k eigenvalues as rug ticks."""
    peak = max(float(np.max(d["density"])) for d, _, _, _ in series)
    floor = peak * DENSITY_FLOOR if peak > 0 else 1e-12
    rug = False
    for dens, eig, color, name in series:
        grid, rho = np.asarray(dens["grid"], float), np.asarray(dens["density"], float)
        ax.plot(grid, np.clip(rho, floor * 0.5, None) if log else rho, color=color, label=name)
        if eig and eig["values"]:
            ax.plot(eig["values"], np.full(len(eig["values"]), 0.0), "|", color=color, ms=10, mew=1.2,
                    transform=ax.get_xaxis_transform(), clip_on=False)
            rug = True
    if log:
        ax.set_yscale("log")
        ax.set_ylim(floor, peak * 3)
        ax.yaxis.set_major_locator(LogLocator(numticks=8))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.xaxis.set_major_locator(MaxNLocator(8))
    ax.grid(alpha=0.3)
    h, _ = ax.get_legend_handles_labels()
    if rug:
        h.append(Line2D([], [], ls="", marker="|", color="k", ms=10, mew=1.2, label="top-k eigenvalues (Lanczos)"))
    add_legend(ax, h)


def plot_density(results: Any, labels: Sequence[str] | None = None, log: bool = True) -> Figure:
    """Spectral density (SLQ) of the Hessian; several results overlaid. The log axis starts at
    ``DENSITY_FLOOR`` (1e-6) of the highest peak; a result that also holds top-k eigenvalues shows them as rug
    ticks along the bottom."""
    objs = as_list(results)
    parts = [(spectrum_parts(o), describe(o)) for o in objs]
    names, title = labels_and_title([p[1] for p in parts], "Hessian eigenvalue density", labels)
    series = [(p[0][1], p[0][0], f"C{i}", name) for i, (p, name) in enumerate(zip(parts, names)) if p[0][1]]
    if not series:
        raise LandscapeError("no spectral density in the result(s)")
    fig = new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    _density_axis(ax, series, log)
    set_title(ax, title)
    return fig


def plot_spectrum(result: Any, log: bool = True) -> Figure:
    """Whatever one spectrum JSON holds: eigenvalues (markers, open where not converged) and/or the density
    (with the eigenvalues as rug ticks), side by side; the trace ± its 95% half-width in the title."""
    eig, dens, trace = spectrum_parts(result)
    info = describe(result)
    if eig and not np.isfinite(eig["values"]).any():
        eig = None   # NaN eigenvalues: no panel that looks like a result
    panels = [p for p, present in (("eig", eig), ("dens", dens)) if present]
    if not panels:
        raise LandscapeError("the spectrum result holds neither finite eigenvalues nor a density")
    fig = new_figure(5.2 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        if p == "eig":
            unconv = _eig_markers(ax, np.arange(1, len(eig["values"]) + 1), eig["values"],  # type: ignore[index]
                                  eig["converged"], "C0", "eigenvalue (converged)")  # type: ignore[index]
            ax.set_xlabel("rank")
            ax.set_ylabel("eigenvalue")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            h, _ = ax.get_legend_handles_labels()
            add_legend(ax, h + ([_unconverged_handle()] if unconv else []))
            ax.set_title("top eigenvalues")
        else:
            _density_axis(ax, [(dens, eig, "C0", "density (SLQ)")], log)  # type: ignore[list-item]
            ax.set_title("spectral density")
    head = " ".join(x for x in (info["name"], caption(info)) if x)
    tr = f"trace = {format_trace(trace)}" if trace else ""
    if head or tr:
        set_title(fig, "; ".join(x for x in (head, tr) if x))
    return fig

