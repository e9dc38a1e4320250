"""One self-contained HTML page that compares runs side by side (``landscape-report``).

``collect(paths)`` reads run folders (metrics.csv, config.json, surfaces/*, result JSONs inside, a surface
written into the run folder itself), result files of any ``kind`` (surface, spectrum, eigenvalues, trace,
density, evaluation, audit, input_surface, training; older files without ``kind`` are recognised by
content), folders of results (e.g. ``results/sat``) and folders of run folders (``runs/``: the run folders
one level down), and groups what belongs to one row into a ``RunEntry``.

A row is one model under one setting, and what differs between rows is shown. Results join one row when
they come from one model (the run name, else the method; and nothing they record contradicts: checkpoint
file, architecture or wrapper, its arguments, dataset, eps) and, for results that fill the same columns,
under the same settings (``ROLE_SETTINGS``: the accuracies' attack norm, steps, restarts, step size,
BatchNorm mode and split; the spectrum's and the surfaces' loss, attack, split and samples). A setting a
result does not record contradicts nothing. Two evaluations of one checkpoint at eps 0.1 and 0.3, one
weights file under two ``--arch`` wrappers, best.pt and last.pt, become separate rows, labelled with the
settings that tell them apart (``AT (ε = 0.3)``); where a value is already in a row from a result with
the same settings (an audit's PGD beside the evaluation's), the first read stays and each accuracy shows
its own n. A file in a scanned folder that is no landscape result is skipped and named in ``notes`` (on
the page too); one given by name is refused, naming it.
``build_report(entries)`` returns the page: a table (clean / PGD / AutoAttack accuracy each with its n, the
audit's verdict and the checks that flagged, top eigenvalue, input curvature,
trace ± 95% half-width, settings) and interactive plotly figures (3D surfaces that rotate, eigenvalues,
densities, training curves with the curriculum, sharpness over training). plotly's JavaScript is embedded
once, so the page works offline. Needs the optional ``plotly`` package (``pip install 'landscape[report]'``).
"""
from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ._version import __version__
from . import results as R
from . import runs as Runs
from .analysis.surface_result import SurfaceResult
from .errors import LandscapeError
from .io import write_bytes
from .names import (INPUT_SURFACE_FILES, SURFACE_FILES, folder_result, is_checkpoint_path, is_run_folder,
                    is_surface_folder)

SKIP_JSON = {"config.json", "settings.json", "hsat.json"}
OWN_FILES = {*SURFACE_FILES[:2], *INPUT_SURFACE_FILES}   # a folder's own result files: read as the folder

#: which columns a result kind fills (its role), and the settings under which two results of one role may
#: share a row; ``SHARED_SETTINGS`` hold for the whole row whatever filled it
ROLES = {"evaluation": "accuracy", "audit": "accuracy", "spectrum": "spectrum", "eigenvalues": "spectrum",
         "trace": "spectrum", "density": "spectrum", "surface": "surface", "input_surface": "input",
         "training": "training"}
SHARED_SETTINGS = ("checkpoint", "model", "arch_kwargs", "dataset", "eps")   # not the method: a variant
#: (h-sat-affine) records its base method (h-sat) in some results; the run name tells runs apart
ROLE_SETTINGS = {"accuracy": ("norm", "steps", "restarts", "step_size", "bn", "split"),
                 "spectrum": ("loss", "norm", "steps", "restarts", "step_size", "bn", "split", "samples"),
                 "surface": ("loss", "norm", "steps", "restarts", "step_size", "bn", "split", "samples"),
                 "input": ("norm", "steps", "step_size", "split", "samples"),
                 "training": ()}
ROLE_NAMES = {"accuracy": "", "spectrum": "spectrum", "surface": "surfaces", "input": "input", "training": ""}


@dataclass
class RunEntry:
    """Everything known about one run: its label, settings and the results found for it."""
    key: tuple
    name: str
    info: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)     # clean / pgd / autoattack accuracies, n, eps
    eigen: dict | None = None                          # {values, converged}
    density: dict | None = None                        # {grid, density}
    trace: dict | None = None                          # {estimate, half_width_95}
    surfaces: list[SurfaceResult] = field(default_factory=list)
    audit: dict | None = None                          # {verdict, failed}: landscape-eval --audit
    input_surface: dict | None = None                  # landscape-surface --space input
    metrics: list[tuple[Any, dict]] = field(default_factory=list)   # (DataFrame, meta) per training history
    sources: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)       # {"shared": {...}, role: {...}}: what the row was measured under

    @property
    def label(self) -> str:
        return self.name or "run"


