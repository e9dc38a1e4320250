"""Figures for every result file of the toolkit. Each function returns a ``matplotlib.figure.Figure`` and never
calls ``plt.show()``. Save with ``fig.savefig("x.png")`` (or ``.pdf``).

Where figures live: in scripts, tests and the CLIs they are bare ``Figure`` objects (no pyplot registry,
nothing to close, nothing leaks in loops). Under Jupyter's inline or widget backends they are made through
pyplot, so that ``fig = plot_contourf(surf)`` shows at the end of the cell like any matplotlib figure (as
the cell's last expression it then shows twice, as ``plt.gcf()`` would: end the line with ``;``).

Surfaces: ``plot_curve`` (1D loss and accuracy), ``plot_contour`` (2D contour lines), ``plot_contourf``
(filled, log-spaced levels; a PCA surface shows the training trajectory), ``plot_surface3d``,
``plot_compare`` (several surfaces side by side on one colour scale; refuses different direction kinds or
grids unless ``mismatch="warn"``). Spectra: ``plot_eigenvalues``, ``plot_density``, ``plot_spectrum``.
Training runs: ``plot_sharpness``, ``plot_training`` (loss, accuracy and the curriculum, best epoch marked).
``plot_result(path_or_obj, kind=None)`` picks one from the result's ``kind`` (inferred for older files).

Titles, legends and axis names come from the results' settings (method, eps, loss, dataset, number of
samples, direction kind), never from file names. ``with paper_style(): fig = ...`` (or ``landscape-plot
--style paper``) makes single-column figures (3.3 in wide) with matching font sizes.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator

from ..errors import LandscapeError
from ..results import (DENSITY_FLOOR, RESULT_KINDS, as_surface, as_surfaces, axis_names, caption,  # noqa: F401
                       describe, finite_range, fmt_value, format_trace, load_result, result_kind, spectrum_parts,
                       surface_directions, surface_field, trace_interval)
from ..runs import (COLUMN_NAMES, best_epoch, epochs, is_numeric, pretty_method, read_runs,  # noqa: F401
                    sharpness_column)
from .surface import SurfaceResult

SURFACE_KINDS = ("curve", "contour", "contourf", "surface3d", "compare")
SPECTRUM_KINDS = ("spectrum", "eigenvalues", "density")
RUN_KINDS = ("sharpness", "training")
INPUT_KINDS = ("input",)
KINDS = SURFACE_KINDS + SPECTRUM_KINDS + RUN_KINDS + INPUT_KINDS
LINEAR_BELOW = 3.0            # colour scales are linear when max / min is below this
STYLES = {
    "default": {},
    "paper": {"figure.figsize": (3.3, 2.5), "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
              "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 6.5, "lines.linewidth": 1.0,
              "lines.markersize": 3.5, "axes.linewidth": 0.6, "xtick.major.width": 0.6,
              "ytick.major.width": 0.6, "savefig.dpi": 300, "pdf.fonttype": 42, "ps.fonttype": 42,
              "figure.constrained_layout.h_pad": 0.02, "figure.constrained_layout.w_pad": 0.02},
}


@contextlib.contextmanager
def paper_style(name: str = "paper") -> Iterator[None]:
    """Matplotlib settings of a named style (``paper``: single-column width 3.3 in, 8 pt fonts, 300 dpi, PDF
    fonts embedded as TrueType) for the figures made inside the block."""
    if name not in STYLES:
        raise LandscapeError(f"unknown style {name!r}; choose from {', '.join(STYLES)}")
    with matplotlib.rc_context(STYLES[name]):
        yield


def _figure(w: float, h: float, **kwargs: Any) -> Figure:
    """A new Figure of ``w`` x ``h`` inches at the default style (scaled to the style's width), constrained
    layout; through pyplot under a Jupyter inline/widget backend (so it displays), else bare."""
    scale = min(1.0, float(matplotlib.rcParams["figure.figsize"][0]) / 6.4)
    kwargs = {"figsize": (w * scale, h * scale), "layout": "constrained", **kwargs}
    backend = str(matplotlib.rcParams._get_backend_or_none() or "").lower()
    if any(k in backend for k in ("inline", "ipympl", "widget", "nbagg")):
        import matplotlib.pyplot as plt
        return plt.figure(**kwargs)
    return Figure(**kwargs)


def _title(obj: Any, text: str) -> None:
    """Set an axes' title or a figure's suptitle, wrapped to the width it has (narrow paper figures)."""
    import textwrap
    fig = obj if isinstance(obj, Figure) else obj.figure
    width_in = fig.get_size_inches()[0] * (1.0 if obj is fig else obj.get_position().width + 0.1)
    size = FontProperties(size=matplotlib.rcParams["font.size"]).get_size_in_points()
    chars = max(20, int(width_in * 72 / (0.52 * size)))
    text = text.replace(" = ", "\u00a0=\u00a0")      # never break "ε = 0.3"
    text = textwrap.fill(text, chars) if len(text) > chars else text
    if obj is fig:
        fig.suptitle(text, fontsize="medium")
    else:
        obj.set_title(text, fontsize="medium")


def _legend(obj: Any, handles: list, **kwargs: Any) -> Any:
    """A legend in a font and a number of columns that fit the figure (two columns on a narrow one)."""
    fig = obj if isinstance(obj, Figure) else obj.figure
    narrow = fig.get_size_inches()[0] < 4.5
    kwargs.setdefault("fontsize", "x-small" if narrow else "small")
    if narrow and len(handles) > 3:
        kwargs["ncols"] = max(kwargs.get("ncols", 1), 2)
    return obj.legend(handles=handles, **kwargs)


# --- what a result is, and what it says about itself -------------------------------------------------------

def _labels_and_title(infos: list[dict], what: str, labels: Sequence[str] | None = None,
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


# --- surfaces -----------------------------------------------------------------------------------------------

def _surface_title(r: SurfaceResult, field: str) -> str:
    """``AT: adversarial loss (ε = 0.3), n = 512`` (or ``... accuracy ...``) from the surface's settings."""
    info = describe(r)
    what = caption(info, noun=field) or field
    return f"{info['name']}: {what}" if info["name"] else what


def _need_2d(r: SurfaceResult, what: str) -> None:
    if r.dim != 2:
        raise LandscapeError(f"a {what} needs a 2D surface; this one is 1D (use kind 'curve')")


def colour_scale(lo: float, hi: float, log: bool, levels: int) -> tuple[np.ndarray, Normalize, np.ndarray, bool]:
    """(fill levels, norm, colour-bar ticks at round values, is_log) for values in [lo, hi]: log-spaced when
    ``log`` and max/min >= ``LINEAR_BELOW`` (positive values), else linear."""
    use_log = bool(log and lo > 0 and hi / lo >= LINEAR_BELOW)
    if use_log:
        lv = np.geomspace(lo, hi, levels)
        ticks = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
        ticks = ticks[(ticks >= lo * 0.999) & (ticks <= hi * 1.001)]
        if len(ticks) < 3:
            ticks = LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)).tick_values(lo, hi)
            ticks = ticks[(ticks >= lo * 0.999) & (ticks <= hi * 1.001)]
            if len(ticks) > 7:
                ticks = ticks[::2]
        return lv, LogNorm(lo, hi), ticks, True
    hi = hi if hi > lo else lo + 1e-9
    lv = np.linspace(lo, hi, levels)
    ticks = MaxNLocator(6).tick_values(lo, hi)
    return lv, Normalize(lo, hi), ticks[(ticks >= lo - 1e-12) & (ticks <= hi + 1e-12)], False


