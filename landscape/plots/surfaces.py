"""Loss surfaces: ``plot_curve`` (1D loss and accuracy), ``plot_contour`` (2D contour lines), ``plot_contourf``
(filled, log-spaced levels; a PCA surface shows the training trajectory), ``plot_surface3d``, ``plot_compare``
(several surfaces side by side on one colour scale; refuses different direction kinds or grids unless
``mismatch="warn"``)."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullLocator

from ..analysis.surface import SurfaceResult
from ..errors import LandscapeError
from ..results import as_surface, as_surfaces, axis_names, describe, finite_range, surface_directions, surface_field
from .labels import labels_and_title, surface_title
from .style import add_legend, colour_scale, new_figure, round_levels, set_title


def _need_2d(r: SurfaceResult, what: str) -> None:
    """Refuse a 1D surface where a 2D one is drawn."""
    if r.dim != 2:
        raise LandscapeError(f"a {what} needs a 2D surface; this one is 1D (use kind 'curve')")


def _check_comparable(rs: Sequence[SurfaceResult], mismatch: str) -> None:
    """Refuse (``mismatch="refuse"``) or warn (``"warn"``) when surfaces drawn together differ in direction
    kind or grid; ``"ignore"`` draws them silently."""
    if mismatch not in ("refuse", "warn", "ignore"):
        raise LandscapeError(f"mismatch must be refuse, warn or ignore, got {mismatch!r}")
    problems = []
    kinds = [surface_directions(r).get("kind") or "unknown" for r in rs]
    norms = [surface_directions(r).get("normalization") for r in rs]
    if len(set(kinds)) > 1 or len(set(map(str, norms))) > 1:
        problems.append("different direction kinds (" + ", ".join(
            k + (f"/{n}" if n else "") for k, n in zip(kinds, norms)) + ")")
    grids = [(tuple(np.round(r.x, 9)), None if r.y is None else tuple(np.round(r.y, 9))) for r in rs]
    if len(set(grids)) > 1:
        problems.append("different grids (" + ", ".join(
            f"{len(r.x)}" + (f"x{len(r.y)}" if r.y is not None else "") + f" on [{r.x.min():g}, {r.x.max():g}]"
            for r in rs) + ")")
    if not problems or mismatch == "ignore":
        return
    msg = "the surfaces are not comparable: " + "; ".join(problems)
    if mismatch == "refuse":
        raise LandscapeError(msg + " (draw them separately, or allow it with mismatch='warn' / --allow-mismatch)")
    warnings.warn(msg, stacklevel=3)


def _legend_handles(field: str, trajectory: bool, best_marked: bool = True) -> list[Line2D]:
    """The markers' legend: the model, the best grid point when some panel marks it, the trajectory."""
    best = "lowest loss" if field == "loss" else "highest accuracy"
    h = [Line2D([], [], ls="", marker="P", mfc="w", mec="k", ms=9, label="model (origin)")]
    if best_marked:
        h.append(Line2D([], [], ls="", marker="X", mfc="w", mec="k", ms=8, label=f"{best} (not at the model)"))
    if trajectory:
        h.append(Line2D([], [], color="w", marker="o", ms=4, mfc="w", mec="k", lw=1.2,
                        label="training trajectory (checkpoints)"))
    return h


def _trajectory(r: SurfaceResult) -> np.ndarray | None:
    """The training trajectory's coordinates in a PCA plane (checkpoints, then the model at the origin)."""
    d = surface_directions(r)
    coords = d.get("coords")
    if d.get("kind") != "pca" or not coords:
        return None
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < (2 if r.dim == 2 else 1):
        return None
    return np.vstack([c[:, :r.dim], np.zeros((1, r.dim))])


def _mark(ax: Any, r: SurfaceResult, z: np.ndarray, field: str) -> tuple[bool, bool]:
    """Mark the model (filled +), the best point (filled x: lowest loss / highest accuracy) unless it is the
    model, and on a PCA plane the training trajectory; returns (trajectory drawn, best point drawn)."""
    t = _trajectory(r)
    best = False
    if t is not None:
        ax.plot(t[:, 0], t[:, 1], "-o", color="w", ms=4, mfc="w", mec="k", lw=1.2, zorder=4)
    ms = 1.4 * float(matplotlib.rcParams["lines.markersize"])
    ax.plot([0], [0], "P", mfc="w", mec="k", ms=ms, zorder=6)
    if np.isfinite(z).any():
        j, i = np.unravel_index(np.nanargmin(z) if field == "loss" else np.nanargmax(z), z.shape)
        if not (r.x[i] == 0 and r.y[j] == 0):  # type: ignore[index]
            ax.plot([r.x[i]], [r.y[j]], "X", mfc="w", mec="k", ms=ms, zorder=6)  # type: ignore[index]
            best = True
    return t is not None, best