def _plotly():
    try:
        import plotly.graph_objects as go
        import plotly.offline
        from plotly.subplots import make_subplots
    except ImportError as e:
        raise LandscapeError("landscape-report needs plotly: pip install 'landscape[report]'") from e
    return go, make_subplots, plotly.offline


# --- collecting ---------------------------------------------------------------------------------------------

class Collected(list):
    """``collect``'s entries (a list), with ``notes``: one line per file of a scanned folder that was skipped
    (not a landscape result), naming it."""
    notes: list[str]

    def __init__(self, entries=(), notes=None):
        super().__init__(entries)
        self.notes = list(notes or [])


def _scan(path: Path) -> list[Path]:
    """The results of one folder: its own surface (a run folder may hold one), its metrics.csv, surface
    folders (also under surfaces/), JSON results and CSVs of epochs."""
    out: list[Path] = [r for r in (folder_result(path),) if r is not None]
    subs = sorted(path.iterdir()) + (sorted((path / "surfaces").iterdir()) if (path / "surfaces").is_dir() else [])
    for p in subs:
        if p.parent == path and p.name in OWN_FILES:
            continue
        if (own := folder_result(p)) is not None:
            out.append(own)
        elif p.is_file() and p.suffix == ".json" and p.name not in SKIP_JSON and ".directions" not in p.name:
            out.append(p)
        elif p.is_file() and p.suffix == ".csv" and _has_epochs(p):
            out.append(p)
    return out