def _round_levels(lo: float, hi: float, use_log: bool, n: int = 8) -> np.ndarray:
    """Contour-line levels at round values (1, 2, 5 x 10^k on a log scale) strictly inside (lo, hi)."""
    if use_log:
        lv = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
        if np.sum((lv > lo) & (lv < hi)) < 4:
            lv = LogLocator(subs=tuple(range(1, 10))).tick_values(lo, hi)
    else:
        lv = MaxNLocator(n).tick_values(lo, hi)
    return lv[(lv > lo) & (lv < hi)]


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
    names, title = _labels_and_title([describe(r) for r in rs], "loss and accuracy along the direction", labels)
    fig = _figure(6.4, 4.4)
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
    _legend(fig, h1 + h2, loc="outside lower center", ncols=2)
    _title(ax, title)
    return fig


def plot_contour(result: Any, field: str = "loss", levels: int = 20, log: bool = True) -> Figure:
    """2D contour lines at round values (log-spaced for the loss when ``log`` and it spans a factor 3 or more),
    labelled; + marks the model, x the lowest point, and a PCA plane shows the training trajectory."""
    r = as_surface(result)
    _need_2d(r, "contour plot")
    z = surface_field(r, field)
    lo, hi = finite_range([z])
    _, norm, _, use_log = colour_scale(lo, hi, log and field == "loss", levels)
    lv = _round_levels(lo, hi, use_log, levels)
    fig = _figure(5.6, 5.0)
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
    _title(ax, _surface_title(r, field))
    _legend(fig, _legend_handles(field, traj, best), loc="outside lower center", ncols=3)
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
    fig = _figure(6.4, 5.2)
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
    _title(ax, _surface_title(r, field))
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
    lines = _round_levels(lo, hi, use_log)
    infos = [describe(r) for r in rs]
    names, title = _labels_and_title(infos, "", labels, noun=field)
    title = title or field
    n = len(rs)
    ncols = min(n, 3)
    nrows = (n + ncols - 1) // ncols
    fig = _figure(3.9 * ncols + 1.4, 3.6 * nrows + 0.9)
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
    _legend(fig, _legend_handles(field, traj, best), loc="outside lower center", ncols=3)
    _title(fig, title if n > 1 else _surface_title(rs[0], field))
    if n == 1:
        axes[0].set_title("")
    return fig


