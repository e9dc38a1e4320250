"""The input-space landscape (``analysis.input_space``): ``plot_input_surface``."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..errors import LandscapeError
from ..results import describe, finite_range, fmt_value, load_result, result_kind
from .labels import as_list
from .style import colour_scale, new_figure, set_title


def plot_input_surface(results: Any, labels: Sequence[str] | None = None, log: bool = False) -> Figure:
    """The input-space landscape (``analysis.input_space``), one row per result on one colour scale: the mean
    loss over the (gradient, random) plane in units of eps; each kept sample's loss along the gradient
    direction (b = 0) with the mean in bold; each sample's input curvature (histogram) when computed."""
    objs = [load_result(o) for o in as_list(results)]
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
    fig = new_figure(4.2 * cols, 3.4 * len(objs))
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
    set_title(fig, "input-space loss landscape" + (f" (ε = {fmt_value(infos[0]['eps'])})" if len(eps) == 1
                                                 and infos[0]["eps"] is not None else ""))
    return fig