def _items(path: Path) -> list[Path]:
    """The result files/folders a path stands for: itself (a file, a surface folder), or for a folder (a run
    folder, a folder of results) what ``_scan`` finds in it, and for a folder that is no run folder also
    what is in its subfolders one level down (``runs/``: a folder of run folders). Nothing found: one line
    saying what the folder holds and what was expected."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LandscapeError(f"no such result or run folder: {path}")
    if not is_run_folder(path) and (own := folder_result(path)) is not None:
        return [own]
    out = _scan(path)
    subdirs = [p for p in sorted(path.iterdir()) if p.is_dir() and p.name != "surfaces" and folder_result(p) is None]
    if not is_run_folder(path):
        for sub in subdirs:
            out.extend(_scan(sub))
    if not out:
        files = [p.name for p in sorted(path.iterdir()) if p.is_file()]

        def some(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        held = "; ".join(x for x in (
            f"{len(subdirs)} folder(s) ({some([p.name for p in subdirs])}) with no results in them" if subdirs
            and not is_run_folder(path) else "",
            f"file(s) {some(files)}, none a result" if files else "") if x) or "it is empty"
        raise LandscapeError(f"{path}: no results found ({held}); expected a run folder (metrics.csv, config.json, "
                             "surfaces/, result JSON files), a folder of run folders, or result files")
    return out


def _has_epochs(p: Path) -> bool:
    try:
        with open(p) as f:
            head = f.readline().strip().split(",")
    except OSError:
        return False
    return "epoch" in head


def _key(info: dict) -> tuple:
    """Which model a result is of: its run name, else its method (``name``), else ``folder`` (the folder it
    was found in); with its eps (None: says none)."""
    eps = info.get("eps")
    return (info.get("run") or info.get("name") or info.get("folder") or "",
            None if eps is None else round(float(eps), 6))


def _weak(info: dict) -> bool:
    """A result that names a method but no run of it (a legacy table's ``at``): it may join the one row of
    that method; a result of a named run joins only that run's rows."""
    run = info.get("run")
    return not run or run.lower() == str(info.get("method") or "").lower() or run == info.get("name")


def _fits(e: "RunEntry", roles: Sequence[str], m: dict) -> bool:
    """True when nothing ``m`` (a ``measurement``) records contradicts the row: its shared settings, and for
    each role the result fills (``roles``: the columns it has values for) that role's settings against the
    results of that role already in the row."""
    for part, keys in (("shared", SHARED_SETTINGS), *((r, ROLE_SETTINGS[r]) for r in roles)):
        have = e.settings.get(part, {})
        if any(have.get(k) is not None and m.get(k) is not None and have[k] != m[k] for k in keys):
            return False
    return True


def _accuracies(d: dict) -> dict:
    """clean / PGD / AutoAttack accuracies wherever a result keeps them, each with the number of samples it
    was measured on (``KEY_n``): two results of one run may have used different samples."""
    out = {}
    n = next((d[k] for k in ("n", "n_test") if isinstance(d.get(k), int)), None)
    for key, names in (("clean", ("clean_acc", "clean_accuracy", "clean")),
                       ("pgd", ("pgd_acc", "pgd20_acc", "robust_acc", "pgd_accuracy", "pgd")),
                       ("autoattack", ("autoattack_acc", "aa_acc", "autoattack"))):
        for name in names:
            v = d.get(name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key], out[f"{key}_n"] = float(v), n
                break
    if n is not None:
        out["n"] = n
    return out


def _accuracy_cells(ev: dict) -> list[str]:
    """The clean / PGD / AutoAttack cells of one row, each with the number of samples it was measured on (two
    results of one run may have used different samples: PGD on 359 beside AutoAttack on 16)."""
    return [_pct(ev.get(k)) + (f" (n = {ev.get(f'{k}_n')})" if k in ev and ev.get(f"{k}_n") else "")
            for k in ("clean", "pgd", "autoattack")]


def _audit_cell(a: dict | None) -> str:
    if not a:
        return "–"
    return a["verdict"] + (f": {', '.join(a['failed'])}" if a["failed"] else "")


def collect(paths: Iterable[str | os.PathLike]) -> Collected:
    """Read every result under ``paths`` and group them into rows (see the module docstring): one model under
    one setting per row. Returns the entries (a list) with ``notes`` (files of scanned folders skipped)."""
    entries: list[RunEntry] = []
    notes: list[str] = []

    def entry(info: dict, roles: Sequence[str], m: dict, source: str) -> RunEntry:
        """The row the result belongs to: the one row of its model (run name, else method) whose settings it
        does not contradict; else, for a result that names no run, the one row of its method; else a new row.
        Where several rows fit a measurement (a clean-loss spectrum beside evaluations at two eps), a row of
        its own; a training history (the run's, whichever checkpoint) joins the first."""
        key = _key(info)
        same = [e for e in entries if e.key[0] == key[0] and _fits(e, roles, m)]
        if not same and _weak(info) and info.get("name"):
            same = [e for e in entries if e.name == info["name"] and _fits(e, roles, m)]
        if len(same) == 1 or (same and tuple(roles) == ("training",)):
            e = same[0]
        else:
            e = RunEntry(key, info.get("name") or info.get("run") or info.get("folder") or f"run {len(entries) + 1}",
                         dict(info))
            entries.append(e)
        for k, v in info.items():
            if e.info.get(k) is None and v is not None:
                e.info[k] = v
        for part, keys in (("shared", SHARED_SETTINGS), *((r, ROLE_SETTINGS[r]) for r in roles)):
            have = e.settings.setdefault(part, {})
            for k in keys:
                if have.get(k) is None and m.get(k) is not None:
                    have[k] = m[k]
        e.sources.append(source)
        return e

    paths = list(paths)
    if not paths:
        raise LandscapeError("nothing to report: give run folders or result files")
    seen: set[Path] = set()        # a run folder and one of its surfaces, both given: each result once
    for raw in paths:
        given = Path(raw)
        scanned = given.is_dir() and (is_run_folder(given) or not is_surface_folder(given))
        for item in _items(given):
            if item.resolve() in seen:
                continue
            seen.add(item.resolve())
            try:
                kind = R.result_kind(item)
            except LandscapeError as err:
                if scanned:     # a file in a scanned folder that is no result (a log, a summary): named, left out
                    notes.append(f"skipped {item}: {err}")
                    continue
                if is_checkpoint_path(item):
                    raise LandscapeError(f"{item} is a checkpoint, not a result: give its run folder ({item.parent}) "
                                         "or the results made from it (the --json of landscape-eval or "
                                         "landscape-spectrum, surface folders)") from err
                raise LandscapeError(str(err) if str(err).startswith(str(item))
                                     else f"{item} is not a landscape result: {err}") from err
            folder = item.parent if item.is_file() else item      # the run folder the result lies in
            if not is_run_folder(folder) and folder_result(folder) is not None:
                folder = folder.parent
            if folder.name == "surfaces":
                folder = folder.parent
            try:
                _add(kind, item, folder, entry)
            except LandscapeError as err:
                raise LandscapeError(err if str(item) in str(err) else f"{item}: {err}") from err
    out = Collected(entries, notes)
    _label(out)
    return out


def _add(kind: str, item: Path, folder: Path, entry) -> None:
    """Read one result and put it in its row (``entry``), by the columns it fills (its roles)."""
    role = (ROLES.get(kind, "accuracy"),)

    def info_of(obj: Any) -> tuple[dict, dict]:
        info, m = R.describe(obj), R.measurement(obj)
        info["folder"] = folder.name
        if not m.get("run") and not info.get("run") and not info.get("name"):
            info["name"] = folder.name      # a result that names neither run nor method: its folder's
        return info, m

    if kind == "surface":
        r = R.as_surface(item)
        info, m = info_of(r)
        entry(info, role, m, str(item)).surfaces.append(r)
    elif kind == "input_surface":
        d = R.load_result(item)
        info, m = info_of(d)
        entry(info, role, m, str(item)).input_surface = d
    elif kind == "training":
        for df, meta in Runs.read_runs(item):
            run_dir = item if item.is_dir() else item.parent
            if meta.get("run") == run_dir.name and item.suffix != ".json":   # a study cell's train: the cell's name
                meta = {**meta, "run": R.run_folder_name(run_dir)}
            info, m = R.describe(meta), R.measurement(meta)
            info["folder"] = folder.name
            if info["eps"] is None and "eps_t" in df.columns and df["eps_t"].notna().any():
                info["eps"] = m["eps"] = round(float(df["eps_t"].max()), 6)
            b = Runs.best_epoch(df, meta)
            e = entry({**info, "best_epoch": b}, role, m, str(item))
            e.metrics.append((df, meta))
    else:
        d = R.load_result(item)
        info, m = info_of(d)
        acc = _accuracies(d)   # an accuracy and its sample count come together, from one result
        eig, dens, trace = R.spectrum_parts(d)
        fills = tuple(r for r, has in (("accuracy", acc or kind == "audit"), ("spectrum", eig or dens or trace)) if has)
        e = entry(info, fills or role, m, str(item))
        for key in ("clean", "pgd", "autoattack"):
            if key in acc and key not in e.evaluation:
                e.evaluation[key], e.evaluation[f"{key}_n"] = acc[key], acc[f"{key}_n"]
        if "n" in acc:
            e.evaluation.setdefault("n", acc["n"])
        if isinstance(d.get("best_epoch"), int):
            e.info.setdefault("best_epoch", d["best_epoch"])
        if kind == "audit" and e.audit is None:
            checks = d["audit"].get("checks", [])
            e.audit = {"verdict": d["audit"].get("verdict", "?"),
                       "failed": [c.get("name", "?") for c in checks if c.get("passed") is False]}
        e.eigen, e.density, e.trace = e.eigen or eig, e.density or dens, e.trace or trace


def _eps_text(v: Any) -> str:
    if isinstance(v, (int, float)) and round(v, 3) != v and abs(v * 255 - round(v * 255)) < 1e-3:
        return f"ε = {round(v * 255)}/255"          # 8/255 rather than 0.031373
    return f"ε = {v:g}" if isinstance(v, (int, float)) else f"ε = {v}"


#: how a row label shows a setting that tells rows apart
_SETTING_TEXT: dict[str, Any] = {
    "eps": _eps_text,
    "samples": lambda v: f"n = {v}",
    "steps": lambda v: f"{v} steps",
    "restarts": lambda v: f"{v} restart{'s' if v != 1 else ''}",
    "step_size": lambda v: f"step {v:g}" if isinstance(v, (int, float)) else f"step {v}",
    "norm": lambda v: {"linf": "Linf", "l2": "L2", "l1": "L1"}.get(str(v), str(v)),
    "split": lambda v: f"{v} split",
    "bn": lambda v: f"BN {v}",
    "loss": lambda v: f"{v} loss",
    "model": lambda v: f"model {v}",
    "method": lambda v: f"method {v}",
    "arch_kwargs": lambda v: "no arch kwargs" if v == "{}" else f"arch kwargs {v}",
}


def _fmt_setting(key: str, v: Any) -> str:
    return _SETTING_TEXT.get(key, str)(v)


def _row_settings(e: RunEntry) -> list[tuple[str, str, Any]]:
    """(role, key, value) of every setting the row was measured under."""
    out = [("shared", k, e.settings.get("shared", {}).get(k)) for k in SHARED_SETTINGS]
    for role, keys in ROLE_SETTINGS.items():
        out += [(role, k, e.settings.get(role, {}).get(k)) for k in keys]
    return out


def _label(entries: list[RunEntry]) -> None:
    """Rows of one name are told apart by every setting that differs between them (``AT (ε = 0.3)``,
    ``weights (model WrapperA)``); where none does, by the run, else by the first source file."""
    groups: dict[str, list[RunEntry]] = {}
    for e in entries:
        groups.setdefault(e.name, []).append(e)
    for name, group in groups.items():
        if len(group) < 2:
            continue
        rows = [dict(((r, k), v) for r, k, v in _row_settings(e)) for e in group]

        def compared(row: dict, rk: tuple) -> Any:   # a step size as a fraction of eps: eps says the rest
            v, eps = row.get(rk), row.get(("shared", "eps"))
            if rk[1] == "step_size" and isinstance(v, (int, float)) and isinstance(eps, (int, float)) and eps:
                return float(f"{v / eps:.4g}")
            return v
        # a setting differs where two rows record two values (one that records none contradicts nothing)
        differ = [rk for rk in rows[0] if len({repr(compared(row, rk)) for row in rows
                                               if row.get(rk) is not None}) > 1]
        parts = []
        for row in rows:
            shown = []
            for role, k in differ:
                if row.get((role, k)) is None or role == "training":
                    continue
                text = _fmt_setting(k, row[(role, k)])
                shown.append(text if not ROLE_NAMES.get(role) else f"{ROLE_NAMES[role]} {text}")
            parts.append(shown)
        for extra in (lambda i, e: e.info.get("run") if (e.info.get("run") or name) != name else None,
                      lambda i, e: Path(e.sources[0]).name if e.sources else f"row {i + 1}"):
            clash = [i for i, p in enumerate(parts) if parts.count(p) > 1]   # all of them, then tell apart
            for i in clash:
                more = extra(i, group[i])
                if more:
                    parts[i] = [*parts[i], more]
        for e, shown in zip(group, parts):
            if shown:
                e.name = f"{name} ({', '.join(shown)})"


# --- figures ------------------------------------------------------------------------------------------------

def _colour(i: int) -> str:
    import matplotlib
    return matplotlib.colors.to_hex(f"C{i % 10}")


def _layout(fig, title: str, height: int) -> None:
    fig.update_layout(title=dict(text=title, x=0.01), height=height, template="plotly_white",
                      margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.15))


