"""Which figure a result takes: ``detect_kind`` (its family), ``resolve_plot`` (the plotting function and its
argument, from the result's ``kind`` or the one asked), ``plot_result`` and ``draw`` (the call, with only the
options the function takes); ``KINDS`` the figure kinds by family."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from matplotlib.figure import Figure

from ..errors import LandscapeError
from ..results import as_surfaces, result_kind, spectrum_parts
from ..runs import sharpness_column
from .inputs import plot_input_surface
from .labels import as_list
from .spectra import plot_density, plot_eigenvalues, plot_spectrum
from .surfaces import plot_compare, plot_contour, plot_contourf, plot_curve, plot_surface3d
from .training import plot_sharpness, plot_training, run_frames

SURFACE_KINDS = ("curve", "contour", "contourf", "surface3d", "compare")
SPECTRUM_KINDS = ("spectrum", "eigenvalues", "density")
RUN_KINDS = ("sharpness", "training")
INPUT_KINDS = ("input",)
KINDS = SURFACE_KINDS + SPECTRUM_KINDS + RUN_KINDS + INPUT_KINDS


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
    objs = as_list(obj)
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
        kind = "sharpness" if all(sharpness_column(df) for df, _ in run_frames(objs)) else "training"
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
    unknown = sorted(set(kwargs) - _plot_options())
    if unknown:
        raise LandscapeError(f"unknown plot option(s) {', '.join(unknown)}; the plotting functions take "
                             f"{', '.join(sorted(_plot_options()))}")
    accepted = inspect.signature(fn).parameters
    return fn(arg, **{k: v for k, v in kwargs.items() if k in accepted and v is not None})


def _plot_options() -> set[str]:
    """Every keyword option of the plotting functions that ``plot_result`` dispatches to."""
    fns = (plot_curve, plot_contour, plot_contourf, plot_surface3d, plot_compare, plot_eigenvalues, plot_density,
           plot_spectrum, plot_sharpness, plot_training, plot_input_surface)
    return {name for f in fns for name in list(inspect.signature(f).parameters)[1:]}

