"""The study's figures, drawn from its per-model files and per_model.csv alone (``draw``).

Every panel shows the mean over seeds with a +-1 s.d. bar, and each seed as a dot, so that a reader sees the
spread that the verdicts use. Figures (PNG, into the results folder):
  fig_eps_sweep.png     AT: top eigenvalue and Hutch++ trace of the adversarial loss against eps (claim 1)
  fig_methods.png       per grid eps: clean and PGD-20 test accuracy, top eigenvalue, per method (claims 2, 3)
  fig_flatness.png      eps 0.3: average- and worst-case loss increase against the radius, clean and adversarial
  fig_paths.png         eps 0.3: clean and re-attacked adversarial loss on the line from AT (a = 0) to each model
  fig_layers.png        eps 0.3: each layer's top eigenvalue of the adversarial and of the clean loss
  fig_surfaces_eigen.png / fig_surfaces_random.png   eps 0.3, seed 0: the 2D adversarial surfaces, one colour scale
``input_space_figure`` adds fig_input_space.png from input_space/NAME.json (``INPUT_LABELS``' models).
The figures are bare ``matplotlib.figure.Figure`` objects (no pyplot, whatever the backend), saved as PNG
through Agg. Cost: reading a few hundred kB of JSON; a few seconds of matplotlib.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..plots.save import save_figure
from ..names import pretty_method
from ..plots import plot_compare, plot_input_surface
from ..results import load_result   # the results owner reads result files
from .layout import METHODS as METHOD_ORDER, model_row, read_per_model

LAYER_NAMES = {"0": "conv1", "3": "conv2", "7": "fc1", "9": "fc2 (logits)"}   # cnn-small's weight layers
DPI = 150


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], constrained_layout: bool = True,
              **kwargs) -> tuple[Figure, object]:
    """``plt.subplots`` without pyplot: a bare Figure and its axes."""
    fig = Figure(figsize=figsize, constrained_layout=constrained_layout)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _methods(df: pd.DataFrame) -> list[str]:
    return [m for m in METHOD_ORDER if m in set(df.method)] + sorted(set(df.method) - set(METHOD_ORDER))


def seed_bars(ax, groups: Sequence[tuple[str, Sequence[float]]], offset: float = 0.0, width: float = 0.8,
              color=None, label: str | None = None, flagged: Sequence[Sequence[bool]] | None = None) -> None:
    """One bar per group at its mean, a +-1 s.d. error bar (when 2+ values) and a dot per seed; a seed whose
    model the audit flags (``flagged``, parallel to the values) is a red cross instead of a dot."""
    xs = np.arange(len(groups)) + offset
    for i, (x, (_, vals)) in enumerate(zip(xs, groups)):
        flags = list(flagged[i]) if flagged is not None else [False] * len(vals)
        keep = [(a, f) for a, f in zip(vals, flags) if np.isfinite(a)]
        v = np.asarray([a for a, _ in keep], float)
        if not v.size:
            continue
        sd = v.std(ddof=1) if v.size > 1 else 0.0
        ax.bar(x, v.mean(), width, color=color, alpha=0.55, label=label if i == 0 else None,
               yerr=sd if v.size > 1 else None, capsize=3, error_kw={"lw": 1})
        bad = np.asarray([f for _, f in keep], bool)
        ax.plot(np.full((~bad).sum(), x), v[~bad], "k.", ms=4)
        if bad.any():
            ax.plot(np.full(bad.sum(), x), v[bad], "rx", ms=6, mew=1.5,
                    label="audit: suspect" if not getattr(ax, "_flag_labelled", False) else None)
            ax._flag_labelled = True


def seed_line(ax, x: Sequence[float], runs: Sequence[Sequence[float]], label: str, color=None,
              flagged: Sequence[bool] | None = None) -> None:
    """Mean over runs (rows) against x with a +-1 s.d. band, each run a thin line; a run whose model the audit
    flags (``flagged``) is dashed and counted in the label."""
    a = np.asarray(runs, float)
    flags = list(flagged) if flagged is not None else [False] * len(a)
    if any(flags):
        label = f"{label} ({sum(flags)} of {len(flags)} flagged, dashed)"
    line, = ax.plot(x, a.mean(0), "o-", ms=3, label=label, color=color)
    if len(a) > 1:
        sd = a.std(0, ddof=1)
        ax.fill_between(x, a.mean(0) - sd, a.mean(0) + sd, color=line.get_color(), alpha=0.2, lw=0)
    for r, bad in zip(a, flags):
        ax.plot(x, r, "--" if bad else "-", lw=1.0 if bad else 0.5, alpha=0.8 if bad else 0.5,
                color=line.get_color())


def suspect(df: pd.DataFrame) -> pd.Series:
    """Per row: the audit calls the model suspect (False where it was not audited)."""
    return df["audit_suspect"] == 1 if "audit_suspect" in df.columns else pd.Series(False, index=df.index)




def fig_eps_sweep(df: pd.DataFrame) -> Figure | None:
    at = df[df.method == "at"].sort_values("eps")
    if at.empty:
        return None
    fig, axes = _subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    for ax, col, name in zip(axes, ("eig1", "trace"), ("top eigenvalue", "Hessian trace (Hutch++)")):
        by = at.groupby("eps")[col]
        m, s = by.mean(), by.std(ddof=1)
        ax.errorbar(m.index, m.values, yerr=s.values, fmt="o-", capsize=3)
        bad = suspect(at)
        ax.plot(at.eps[~bad], at[col][~bad], "k.", ms=4, label="one seed")
        if bad.any():
            ax.plot(at.eps[bad], at[col][bad], "rx", ms=6, mew=1.5, label="one seed, audit: suspect")
        ax.set(xlabel="training and analysis eps", ylabel=name, xticks=sorted(set(at.eps)))
        ax.legend(fontsize="small")
    fig.suptitle("PGD-AT: curvature of the adversarial loss against eps (mean ± s.d. over seeds)")
    return fig


def fig_methods(df: pd.DataFrame, grid_eps: Sequence[float]) -> Figure | None:
    if not grid_eps:
        return None
    cols = (("test_clean", "clean test accuracy"), ("test_pgd20", "PGD-20 test accuracy"),
            ("test_autoattack", "AutoAttack test accuracy"), ("eig1", "top eigenvalue (adv. loss)"))
    cols = tuple(c for c in cols if c[0] in df.columns)
    fig, axes = _subplots(len(grid_eps), len(cols), figsize=(4 * len(cols), 3.1 * len(grid_eps)),
                             constrained_layout=True, squeeze=False)
    bad = suspect(df)
    for row, eps in zip(axes, grid_eps):
        part = df[np.isclose(df.eps, eps)]
        ms = _methods(part)
        for ax, (col, name) in zip(row, cols):
            seed_bars(ax, [(m, part[part.method == m][col].tolist()) for m in ms],
                      flagged=[bad[part[part.method == m].index].tolist() for m in ms])
            if getattr(ax, "_flag_labelled", False):
                ax.legend(loc="upper right", fontsize="small")
            ax.set_xticks(range(len(ms)), [pretty_method(m) for m in ms], rotation=30, ha="right")
            ax.set_title(f"eps {eps:g}: {name}", fontsize="medium")
            if col.startswith("test_"):
                ax.set_ylim(0, 1)
    fig.suptitle("Each method: mean ± s.d. over seeds, dots = seeds (red cross: the audit flags that model; "
                 "AutoAttack and PGD-20 on 500 images in the audit, PGD-20 on 1,000 here)" if bad.any() else
                 "Each method: mean ± s.d. over seeds, dots = seeds")
    return fig


def fig_flatness(df: pd.DataFrame, eps: float) -> Figure | None:
    part = df[np.isclose(df.eps, eps)]
    if not any(c.startswith("flat_") for c in part.columns) or part.filter(like="flat_").isna().all().all():
        return None
    fig, axes = _subplots(1, 4, figsize=(15, 3.4), constrained_layout=True)
    for ax, (measure, loss) in zip(axes, [(m, l) for l in ("clean", "adversarial") for m in ("average", "worst")]):
        cols = [c for c in part.columns if c.startswith(f"flat_{measure}_{loss}_r")]
        radii = [float(c.rsplit("_r", 1)[1]) for c in cols]
        for m in _methods(part):
            runs = part[part.method == m][cols].to_numpy(float)
            if np.isfinite(runs).all() and len(runs):
                seed_line(ax, radii, runs, pretty_method(m), flagged=suspect(part[part.method == m]).tolist())
        ax.set(xscale="log", yscale="linear" if measure == "average" else "log",
               xlabel="radius (filter-normalized)", title=f"{measure}-case increase, {loss} loss")
        ax.set_xticks(radii, [f"{r:g}" for r in radii])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if measure == "average":
            ax.axhline(0, color="0.6", lw=0.8)
    axes[0].set_ylabel("loss increase")
    axes[-1].legend(fontsize="small")
    fig.suptitle(f"eps {eps:g}: scalar flatness (mean ± s.d. over seeds)")
    return fig


def fig_paths(out: Path, df: pd.DataFrame, eps: float) -> Figure | None:
    part = df[np.isclose(df.eps, eps) & (df.method != "at")]
    if part.empty:
        return None
    fig, axes = _subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
    for m in _methods(part):
        rows = part[part.method == m].sort_values("seed")
        have = [(p, bool(f)) for s, f in zip(rows.seed, suspect(rows))
                if (p := out / "models" / f"{m}-eps{eps:g}-s{s}" / "path.json").exists()]
        paths = [load_result(p) for p, _ in have]
        for ax, loss in zip(axes, ("clean", "adversarial")):
            if paths:
                seed_line(ax, paths[0][loss]["a"], [p[loss]["loss"] for p in paths], pretty_method(m),
                          flagged=[f for _, f in have])
    for ax, loss in zip(axes, ("clean", "adversarial (re-attacked at each point)")):
        ax.axvline(0, color="0.6", lw=0.8)
        ax.axvline(1, color="0.6", lw=0.8)
        ax.set(xlabel="a: (1 - a) θ_AT + a θ_model, same seed", ylabel="loss", yscale="log", title=f"{loss} loss")
    axes[1].legend(fontsize="small")
    fig.suptitle(f"eps {eps:g}: the line from the AT model (a = 0) to each model (a = 1), mean ± s.d. over seeds")
    return fig


def fig_layers(layers: pd.DataFrame, eps: float) -> Figure | None:
    part = layers[np.isclose(layers.eps, eps)]
    if part.empty:
        return None
    names = sorted(set(part.layer), key=lambda s: int(s) if str(s).isdigit() else str(s))
    ms = _methods(part)
    fig, axes = _subplots(1, 2, figsize=(12, 3.4), constrained_layout=True)
    w = 0.8 / len(ms)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, loss in zip(axes, ("adversarial", "clean")):
        for i, m in enumerate(ms):
            sel = part[(part.loss == loss) & (part.method == m)]
            seed_bars(ax, [(n, sel[sel.layer == n].top_eigenvalue.tolist()) for n in names],
                      offset=(i - (len(ms) - 1) / 2) * w, width=w, color=colors[i % len(colors)],
                      label=pretty_method(m), flagged=[suspect(sel[sel.layer == n]).tolist() for n in names])
        ax.set_xticks(range(len(names)), [LAYER_NAMES.get(str(n), str(n)) for n in names])
        ax.set(ylabel="top eigenvalue of the layer's block", title=f"{loss} loss")
    axes[0].legend(fontsize="small", ncols=2)
    fig.suptitle(f"eps {eps:g}: per-layer top Hessian eigenvalue (mean ± s.d. over seeds)")
    return fig


def fig_surfaces(out: Path, methods: Sequence[str], eps: float, plane: str, seed: int = 0,
                 flagged: Sequence[str] = ()) -> Figure | None:
    """Seed ``seed``'s 2D adversarial surfaces at ``eps`` in ``plane`` ("eigen": each model's own top-2
    eigenvector plane; "random": a filter-normalized random plane), on one colour scale; the methods in
    ``flagged`` (their model is flagged by the audit) say so in their title."""
    surfaces, labels = [], []
    for m in methods:
        folder = out / "models" / f"{m}-eps{eps:g}-s{seed}"
        if plane == "eigen" and (folder / "spectrum.json").exists():
            d = load_result(folder / "spectrum.json").get("surface_eigen")
        elif plane == "random" and (folder / "surface_random.json").exists():
            d = load_result(folder / "surface_random.json")
        else:
            d = None
        if d:
            surfaces.append(d["surface"])
            labels.append(pretty_method(m) + (" (audit: suspect)" if m in flagged else ""))
    if not surfaces:
        return None
    fig = plot_compare(surfaces, labels=labels, mismatch="warn")
    fig.suptitle(f"eps {eps:g}, seed {seed}: adversarial loss in "
                 + ("each model's own top-2 eigenvector plane" if plane == "eigen"
                    else "a filter-normalized random plane"))
    return fig


def draw(out: Path, grid_eps: Sequence[float] = (0.3, 0.4), focus_eps: float = 0.3) -> list[Path]:
    """Every figure from ``out``'s per_model.csv and per-model files (module doc); returns the paths written."""
    out = Path(out)
    df = read_per_model(out)
    grid_eps = [e for e in grid_eps if np.isclose(df.eps, e).any() and (df[np.isclose(df.eps, e)].method != "at").any()]
    layers = [lr for folder in sorted((out / "models").glob("*")) if (folder / "train.json").exists()
              for lr in model_row(folder)[1]]    # the per-layer rows that legacy.aggregate_legacy tabulates
    figs = {"fig_eps_sweep": fig_eps_sweep(df), "fig_methods": fig_methods(df, grid_eps),
            "fig_flatness": fig_flatness(df, focus_eps), "fig_paths": fig_paths(out, df, focus_eps)}
    if layers:
        figs["fig_layers"] = fig_layers(pd.DataFrame(layers), focus_eps)
    focus = df[np.isclose(df.eps, focus_eps)]
    methods, seed0 = _methods(focus), focus[focus.seed == 0]
    flagged = set(seed0.method[suspect(seed0)])
    for plane in ("eigen", "random"):
        figs[f"fig_surfaces_{plane}"] = fig_surfaces(out, methods, focus_eps, plane, flagged=flagged)
    written = []
    for name, fig in figs.items():
        if fig is None:
            continue
        written.append(_save(fig, out / f"{name}.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    """PNG at ``DPI``, atomic as every result file; a figure pyplot made (a notebook backend) is closed."""
    save_figure(fig, path, dpi=DPI)
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return path


#: the models of the input-space figure (seed 2), with their labels
INPUT_LABELS = {"at-eps0.3-s2": "AT, eps 0.3 (robust)", "at-eps0.4-s2": "AT, eps 0.4 (collapsed)",
                "sat-eps-eps0.4-s2": "sat-eps, eps 0.4 (masked)"}


def input_space_figure(out: Path) -> Path | None:
    """fig_input_space.png: the input-space surfaces of ``INPUT_LABELS``' models (those in out/input_space,
    as ``landscape-surface --space input`` writes them), one colour scale; None when there is none."""
    out = Path(out)
    have = [n for n in INPUT_LABELS if (out / "input_space" / f"{n}.json").exists()]
    if not have:
        return None
    fig = plot_input_surface([load_result(out / "input_space" / f"{n}.json") for n in have],
                             labels=[INPUT_LABELS[n] for n in have])
    save_figure(fig, out / "fig_input_space.png", dpi=110)
    return out / "fig_input_space.png"


def headline_figure(out: Path, df: pd.DataFrame, metrics: Sequence[str]) -> Path | None:
    """fig_study.png: one panel per metric (clean / PGD / AutoAttack accuracy, lambda_1, trace), each against
    eps with a line per method through the seed means, every seed a dot (a study without eps: one bar per
    cell). None when there is nothing to draw."""
    metrics = [m for m in metrics if m in df.columns and df[m].notna().any()]
    if not metrics:
        return None
    fig, axes = _subplots(1, len(metrics), (3.2 * len(metrics), 3.0), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        if "eps" in df.columns and "method" in df.columns:
            for meth in _methods(df):
                part = df[df.method == meth]
                eps = sorted(set(part.eps))
                runs = [part[part.eps == e][m].astype(float).to_numpy() for e in eps]
                means = [np.nanmean(r) if np.isfinite(r).any() else np.nan for r in runs]
                line, = ax.plot(eps, means, "-o", ms=3, label=pretty_method(meth))
                for e, r in zip(eps, runs):
                    ax.plot([e] * len(r), r, ".", color=line.get_color(), alpha=0.6, ms=4)
            ax.set_xlabel("eps")
        else:
            ax.bar(np.arange(len(df)), df[m].astype(float))
            ax.set_xticks(np.arange(len(df)), df["cell"], rotation=45, ha="right", fontsize=7)
        ax.set_title(m.replace("_", " "))
    if "method" in df.columns:
        axes[0][0].legend(fontsize=7)
    return _save(fig, out / "fig_study.png")