def surfaces_figure(entries: Sequence[RunEntry], field: str = "loss"):
    """3D surfaces (rotatable), one scene per run with a 2D surface, on one colour scale."""
    go, make_subplots, _ = _plotly()
    items = [(e, r) for e in entries for r in e.surfaces if r.dim == 2][:MAX_SCENES]
    if not items:
        return None
    zs = [R.surface_field(r, field) for _, r in items]
    lo, hi = R.finite_range(zs)
    ncols = min(3, len(items))
    nrows = (len(items) + ncols - 1) // ncols
    fig = make_subplots(rows=nrows, cols=ncols, specs=[[{"type": "surface"}] * ncols] * nrows,
                        subplot_titles=[e.label for e, _ in items], horizontal_spacing=0.02, vertical_spacing=0.06)
    for i, ((e, r), z) in enumerate(zip(items, zs)):
        xn, yn = R.axis_names(r)
        fig.add_trace(go.Surface(x=r.x, y=r.y, z=np.where(np.isfinite(z), z, None).tolist(), cmin=lo, cmax=hi,
                                 colorscale="Viridis", showscale=(i == 0), name=e.label,
                                 colorbar=dict(title=field, len=0.8),
                                 hovertemplate=f"{xn}: %{{x:.3g}}<br>{yn}: %{{y:.3g}}<br>{field}: %{{z:.4g}}"
                                               f"<extra>{html.escape(e.label)}</extra>"),
                      row=i // ncols + 1, col=i % ncols + 1)
        scene = "scene" if i == 0 else f"scene{i + 1}"
        fig.update_layout({scene: dict(xaxis_title=xn, yaxis_title=yn, zaxis_title=field,
                                       zaxis=dict(range=[lo, hi]), aspectmode="cube")})
    info = R.describe(items[0][1])
    _layout(fig, f"{field} surfaces (drag to rotate) — {R.caption(info, noun=field)}", 430 * nrows + 80)
    return fig


MAX_SCENES = 9     # 3D scenes per page; more surfaces are listed, not drawn


def curves_figure(entries: Sequence[RunEntry], field: str = "loss"):
    """The 1D surfaces (interpolations, 1D random or eigen directions) as curves, one colour per run (they were
    left out of the page before)."""
    go, _, _ = _plotly()
    items = [(e, r) for e in entries for r in e.surfaces if r.dim == 1]
    if not items:
        return None
    fig = go.Figure()
    for i, (e, r) in enumerate(items):
        z = R.surface_field(r, field)
        xn, _ = R.axis_names(r)
        fig.add_trace(go.Scatter(x=list(r.x), y=np.where(np.isfinite(z), z, None).tolist(), mode="lines+markers",
                                 name=f"{e.label}: {xn}", line=dict(color=_colour(i))))
    fig.update_xaxes(title_text="a")
    fig.update_yaxes(title_text=field)
    _layout(fig, f"1D {field} curves", 420)
    return fig


def undrawn_surfaces(entries: Sequence[RunEntry]) -> list[str]:
    """Labels of the 2D surfaces beyond the page's MAX_SCENES 3D scenes (listed on the page, not dropped
    silently)."""
    items = [e.label for e in entries for r in e.surfaces if r.dim == 2]
    return items[MAX_SCENES:]


def input_figure(entries: Sequence[RunEntry]):
    """The input-space landscape of each run: mean loss along the gradient direction (b = 0) and along the
    random direction (a = 0), in units of eps; a masked model's first curve is flat."""
    go, make_subplots, _ = _plotly()
    items = [e for e in entries if e.input_surface]
    if not items:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=["along sign(∇ₓ loss)", "along a random sign direction"])
    for i, e in enumerate(items):
        d = e.input_surface
        a, b, z = np.asarray(d["a"]), np.asarray(d["b"]), np.asarray(d["mean_loss"], dtype=float)
        i0, j0 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(b)))
        for col, (xs, ys) in enumerate(((a, z[:, j0]), (b, z[i0, :])), start=1):
            fig.add_trace(go.Scatter(x=xs.tolist(), y=ys.tolist(), mode="lines", name=f"{e.label} (n = {d['n']})",
                                     line=dict(color=_colour(i)), showlegend=col == 1, legendgroup=e.label),
                          row=1, col=col)
    fig.update_xaxes(title_text="× ε")
    fig.update_yaxes(title_text="mean loss", col=1)
    _layout(fig, "input-space loss (landscape-surface --space input)", 420)
    return fig


