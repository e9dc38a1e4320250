"""Figures for every result file of the toolkit. Each function returns a ``matplotlib.figure.Figure`` and never
calls ``plt.show()``. Save with ``fig.savefig("x.png")``.

Where figures live: in scripts, tests and the CLIs they are bare ``Figure`` objects (no pyplot registry,
nothing to close, nothing leaks in loops). Under Jupyter's inline or widget backends they are made through
pyplot, so that ``fig = plot_contourf(surf)`` shows at the end of the cell like any matplotlib figure (as
the cell's last expression it then shows twice, as ``plt.gcf()`` would: end the line with ``;``).

Surfaces: ``plot_curve`` (1D loss and accuracy), ``plot_contour`` (2D contour lines), ``plot_contourf``
(filled, log-spaced levels), ``plot_surface3d``, ``plot_compare`` (clean vs adversarial side by side on one
colour scale). Spectra: ``plot_eigenvalues``, ``plot_density``, ``plot_spectrum``. Training runs:
``plot_sharpness``, ``plot_training``. ``plot_result(path_or_obj, kind=None)`` picks one by content.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullLocator

from ..errors import LandscapeError
from ..io import read_json
from .surface import SurfaceResult, load_surface

SURFACE_KINDS = ("curve", "contour", "contourf", "surface3d", "compare")
SPECTRUM_KINDS = ("spectrum", "eigenvalues", "density")
RUN_KINDS = ("sharpness", "training")
KINDS = SURFACE_KINDS + SPECTRUM_KINDS + RUN_KINDS


def _figure(**kwargs: Any) -> Figure:
    """A new Figure: through pyplot under a Jupyter inline/widget backend (so it displays), else bare."""
    backend = str(matplotlib.rcParams._get_backend_or_none() or "").lower()
    if any(k in backend for k in ("inline", "ipympl", "widget", "nbagg")):
        import matplotlib.pyplot as plt
        return plt.figure(**kwargs)
    return Figure(**kwargs)


# --- inputs -------------------------------------------------------------------------------------------

def _surface(obj: Any) -> SurfaceResult:
    if isinstance(obj, SurfaceResult):
        return obj
    if isinstance(obj, dict):
        if obj.get("kind") not in (None, "surface") or "loss" not in obj or "x" not in obj:
            raise LandscapeError("not a surface result (needs x and loss)")
        return SurfaceResult.from_dict(obj)
    return load_surface(obj)


def _surfaces(objs: Any) -> list[SurfaceResult]:
    return [_surface(o) for o in (objs if isinstance(objs, (list, tuple)) else [objs])]


def _label(r: SurfaceResult, i: int = 0) -> str:
    s = r.settings or {}
    if not s:
        return f"#{i + 1}"
    att = s.get("attack") or {}
    lab = s.get("loss", "loss")
    if att:
        lab += f" (eps {att.get('eps'):g}, {att.get('mode')})"
    src = (s.get("info") or {}).get("checkpoint")
    return f"{Path(src).stem}: {lab}" if src else lab


def _field(r: SurfaceResult, field: str) -> np.ndarray:
    if field not in ("loss", "accuracy"):
        raise LandscapeError(f"unknown field {field!r}; choose loss or accuracy")
    z = np.asarray(r.loss if field == "loss" else r.accuracy, dtype=np.float64)
    return np.where(r.mask, z, np.nan)


def _axis_names(r: SurfaceResult) -> tuple[str, str]:
    kind = ((r.settings or {}).get("directions") or {}).get("kind")
    names = {"eigen": ("eigenvector 1", "eigenvector 2"), "pca": ("PC 1", "PC 2"),
             "interpolate": ("interpolation coefficient", "direction 2")}
    return names.get(kind, ("direction 1", "direction 2"))


def _need_2d(r: SurfaceResult, what: str) -> None:
    if r.dim != 2:
        raise LandscapeError(f"a {what} needs a 2D surface; this one is 1D (use kind 'curve')")


def _log_levels(lo: float, hi: float, n: int) -> np.ndarray:
    lo = max(lo, hi * 1e-6, 1e-12) if hi > 0 else 1e-12
    hi = max(hi, lo * 1.0001)
    return np.geomspace(lo, hi, n)


def _finite_range(zs: Sequence[np.ndarray]) -> tuple[float, float]:
    vals = np.concatenate([z[np.isfinite(z)].ravel() for z in zs]) if zs else np.zeros(0)
    if vals.size == 0:
        raise LandscapeError("the surface holds no computed points yet")
    return float(vals.min()), float(vals.max())


# --- surfaces -----------------------------------------------------------------------------------------

def plot_curve(results: Any, labels: Sequence[str] | None = None, log: bool = False) -> Figure:
    """1D surfaces: loss (left axis, solid) and accuracy (right axis, dashed) along the direction; several
    results (e.g. clean and adversarial) are overlaid on the same axes."""
    rs = _surfaces(results)
    fig = _figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    for i, r in enumerate(rs):
        if r.dim != 1:
            raise LandscapeError("a curve needs a 1D surface; this one is 2D (use contour, contourf or surface3d)")
        lab = labels[i] if labels else _label(r, i)
        color = f"C{i}"
        ax.plot(r.x, _field(r, "loss"), "-", color=color, marker="." if len(r.x) <= 60 else None, label=f"{lab} loss")
        ax2.plot(r.x, _field(r, "accuracy"), "--", color=color, label=f"{lab} accuracy")
    ax.set_xlabel(_axis_names(rs[0])[0])
    ax.set_ylabel("loss")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(-0.02, 1.02)
    if log:
        ax.set_yscale("log")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, fontsize="small", loc="outside lower center", ncols=2)
    ax.set_title("loss and accuracy along the direction")
    return fig


def _mark(ax: Any, r: SurfaceResult, z: np.ndarray) -> None:
    ax.plot([0], [0], "w+", markersize=10, markeredgewidth=1.5)
    if np.isfinite(z).any():
        j, i = np.unravel_index(np.nanargmin(z), z.shape)
        ax.plot([r.x[i]], [r.y[j]], "wx", markersize=7)  # type: ignore[index]


def plot_contour(result: Any, field: str = "loss", levels: int = 20, log: bool = True) -> Figure:
    """2D contour lines (log-spaced levels for the loss when ``log``), with labels; + marks the model, x the
    lowest point."""
    r = _surface(result)
    _need_2d(r, "contour plot")
    z = _field(r, field)
    lo, hi = _finite_range([z])
    use_log = log and field == "loss" and hi > 0
    lv = _log_levels(lo, hi, levels) if use_log else np.linspace(lo, hi if hi > lo else lo + 1e-9, levels)
    fig = _figure(figsize=(5.6, 4.8), layout="constrained")
    ax = fig.add_subplot()
    cs = ax.contour(r.x, r.y, np.ma.masked_invalid(z), levels=lv, cmap="viridis",
                    norm=LogNorm(lv[0], lv[-1]) if use_log else None)
    ax.clabel(cs, cs.levels[::max(1, len(cs.levels) // 6)], fontsize=7, fmt="%.3g")
    ax.plot([0], [0], "k+", markersize=10)
    ax.set_xlabel(_axis_names(r)[0])
    ax.set_ylabel(_axis_names(r)[1])
    ax.set_title(f"{_label(r)}: {field}")
    ax.set_aspect("auto")
    return fig


def plot_contourf(result: Any, field: str = "loss", levels: int = 30, log: bool = True) -> Figure:
    """Filled 2D contours; for the loss, levels are log-spaced (``LogNorm``) so low basins stay visible."""
    return plot_compare([result], field=field, levels=levels, log=log)


def plot_surface3d(result: Any, field: str = "loss", log: bool = False, elev: float = 35, azim: float = -60) -> Figure:
    """3D surface of the loss (or accuracy) over the 2D grid."""
    r = _surface(result)
    _need_2d(r, "3D surface")
    z = _field(r, field)
    X, Y = np.meshgrid(r.x, r.y)
    shown = np.log10(np.clip(z, 1e-12, None)) if log and field == "loss" else z
    fig = _figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, np.ma.masked_invalid(shown), cmap="viridis", linewidth=0, antialiased=True,
                    rstride=1, cstride=1)
    ax.set_xlabel(_axis_names(r)[0])
    ax.set_ylabel(_axis_names(r)[1])
    ax.set_zlabel(f"log10 {field}" if log and field == "loss" else field)
    ax.view_init(elev=elev, azim=azim)
    ax.set_title(f"{_label(r)}: {field}")
    return fig


def plot_compare(results: Any, labels: Sequence[str] | None = None, field: str = "loss", levels: int = 30,
                 log: bool = True) -> Figure:
    """Surfaces side by side on ONE colour scale (shared levels and norm, one colour bar), e.g. clean vs
    adversarial, or AT vs SAT. 1D surfaces are overlaid on shared axes instead."""
    rs = _surfaces(results)
    if all(r.dim == 1 for r in rs):
        return plot_curve(rs, labels=labels, log=log)
    for r in rs:
        _need_2d(r, "side-by-side comparison")
    zs = [_field(r, field) for r in rs]
    lo, hi = _finite_range(zs)
    use_log = log and field == "loss" and hi > 0
    if use_log:
        lv = _log_levels(lo, hi, levels)
        norm: Normalize = LogNorm(lv[0], lv[-1])
    else:
        lv = np.linspace(lo, hi if hi > lo else lo + 1e-9, levels)
        norm = Normalize(lv[0], lv[-1])
    n = len(rs)
    fig = _figure(figsize=(4.6 * n + 1.0, 4.3), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharex=False, sharey=True)[0]
    cf = None
    for i, (ax, r, z) in enumerate(zip(axes, rs, zs)):
        zz = np.clip(z, lv[0], lv[-1]) if use_log else z
        cf = ax.contourf(r.x, r.y, np.ma.masked_invalid(zz), levels=lv, norm=norm, cmap="viridis", extend="neither")
        ax.contour(r.x, r.y, np.ma.masked_invalid(zz), levels=lv[::max(1, levels // 8)], colors="k",
                   linewidths=0.4)
        _mark(ax, r, z)
        ax.set_xlabel(_axis_names(r)[0])
        if i == 0:
            ax.set_ylabel(_axis_names(r)[1])
        ax.set_title(labels[i] if labels else _label(r, i), fontsize="medium")
    cb = fig.colorbar(cf, ax=list(axes), shrink=0.9)
    if use_log:
        cb.set_ticks(np.geomspace(lv[0], lv[-1], 6))
        cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        cb.ax.yaxis.set_minor_locator(NullLocator())
    cb.set_label(field + (" (log scale)" if use_log else ""))
    return fig


# --- spectra ------------------------------------------------------------------------------------------

def _load_json_like(obj: Any) -> Any:
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if not p.is_file():
            raise LandscapeError(f"result file not found: {p}")
        try:
            return read_json(p)
        except (OSError, ValueError) as e:
            raise LandscapeError(f"{p} is not a JSON result file ({e})") from e
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj


def _spectrum_parts(d: Any) -> tuple[list[float] | None, dict | None, dict | None]:
    """(top eigenvalues, density {grid, density}, trace dict) from any spectrum-like JSON, tolerantly."""
    d = _load_json_like(d)
    if not isinstance(d, dict):
        raise LandscapeError("not a spectrum result")
    values = None
    for key in ("top_eigenvalues", "eigenvalues", "top_k", "eigen"):
        e = d.get(key)
        if isinstance(e, dict) and "values" in e:
            values = e["values"]
            break
        if isinstance(e, list) and e and isinstance(e[0], (int, float)):
            values = e
            break
    if values is None and isinstance(d.get("values"), list):
        values = d["values"]
    dens = None
    for key in ("density", "spectral_density", "esd"):
        e = d.get(key)
        if isinstance(e, dict) and "grid" in e and "density" in e:
            dens = e
            break
    if dens is None and isinstance(d.get("grid"), (list, np.ndarray)) and isinstance(d.get("density"), (list, np.ndarray)):
        dens = d
    trace = d.get("trace") if isinstance(d.get("trace"), dict) else None
    return ([float(v) for v in values] if values is not None else None), dens, trace


def _many(obj: Any) -> list:
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def _names(objs: list, labels: Sequence[str] | None) -> list[str]:
    if labels:
        return list(labels)
    out = []
    for i, o in enumerate(objs):
        out.append(Path(o).parent.name + "/" + Path(o).stem if isinstance(o, (str, os.PathLike)) else f"#{i + 1}")
    return out


def plot_eigenvalues(results: Any, labels: Sequence[str] | None = None, log: bool = False) -> Figure:
    """Top-k Hessian eigenvalues by rank, one marker series per result (e.g. AT vs SAT)."""
    objs = _many(results)
    fig = _figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    drawn = kmax = 0
    for i, (o, name) in enumerate(zip(objs, _names(objs, labels))):
        values, _, _ = _spectrum_parts(o)
        if not values:
            continue
        ranks = np.arange(1, len(values) + 1)
        ax.plot(ranks + (i - (len(objs) - 1) / 2) * 0.08, values, "o-", color=f"C{i}", label=name)
        drawn, kmax = drawn + 1, max(kmax, len(values))
    if not drawn:
        raise LandscapeError("no eigenvalues in the result(s)")
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    if log:
        ax.set_yscale("symlog")
    ax.set_xticks(np.arange(1, kmax + 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("top Hessian eigenvalues")
    return fig


def plot_density(results: Any, labels: Sequence[str] | None = None, log: bool = True) -> Figure:
    """Spectral density (SLQ) of the Hessian, log-scaled density axis by default; several results overlaid."""
    objs = _many(results)
    fig = _figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, (o, name) in enumerate(zip(objs, _names(objs, labels))):
        _, dens, _ = _spectrum_parts(o)
        if not dens:
            continue
        grid, rho = np.asarray(dens["grid"], float), np.asarray(dens["density"], float)
        if log:
            rho = np.clip(rho, max(rho.max() * 1e-12, 1e-300) if rho.size and rho.max() > 0 else 1e-300, None)
        ax.plot(grid, rho, color=f"C{i}", label=name)
        drawn += 1
    if not drawn:
        raise LandscapeError("no spectral density in the result(s)")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Hessian eigenvalue density")
    return fig


def plot_spectrum(result: Any, log: bool = True) -> Figure:
    """Whatever a spectrum JSON holds: eigenvalues and/or density, side by side (trace in the title)."""
    values, dens, trace = _spectrum_parts(result)
    panels = [p for p, present in (("eig", values), ("dens", dens)) if present]
    if not panels:
        raise LandscapeError("the spectrum result holds neither eigenvalues nor a density")
    fig = _figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        if p == "eig":
            ax.plot(np.arange(1, len(values) + 1), values, "o-")  # type: ignore[arg-type]
            ax.set_xlabel("rank")
            ax.set_ylabel("eigenvalue")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title("top eigenvalues")
        else:
            grid, rho = np.asarray(dens["grid"], float), np.asarray(dens["density"], float)  # type: ignore[index]
            if log and rho.size and rho.max() > 0:
                rho = np.clip(rho, rho.max() * 1e-12, None)
                ax.set_yscale("log")
            ax.plot(grid, rho)
            ax.set_xlabel("eigenvalue")
            ax.set_ylabel("density")
            ax.set_title("spectral density")
        ax.grid(alpha=0.3)
    if trace and trace.get("estimate") is not None:
        fig.suptitle(f"trace = {float(trace['estimate']):.4g}"
                     + (f" (standard error {float(trace['stderr']):.2g})" if trace.get("stderr") is not None else ""))
    return fig


# --- training runs ------------------------------------------------------------------------------------

def _frame(obj: Any):
    import pandas as pd
    if isinstance(obj, pd.DataFrame):
        return obj
    p = Path(obj)
    if p.is_dir():
        p = p / "metrics.csv"
    if not p.is_file():
        raise LandscapeError(f"metrics file not found: {p}")
    try:
        return pd.read_csv(p)
    except (OSError, ValueError) as e:
        raise LandscapeError(f"cannot read {p} as CSV ({e})") from e


def _sharp_column(df) -> str | None:
    for c in df.columns:
        if c.lower() == "sharpness":
            return c
    for c in df.columns:
        lc = c.lower()
        if ("sharp" in lc or "top_eig" in lc or "lambda_max" in lc or "eigenvalue" in lc) and \
                np.issubdtype(df[c].dtype, np.number):
            return c
    return None


def plot_sharpness(metrics: Any, labels: Sequence[str] | None = None) -> Figure:
    """Sharpness (top Hessian eigenvalue) per epoch from a metrics DataFrame or a run's metrics.csv; several
    runs overlaid. Rows without a sharpness value are skipped."""
    objs = _many(metrics)
    fig = _figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for i, (o, name) in enumerate(zip(objs, _names(objs, labels))):
        df = _frame(o)
        col = _sharp_column(df)
        if col is None:
            raise LandscapeError(f"{name}: no sharpness column (columns: {', '.join(map(str, df.columns))})")
        x = df["epoch"] if "epoch" in df.columns else np.arange(1, len(df) + 1)
        ok = df[col].notna()
        ax.plot(np.asarray(x)[ok], df[col][ok], "o-", color=f"C{i}", label=name if len(objs) > 1 else col)
    ax.set_xlabel("epoch")
    ax.set_ylabel("sharpness (top eigenvalue)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("sharpness during training")
    return fig


def plot_training(metrics: Any) -> Figure:
    """Training curves from a metrics DataFrame / metrics.csv: loss columns on the left, accuracy columns
    (val_clean, val_pgd, ...) on the right, by epoch."""
    df = _frame(metrics)
    x = df["epoch"] if "epoch" in df.columns else np.arange(1, len(df) + 1)
    num = [c for c in df.columns if c != "epoch" and np.issubdtype(df[c].dtype, np.number) and df[c].notna().any()]
    losses = [c for c in num if "loss" in c.lower()]
    accs = [c for c in num if any(k in c.lower() for k in ("acc", "clean", "pgd", "robust", "aa"))
            and c not in losses]
    if not losses and not accs:
        raise LandscapeError(f"no loss or accuracy columns to plot (columns: {', '.join(map(str, df.columns))})")
    fig = _figure(figsize=(10.0, 4.0), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    for i, c in enumerate(losses):
        a1.plot(x, df[c], "-", color=f"C{i}", label=c)
    for i, c in enumerate(accs):
        a2.plot(x, df[c], "-", color=f"C{i}", label=c)
    for ax, t in ((a1, "loss"), (a2, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


# --- dispatch -----------------------------------------------------------------------------------------

def detect_kind(obj: Any) -> str:
    """What a result is: ``surface``, ``spectrum`` or ``run`` (metrics table)."""
    import pandas as pd
    if isinstance(obj, SurfaceResult):
        return "surface"
    if isinstance(obj, pd.DataFrame):
        return "run"
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.suffix == ".csv" or (p.is_dir() and (p / "metrics.csv").is_file() and not (p / "surface.json").is_file()):
            return "run"
        if p.suffix == ".npz" or (p.is_dir() and (p / "surface.json").is_file()):
            return "surface"
        obj = _load_json_like(p)
    if isinstance(obj, dict):
        if obj.get("kind") == "surface" or ("x" in obj and "loss" in obj):
            return "surface"
        values, dens, trace = _spectrum_parts(obj)
        if values or dens or trace:
            return "spectrum"
    raise LandscapeError("cannot tell what this result is (expected a surface, a spectrum, or a metrics.csv)")


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
        rs = _surfaces(objs)
        if kind is None:
            kind = "compare" if len(rs) > 1 else ("curve" if rs[0].dim == 1 else "contourf")
        if kind not in SURFACE_KINDS:
            raise LandscapeError(f"kind {kind!r} does not apply to a surface; choose from {', '.join(SURFACE_KINDS)}")
        if kind in ("curve", "compare"):
            return kind, (plot_curve if kind == "curve" else plot_compare), rs
        if len(rs) > 1:
            raise LandscapeError(f"kind {kind!r} draws one surface; use 'compare' for several")
        return kind, {"contour": plot_contour, "contourf": plot_contourf, "surface3d": plot_surface3d}[kind], rs[0]
    if what_one == "spectrum":
        if kind is None:
            kind = "density" if len(objs) > 1 and all(_spectrum_parts(o)[1] for o in objs) else \
                ("eigenvalues" if len(objs) > 1 else "spectrum")
        if kind not in SPECTRUM_KINDS:
            raise LandscapeError(f"kind {kind!r} does not apply to a spectrum; choose from {', '.join(SPECTRUM_KINDS)}")
        if kind == "spectrum":
            if len(objs) > 1:
                raise LandscapeError("kind 'spectrum' draws one result; use 'eigenvalues' or 'density' for several")
            return kind, plot_spectrum, objs[0]
        return kind, (plot_density if kind == "density" else plot_eigenvalues), objs
    if kind is None:
        kind = "sharpness" if all(_sharp_column(_frame(o)) for o in objs) else "training"
    if kind not in RUN_KINDS:
        raise LandscapeError(f"kind {kind!r} does not apply to training metrics; choose from {', '.join(RUN_KINDS)}")
    if kind == "training":
        if len(objs) > 1:
            raise LandscapeError("kind 'training' draws one run")
        return kind, plot_training, objs[0]
    return kind, plot_sharpness, objs


def plot_result(obj: Any, kind: str | None = None, **kwargs: Any) -> Figure:
    """A figure for any result: a path (surface folder/JSON/NPZ, spectrum JSON, metrics.csv or run folder),
    a dict, a result object, or a list of them (compared on shared scales). ``kind`` defaults to: curve
    (1D surface), contourf (2D surface), compare (several surfaces), spectrum, density (several spectra),
    sharpness (metrics with a sharpness column), else training. Keyword arguments (``field``, ``log``,
    ``labels``, ...) go to the plotting function when it takes them and are ignored otherwise."""
    _, fn, arg = resolve_plot(obj, kind)
    return draw(fn, arg, **kwargs)


def draw(fn: Callable[..., Figure], arg: Any, **kwargs: Any) -> Figure:
    """``fn(arg, **kwargs)`` with only the keyword arguments ``fn`` takes (None values dropped): the second
    half of ``plot_result``, for a caller that already has ``resolve_plot``'s answer."""
    import inspect
    accepted = inspect.signature(fn).parameters
    return fn(arg, **{k: v for k, v in kwargs.items() if k in accepted and v is not None})


__all__ = ["plot_curve", "plot_contour", "plot_contourf", "plot_surface3d", "plot_compare", "plot_eigenvalues",
           "plot_density", "plot_spectrum", "plot_sharpness", "plot_training", "plot_result", "resolve_plot",
           "draw", "detect_kind",
           "KINDS"]