# --- spectra ------------------------------------------------------------------------------------------------

def _many(obj: Any) -> list:
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


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
    return Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="not converged (residual > tol)")


def plot_eigenvalues(results: Any, labels: Sequence[str] | None = None, log: bool = False) -> Figure:
    """Top-k Hessian eigenvalues by rank as markers, one series per result (e.g. AT vs SAT); open markers
    are pairs whose residual did not reach the tolerance."""
    objs = _many(results)
    parts = [(spectrum_parts(o)[0], describe(o)) for o in objs]
    names, title = _labels_and_title([p[1] for p in parts], "top Hessian eigenvalues", labels)
    fig = _figure(6.0, 4.2)
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
    _legend(ax, h)
    _title(ax, title)
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
    _legend(ax, h)


def plot_density(results: Any, labels: Sequence[str] | None = None, log: bool = True) -> Figure:
    """Spectral density (SLQ) of the Hessian; several results overlaid. The log axis starts at
    ``DENSITY_FLOOR`` (1e-6) of the highest peak; a result that also holds top-k eigenvalues shows them as rug
    ticks along the bottom."""
    objs = _many(results)
    parts = [(spectrum_parts(o), describe(o)) for o in objs]
    names, title = _labels_and_title([p[1] for p in parts], "Hessian eigenvalue density", labels)
    series = [(p[0][1], p[0][0], f"C{i}", name) for i, (p, name) in enumerate(zip(parts, names)) if p[0][1]]
    if not series:
        raise LandscapeError("no spectral density in the result(s)")
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    _density_axis(ax, series, log)
    _title(ax, title)
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
    fig = _figure(5.2 * len(panels), 4.2)
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
            _legend(ax, h + ([_unconverged_handle()] if unconv else []))
            ax.set_title("top eigenvalues")
        else:
            _density_axis(ax, [(dens, eig, "C0", "density (SLQ)")], log)  # type: ignore[list-item]
            ax.set_title("spectral density")
    head = " ".join(x for x in (info["name"], caption(info)) if x)
    tr = f"trace = {format_trace(trace)}" if trace else ""
    if head or tr:
        _title(fig, "; ".join(x for x in (head, tr) if x))
    return fig