def plot_curve(results: Any, labels: Sequence[str] | None = None, log: bool = False,
               mismatch: str = "refuse") -> Figure:
    """1D surfaces: loss (left axis, solid) and accuracy (right axis, dashed) along the direction; several
    results (e.g. clean and adversarial) are overlaid on the same axes."""
    rs = as_surfaces(results)
    for r in rs:
        if r.dim != 1:
            raise LandscapeError("a curve needs a 1D surface; this one is 2D (use contour, contourf or surface3d)")
    if len(rs) > 1:
        _check_comparable(rs, mismatch)
    names, title = labels_and_title([describe(r) for r in rs], "loss and accuracy along the direction", labels)
    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    for i, (r, lab) in enumerate(zip(rs, names)):
        color = f"C{i}"
        ax.plot(r.x, surface_field(r, "loss"), "-", color=color, marker="." if len(r.x) <= 60 else None,
                label=f"{lab}: loss")
        ax2.plot(r.x, surface_field(r, "accuracy"), "--", color=color, label=f"{lab}: accuracy")
    ax.axvline(0, color="0.5", lw=0.6, ls=":")
    xnames = list(dict.fromkeys(axis_names(r)[0] for r in rs))
    ev = [(surface_directions(r).get("eigenvalues") or [None])[0] for r in rs]
    if len(xnames) > 1 and all(surface_directions(r).get("kind") == "eigen" for r in rs) and None not in ev:
        xnames = ["eigvec 1 of each model (λ = " + ", ".join(f"{v:.3g}" for v in ev) + ")"]
    ax.set_xlabel(xnames[0] if len(xnames) == 1 else "direction 1 (" + "; ".join(xnames) + ")")
    ax.set_ylabel("loss (solid)")
    ax2.set_ylabel("accuracy (dashed)")
    ax2.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    if log:
        ax.set_yscale("log")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    h1.append(Line2D([], [], color="0.5", lw=0.6, ls=":"))
    l1.append("model (origin)")
    for h, lab in zip(h1 + h2, l1 + l2):
        h.set_label(lab)
    add_legend(fig, h1 + h2, loc="outside lower center", ncols=2)
    set_title(ax, title)
    return fig


def plot_contour(result: Any, field: str = "loss", levels: int = 20, log: bool = True) -> Figure:
    """2D contour lines at round values (log-spaced for the loss when ``log`` and it spans a factor 3 or more),
    labelled; + marks the model, x the lowest point, and a PCA plane shows the training trajectory."""
    r = as_surface(result)
    _need_2d(r, "contour plot")
    z = surface_field(r, field)
    lo, hi = finite_range([z])
    _, norm, _, use_log = colour_scale(lo, hi, log and field == "loss", levels)
    lv = round_levels(lo, hi, use_log, levels)
    fig = new_figure(5.6, 5.0)
    ax = fig.add_subplot()
    if len(lv):
        cs = ax.contour(r.x, r.y, np.ma.masked_invalid(z), levels=lv, cmap="viridis", norm=norm)
        ax.clabel(cs, cs.levels[::max(1, len(cs.levels) // 5)], fontsize="x-small", fmt="%g", inline_spacing=2)
    traj, best = _mark(ax, r, z, field)
    xn, yn = axis_names(r)
    ax.set_xlabel(xn)
    ax.set_ylabel(yn)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))
    set_title(ax, surface_title(r, field))
    add_legend(fig, _legend_handles(field, traj, best), loc="outside lower center", ncols=3)
    return fig


def plot_contourf(result: Any, field: str = "loss", levels: int = 30, log: bool = True) -> Figure:
    """Filled 2D contours; for the loss, levels are log-spaced (``LogNorm``) so low basins stay visible."""
    return plot_compare([result], field=field, levels=levels, log=log)


def plot_surface3d(result: Any, field: str = "loss", log: bool = False, elev: float = 35, azim: float = -60) -> Figure:
    """3D surface of the loss (or accuracy) over the 2D grid, with a colour bar. One surface drawn as a
    single mesh (no second artist to interleave with), so matplotlib's painter ordering has nothing to get
    wrong; masked (not computed) points are left out."""
    r = as_surface(result)
    _need_2d(r, "3D surface")
    z = surface_field(r, field)
    X, Y = np.meshgrid(r.x, r.y)
    lo, hi = finite_range([z])
    use_log = log and field == "loss" and lo > 0
    shown = np.log10(z) if use_log else z
    fig = new_figure(6.4, 5.2)
    ax = fig.add_subplot(projection="3d")
    slo, shi = finite_range([shown])
    norm = Normalize(slo, shi if shi > slo else slo + 1e-9)
    surf = ax.plot_surface(X, Y, np.ma.masked_invalid(shown), cmap="viridis", norm=norm, linewidth=0,
                           antialiased=False, rstride=1, cstride=1, shade=False)
    xn, yn = axis_names(r)
    ax.set_xlabel(xn, fontsize="small")
    ax.set_ylabel(yn, fontsize="small")
    zl = f"log10 {field}" if use_log else field
    ax.set_zlabel(zl, fontsize="small")
    for a in (ax.xaxis, ax.yaxis, ax.zaxis):
        a.set_major_locator(MaxNLocator(5))
    ax.view_init(elev=elev, azim=azim)
    cb = fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.08)
    cb.set_label(zl)
    set_title(ax, surface_title(r, field))
    return fig