def spectrum_figure(entries: Sequence[RunEntry]):
    """Top eigenvalues (markers, open where not converged) and densities (log, floored at 1e-6 of the
    peak, top-k eigenvalues as rug ticks) side by side."""
    go, make_subplots, _ = _plotly()
    if not any(e.eigen or e.density for e in entries):
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("top Hessian eigenvalues", "eigenvalue density (SLQ)"),
                        column_widths=[0.35, 0.65])
    peak = max([float(np.max(e.density["density"])) for e in entries if e.density] or [1.0])
    floor = peak * R.DENSITY_FLOOR
    for i, e in enumerate(entries):
        c = _colour(i)
        if e.eigen:
            v = e.eigen["values"]
            conv = e.eigen["converged"] or [True] * len(v)
            fig.add_trace(go.Scatter(x=list(range(1, len(v) + 1)), y=v, mode="markers", name=e.label,
                                     legendgroup=e.label, marker=dict(
                                         color=[c if ok else "white" for ok in conv], size=9,
                                         line=dict(color=c, width=2), symbol="circle"),
                                     hovertemplate="rank %{x}: %{y:.4g}"), row=1, col=1)
        if e.density:
            rho = np.clip(np.asarray(e.density["density"], float), floor * 0.5, None)
            fig.add_trace(go.Scatter(x=e.density["grid"], y=rho, mode="lines", line=dict(color=c), name=e.label,
                                     legendgroup=e.label, showlegend=not e.eigen), row=1, col=2)
            if e.eigen:
                fig.add_trace(go.Scatter(x=e.eigen["values"], y=[floor * 1.5] * len(e.eigen["values"]),
                                         mode="markers", marker=dict(symbol="line-ns", size=14, color=c,
                                                                     line=dict(width=2, color=c)),
                                         legendgroup=e.label, showlegend=False, hoverinfo="x"), row=1, col=2)
    fig.update_xaxes(title_text="rank", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="eigenvalue", row=1, col=1)
    fig.update_xaxes(title_text="eigenvalue", row=1, col=2)
    fig.update_yaxes(title_text="density (log)", type="log", range=[np.log10(floor), np.log10(peak * 3)],
                     row=1, col=2)
    _layout(fig, "Hessian spectrum — open markers: not converged; ticks on the density: top-k eigenvalues", 460)
    return fig