# --- training runs ------------------------------------------------------------------------------------------

def _run_frames(metrics: Any) -> list[tuple[Any, dict]]:
    out: list = []
    for o in _many(metrics):
        out += read_runs(o)
    return out


def _epoch_axis(ax: Any) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    ax.grid(alpha=0.3)


def plot_sharpness(metrics: Any, labels: Sequence[str] | None = None) -> Figure:
    """Sharpness (top Hessian eigenvalue) per epoch from metrics DataFrames, metrics.csv files, run folders
    or a CSV of several runs (``method`` column); several runs overlaid, each run's best epoch starred."""
    runs = _run_frames(metrics)
    names, _ = _labels_and_title([describe(m) for _, m in runs], "", labels)
    fig = _figure(6.4, 4.2)
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
    _legend(ax, h)
    infos = [describe(m) for _, m in runs]
    _title(ax, "sharpness during training" + (f" (ε = {fmt_value(infos[0]['eps'])})" if infos[0]["eps"] is not None
                                                 and len({str(i['eps']) for i in infos}) == 1 else ""))
    return fig


def plot_training(metrics: Any, labels: Sequence[str] | None = None) -> Figure:
    """Training curves by epoch: losses, accuracies (training, validation clean and PGD) and, when the run
    records them, the curriculum (λ and ε_t) in a third panel; the best epoch is marked (dotted line, star).
    One run: a colour per quantity; several runs (or a CSV with a ``method`` column): a colour per run and a
    line style per quantity."""
    runs = _run_frames(metrics)
    names, _ = _labels_and_title([describe(m) for _, m in runs], "", labels)
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
    fig = _figure(4.2 * len(panels) + 0.6, 4.2)
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
            _legend(ax, h, **({"fontsize": "x-small"} if many else {}))
    infos = [describe(m) for _, m in runs]
    head = names[0] if len(runs) == 1 and names[0] else ""
    eps = infos[0]["eps"] if len({str(i['eps']) for i in infos}) == 1 else None
    ds = infos[0]["dataset"] if len({str(i['dataset']) for i in infos}) == 1 else None
    sub = ", ".join(x for x in (f"ε = {fmt_value(eps)}" if eps is not None else "", str(ds or "")) if x)
    _title(fig, "training" + (f" — {head}" if head else "") + (f" ({sub})" if sub else ""))
    return fig


# --- the input-space landscape ------------------------------------------------------------------------------