def plot_compare(results: Any, labels: Sequence[str] | None = None, field: str = "loss", levels: int = 30,
                 log: bool = True, mismatch: str = "refuse") -> Figure:
    """Surfaces side by side on ONE colour scale (shared levels and norm, one colour bar with ticks at round
    values), e.g. clean vs adversarial, or AT vs SAT; up to 3 per row. 1D surfaces are overlaid on shared
    axes instead. Surfaces with different direction kinds or grids are refused (``mismatch="warn"``: drawn
    with a warning)."""
    rs = as_surfaces(results)
    if all(r.dim == 1 for r in rs):
        return plot_curve(rs, labels=labels, log=log, mismatch=mismatch)
    for r in rs:
        _need_2d(r, "side-by-side comparison")
    if len(rs) > 1:
        _check_comparable(rs, mismatch)
    zs = [surface_field(r, field) for r in rs]
    lo, hi = finite_range(zs)
    lv, norm, ticks, use_log = colour_scale(lo, hi, log and field == "loss", levels)
    lines = round_levels(lo, hi, use_log)
    infos = [describe(r) for r in rs]
    names, title = labels_and_title(infos, "", labels, noun=field)
    title = title or field
    n = len(rs)
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig = new_figure(3.9 * ncols + 1.4, 3.6 * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    cf = None
    traj = best = False
    for i, (ax, r, z) in enumerate(zip(axes, rs, zs)):
        zz = np.clip(z, lv[0], lv[-1])
        cf = ax.contourf(r.x, r.y, np.ma.masked_invalid(zz), levels=lv, norm=norm, cmap="viridis")
        if len(lines):
            ax.contour(r.x, r.y, np.ma.masked_invalid(zz), levels=lines, colors="k", linewidths=0.4, alpha=0.6)
        drawn = _mark(ax, r, z, field)
        traj, best = traj or drawn[0], best or drawn[1]
        xn, yn = axis_names(r)
        ax.set_xlabel(xn)
        ax.set_ylabel(yn)
        ax.label_outer()
        if n > 1 and len({axis_names(q) for q in rs}) > 1:   # eigvec axes of different models: label each panel
            ax.set_xlabel(xn, fontsize="small")
            ax.set_ylabel(yn, fontsize="small")
            ax.xaxis.label.set_visible(True)
            ax.yaxis.label.set_visible(True)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(names[i] if n > 1 or labels else (infos[0]["name"] or field), fontsize="medium")
    for ax in axes[n:]:
        ax.set_visible(False)
    cb = fig.colorbar(cf, ax=list(axes[:n]), shrink=0.9)
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{t:g}" for t in ticks])
    cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.set_label(field + (" (log scale)" if use_log else ""))
    add_legend(fig, _legend_handles(field, traj, best), loc="outside lower center", ncols=3)
    set_title(fig, title if n > 1 else surface_title(rs[0], field))
    if n == 1:
        axes[0].set_title("")
    return fig