def training_figure(entries: Sequence[RunEntry]):
    """Training curves: loss, validation accuracies (clean solid, PGD dashed), the curriculum (λ solid,
    ε_t dashed) and sharpness, one colour per run; the best epoch starred."""
    go, make_subplots, _ = _plotly()
    runs = [(i, e, df, meta) for i, e in enumerate(entries) for df, meta in e.metrics]
    if not runs:
        return None
    has_sharp = any(Runs.sharpness_column(df) for _, _, df, _ in runs)
    titles = ["loss", "accuracy (val.: clean solid, PGD dashed)", "curriculum: λ solid, ε_t dashed"]
    titles += ["sharpness (top eigenvalue)"] if has_sharp else []
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.06)
    for i, e, df, meta in runs:
        c = _colour(i)
        x = Runs.epochs(df).tolist()
        b = Runs.best_epoch(df, meta)
        first = True

        def line(col: str, panel: int, dash: str = "solid") -> None:
            nonlocal first
            if col not in df.columns or not df[col].notna().any():
                return
            fig.add_trace(go.Scatter(x=x, y=df[col].tolist(), mode="lines+markers", name=e.label,
                                     legendgroup=e.label, showlegend=first, line=dict(color=c, dash=dash),
                                     marker=dict(size=5), hovertemplate=f"{Runs.COLUMN_NAMES.get(col, col)}"
                                     " epoch %{x}: %{y:.4g}"), row=1, col=panel)
            first = False
        line("train_loss", 1)
        line("val_clean", 2)
        line("val_pgd", 2, "dash")
        line("lam", 3)
        line("eps_t", 3, "dash")
        sc = Runs.sharpness_column(df)
        if has_sharp and sc:
            line(sc, 4)
        if b is not None and "val_pgd" in df.columns:
            fig.add_trace(go.Scatter(x=[b], y=df["val_pgd"][Runs.epochs(df) == b].tolist(), mode="markers",
                                     marker=dict(symbol="star", size=14, color=c, line=dict(color="black", width=1)),
                                     legendgroup=e.label, showlegend=False,
                                     hovertemplate=f"best epoch {b}<extra>{html.escape(e.label)}</extra>"),
                          row=1, col=2)
    for k in range(1, len(titles) + 1):
        fig.update_xaxes(title_text="epoch", dtick=1, row=1, col=k)
    _layout(fig, "training — stars: best epoch", 430)
    return fig