def plot_input_surface(results: Any, labels: Sequence[str] | None = None, log: bool = False) -> Figure:
    """The input-space landscape (``analysis.input_space``), one row per result on one colour scale: the mean
    loss over the (gradient, random) plane in units of eps; each kept sample's loss along the gradient
    direction (b = 0) with the mean in bold; each sample's input curvature (histogram) when computed."""
    objs = [load_result(o) for o in _many(results)]
    if any(result_kind(o) != "input_surface" for o in objs):
        raise LandscapeError("plot_input_surface draws input-space surfaces (landscape-surface --space input)")
    infos = [describe(o) for o in objs]
    names = list(labels) if labels else [i["name"] or f"result {k + 1}" for k, i in enumerate(infos)]
    if len(names) != len(objs):
        raise LandscapeError(f"{len(names)} labels for {len(objs)} results")
    means = [np.asarray(o["mean_loss"], dtype=float) for o in objs]
    lo, hi = finite_range(means)
    curv = any("curvature" in o for o in objs)
    cols = 3 if curv else 2
    fig = _figure(4.2 * cols, 3.4 * len(objs))
    axes = np.atleast_2d(fig.subplots(len(objs), cols, squeeze=False))
    for row, (o, name, mean) in enumerate(zip(objs, names, means)):
        a, b = np.asarray(o["a"], dtype=float), np.asarray(o["b"], dtype=float)
        levels, norm, ticks, use_log = colour_scale(lo, hi, log, 30)
        ax = axes[row, 0]
        cs = ax.contourf(a, b, mean.T, levels=levels, norm=norm, cmap="viridis", extend="both")
        fig.colorbar(cs, ax=ax, ticks=ticks, label="mean loss")
        ax.plot([0], [0], marker="*", color="white", markersize=9, markeredgecolor="black")
        ax.set_xlabel("a: along sign(∇ₓ loss) (× ε)")
        ax.set_ylabel("b: random signs (× ε)")
        ax.set_title(f"{name}: mean loss, n = {o['n']}")
        ax = axes[row, 1]
        j = int(np.argmin(np.abs(b)))
        for k, ex in enumerate(o.get("examples", [])):
            ax.plot(a, np.asarray(ex, dtype=float)[:, j], color="tab:blue", alpha=0.35, lw=0.8,
                    label="samples" if k == 0 else None)
        ax.plot(a, mean[:, j], color="black", lw=2, label="mean")
        ax.set_xlabel("a (× ε), b = 0")
        ax.set_ylabel("loss")
        if log:
            ax.set_yscale("log")
        zero = o.get("zero_gradient_samples", 0)
        ax.set_title(f"along the gradient ({zero} of {o['n']} zero gradients)")
        ax.legend(loc="upper left")
        if curv:
            ax = axes[row, 2]
            if "curvature" in o:
                c = np.asarray(o["curvature"]["per_sample"], dtype=float)
                c = c[np.isfinite(c)]
                ax.hist(c, bins=30, color="tab:orange")
                ax.axvline(np.median(c), color="black", lw=1, ls="--", label=f"median {np.median(c):.3g}")
                ax.legend()
            ax.set_xlabel("top eigenvalue of ∇²ₓ loss")
            ax.set_ylabel("samples")
            ax.set_title("input curvature")
    eps = {str(i["eps"]) for i in infos}
    _title(fig, "input-space loss landscape" + (f" (ε = {fmt_value(infos[0]['eps'])})" if len(eps) == 1
                                                 and infos[0]["eps"] is not None else ""))
    return fig


# --- dispatch -----------------------------------------------------------------------------------------------

def detect_kind(obj: Any) -> str:
    """The family of figures a result takes: ``surface``, ``spectrum`` or ``run`` (training metrics)."""
    kind = result_kind(obj)
    if kind in ("surface",):
        return "surface"
    if kind in ("spectrum", "eigenvalues", "density", "trace"):
        return "spectrum"
    if kind == "training":
        return "run"
    if kind == "input_surface":
        return "input"
    raise LandscapeError(f"nothing to draw for a result of kind {kind!r} (landscape-report tabulates it)")


