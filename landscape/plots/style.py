"""How the figures look: named styles (``paper_style``), a new figure at the style's width, titles and legends
that fit it, and colour scales with round ticks."""
from __future__ import annotations

import contextlib
import textwrap
from typing import Any, Iterator

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import LogLocator, MaxNLocator

from ..errors import LandscapeError

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


def new_figure(w: float, h: float, **kwargs: Any) -> Figure:
    """A new Figure of ``w`` x ``h`` inches at the default style (scaled to the style's width), constrained
    layout; through pyplot under a Jupyter inline/widget backend (so it displays), else bare."""
    scale = min(1.0, float(matplotlib.rcParams["figure.figsize"][0]) / 6.4)
    kwargs = {"figsize": (w * scale, h * scale), "layout": "constrained", **kwargs}
    backend = str(matplotlib.rcParams._get_backend_or_none() or "").lower()
    if any(k in backend for k in ("inline", "ipympl", "widget", "nbagg")):
        import matplotlib.pyplot as plt
        return plt.figure(**kwargs)
    return Figure(**kwargs)


def set_title(obj: Any, text: str) -> None:
    """Set an axes' title or a figure's suptitle, wrapped to the width it has (narrow paper figures)."""
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


def add_legend(obj: Any, handles: list, **kwargs: Any) -> Any:
    """A legend in a font and a number of columns that fit the figure (two columns on a narrow one)."""
    fig = obj if isinstance(obj, Figure) else obj.figure
    narrow = fig.get_size_inches()[0] < 4.5
    kwargs.setdefault("fontsize", "x-small" if narrow else "small")
    if narrow and len(handles) > 3:
        kwargs["ncols"] = max(kwargs.get("ncols", 1), 2)
    return obj.legend(handles=handles, **kwargs)


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


def round_levels(lo: float, hi: float, use_log: bool, n: int = 8) -> np.ndarray:
    """Contour-line levels at round values (1, 2, 5 x 10^k on a log scale) strictly inside (lo, hi)."""
    if use_log:
        lv = LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi)
        if np.sum((lv > lo) & (lv < hi)) < 4:
            lv = LogLocator(subs=tuple(range(1, 10))).tick_values(lo, hi)
    else:
        lv = MaxNLocator(n).tick_values(lo, hi)
    return lv[(lv > lo) & (lv < hi)]