# --- the page -----------------------------------------------------------------------------------------------

def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _settings_text(e: RunEntry) -> str:
    """The row's settings: the model's (method, ε, dataset, model, its arguments, checkpoint file), then what
    each part was measured under (``attack: Linf, 20 steps``; ``spectrum: clean loss, n = 64``)."""
    i, shared = e.info, e.settings.get("shared", {})
    eps = shared.get("eps") if shared.get("eps") is not None else i.get("eps")
    parts = [f"method {i['method']}" if i.get("method") else "",
             _fmt_setting("eps", eps) if isinstance(eps, (int, float)) else "",
             str(shared.get("dataset") or i.get("dataset") or ""),
             str(shared.get("model") or i.get("model") or ""),
             _fmt_setting("arch_kwargs", shared["arch_kwargs"])
             if shared.get("arch_kwargs") not in (None, "{}") else "",
             str(shared["checkpoint"]) if shared.get("checkpoint") else ""]
    groups = [", ".join(p for p in parts if p)]
    for role, keys in ROLE_SETTINGS.items():
        have = e.settings.get(role, {})
        got = [_fmt_setting(k, have[k]) for k in keys if have.get(k) is not None
               and not (k == "bn" and have[k] in ("eval", "running"))]      # BatchNorm's default: not said
        if got:
            groups.append(f"{ROLE_NAMES[role] or 'attack'}: {', '.join(got)}")
    return "; ".join(g for g in groups if g)