def resolve_plot(obj: Any, kind: str | None = None) -> tuple[str, Any, Any]:
    """(kind, plotting function, its first argument) for ``obj`` (see ``plot_result``)."""
    objs = _many(obj)
    if not objs:
        raise LandscapeError("nothing to plot")
    if kind is not None and kind not in KINDS:
        raise LandscapeError(f"unknown plot kind {kind!r}; choose from {', '.join(KINDS)}")
    what = {detect_kind(o) for o in objs}
    if len(what) > 1:
        raise LandscapeError(f"cannot plot different kinds of results together ({', '.join(sorted(what))})")
    what_one = what.pop()
    if what_one == "surface":
        rs = as_surfaces(objs)
        if kind is None:
            kind = "compare" if len(rs) > 1 else ("curve" if rs[0].dim == 1 else "contourf")
        if kind not in SURFACE_KINDS:
            raise LandscapeError(f"kind {kind!r} does not apply to a surface; choose from {', '.join(SURFACE_KINDS)}")
        if kind in ("curve", "compare"):
            return kind, (plot_curve if kind == "curve" else plot_compare), rs
        if len(rs) > 1:
            raise LandscapeError(f"kind {kind!r} draws one surface; use 'compare' for several")
        return kind, {"contour": plot_contour, "contourf": plot_contourf, "surface3d": plot_surface3d}[kind], rs[0]
    if what_one == "input":
        if kind not in (None, "input"):
            raise LandscapeError(f"kind {kind!r} does not apply to an input-space surface; use 'input'")
        return "input", plot_input_surface, objs
    if what_one == "spectrum":
        if kind is None:
            kind = "density" if len(objs) > 1 and all(spectrum_parts(o)[1] for o in objs) else \
                ("eigenvalues" if len(objs) > 1 else "spectrum")
        if kind not in SPECTRUM_KINDS:
            raise LandscapeError(f"kind {kind!r} does not apply to a spectrum; choose from {', '.join(SPECTRUM_KINDS)}")
        if kind == "spectrum":
            if len(objs) > 1:
                raise LandscapeError("kind 'spectrum' draws one result; use 'eigenvalues' or 'density' for several")
            return kind, plot_spectrum, objs[0]
        return kind, (plot_density if kind == "density" else plot_eigenvalues), objs
    if kind is None:
        kind = "sharpness" if all(sharpness_column(df) for df, _ in _run_frames(objs)) else "training"
    if kind not in RUN_KINDS:
        raise LandscapeError(f"kind {kind!r} does not apply to training metrics; choose from {', '.join(RUN_KINDS)}")
    return kind, (plot_training if kind == "training" else plot_sharpness), objs


def plot_result(obj: Any, kind: str | None = None, **kwargs: Any) -> Figure:
    """A figure for any result: a path (surface folder/JSON/NPZ, spectrum JSON, metrics.csv or run folder),
    a dict, a result object, or a list of them (compared on shared scales). The result's ``kind`` (inferred
    for older files) picks the family; ``kind`` here defaults to: curve (1D surface), contourf (2D surface),
    compare (several surfaces), spectrum, density (several spectra), sharpness (metrics with a sharpness
    column), else training. Keyword arguments (``field``, ``log``, ``labels``, ``mismatch``, ...) go to the
    plotting function when it takes them and are ignored otherwise."""
    _, fn, arg = resolve_plot(obj, kind)
    return draw(fn, arg, **kwargs)


def draw(fn: Callable[..., Figure], arg: Any, **kwargs: Any) -> Figure:
    """``fn(arg, **kwargs)`` with only the keyword arguments ``fn`` takes (None values dropped): the second
    half of ``plot_result``, for a caller that already has ``resolve_plot``'s answer. An option that no
    plotting function takes (a misspelled ``lables=``) is an error, not silently dropped."""
    import inspect
    unknown = sorted(set(kwargs) - _plot_options())
    if unknown:
        raise LandscapeError(f"unknown plot option(s) {', '.join(unknown)}; the plotting functions take "
                             f"{', '.join(sorted(_plot_options()))}")
    accepted = inspect.signature(fn).parameters
    return fn(arg, **{k: v for k, v in kwargs.items() if k in accepted and v is not None})


def _plot_options() -> set[str]:
    """Every keyword option of the plotting functions that ``plot_result`` dispatches to."""
    import inspect
    fns = (plot_curve, plot_contour, plot_contourf, plot_surface3d, plot_compare, plot_eigenvalues, plot_density,
           plot_spectrum, plot_sharpness, plot_training, plot_input_surface)
    return {name for f in fns for name in list(inspect.signature(f).parameters)[1:]}


__all__ = ["plot_curve", "plot_contour", "plot_contourf", "plot_surface3d", "plot_compare", "plot_eigenvalues",
           "plot_density", "plot_spectrum", "plot_sharpness", "plot_training", "plot_input_surface", "plot_result", "resolve_plot",
           "draw", "detect_kind", "result_kind", "describe", "axis_names", "paper_style", "trace_interval",
           "format_trace", "best_epoch", "colour_scale", "KINDS", "RESULT_KINDS", "STYLES", "DENSITY_FLOOR"]