def table_html(entries: Sequence[RunEntry]) -> str:
    """The comparison table: accuracies, curvature and the settings of each run."""
    head = ["run", "clean", "PGD", "AutoAttack", "audit", "top eigenvalue", "trace (± 95%)", "input curvature",
            "best epoch", "settings"]
    rows = []
    for e in entries:
        ev, i = e.evaluation, e.info
        top = "–"
        if e.eigen and e.eigen["values"]:
            conv = e.eigen["converged"]
            top = f"{e.eigen['values'][0]:.4g}" + (" (not converged)" if conv and not conv[0] else "")
        settings = _settings_text(e)
        curv = (e.input_surface or {}).get("curvature")
        cells = [e.label, *_accuracy_cells(ev), _audit_cell(e.audit), top,
                 R.format_trace(e.trace) if e.trace else "–",
                 f"median {curv['median']:.4g}, max {curv['max']:.4g}" if curv else "–",
                 str(i["best_epoch"]) if i.get("best_epoch") is not None else "–", settings]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return ("<table class='runs'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 6px} .meta{color:#666;font-size:13px}
table.runs{border-collapse:collapse;font-size:13px;margin-top:8px}
table.runs th,table.runs td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}
table.runs th:first-child,table.runs td:first-child,table.runs td:last-child{text-align:left}
table.runs th{background:#f4f4f4} details{font-size:12px;color:#555;margin-top:16px}"""


def build_report(entries: Sequence[RunEntry], title: str = "landscape report") -> str:
    """The HTML page (a string) comparing ``entries``; plotly's JavaScript is embedded once."""
    go, _, offline = _plotly()
    if not entries:
        raise LandscapeError("nothing to report")
    sections = [("Loss surfaces", surfaces_figure(entries)), ("Loss curves (1D)", curves_figure(entries)),
                ("Input-space landscape", input_figure(entries)),
                ("Hessian spectrum", spectrum_figure(entries)), ("Training", training_figure(entries))]
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<div class='meta'>{len(entries)} runs · landscape {__version__} · "
            f"{time.strftime('%Y-%m-%d %H:%M')}</div>", "<h2>Summary</h2>", table_html(entries)]
    for name, fig in sections:
        if fig is None:
            continue
        body.append(f"<h2>{name}</h2>")
        if name == "Loss surfaces" and undrawn_surfaces(entries):
            left = undrawn_surfaces(entries)
            body.append(f"<div class='meta'>{len(left)} more 2D surfaces not drawn (at most {MAX_SCENES} 3D "
                        f"scenes per page): {html.escape(', '.join(left))}</div>")
        body.append(fig.to_html(full_html=False, include_plotlyjs=False,
                                config={"displaylogo": False, "responsive": True}))
    sources = "".join(f"<li>{html.escape(e.label)}: {html.escape(', '.join(e.sources))}</li>" for e in entries)
    sources += "".join(f"<li>{html.escape(n)}</li>" for n in getattr(entries, "notes", []))
    body.append(f"<details><summary>sources</summary><ul>{sources}</ul></details>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{offline.get_plotlyjs()}</script></head><body>"
            + "\n".join(body) + "</body></html>")


def write_report(paths: Iterable[str | os.PathLike], out: str | os.PathLike, title: str = "landscape report") -> \
        tuple[Path, list[RunEntry]]:
    """Collect ``paths``, build the page and write it (atomically) to ``out``; returns (out, entries)."""
    entries = collect(paths)
    out = Path(out)
    page = build_report(entries, title).encode("utf-8")   # UTF-8 whatever the locale (the page says so)
    write_bytes(out, page)
    return out, entries


__all__ = ["RunEntry", "Collected", "collect", "build_report", "write_report", "table_html", "surfaces_figure",
           "input_figure", "curves_figure", "undrawn_surfaces",
           "spectrum_figure", "training_figure"]
