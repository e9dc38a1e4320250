"""The run folder, its one owner: what ``landscape-train`` writes into ``RUNS/NAME/`` and how everything else
(plots, the report, the benchmarks) reads it back.

A run folder holds ``RUN_FILES`` (config.json, metrics.csv, last.pt, best.pt, hsat.json) and epoch_XXX.pt.
Its default name is ``METHOD-DATASET-epsEPS-sSEED`` (``run_name``; ``method_of_run`` reads the method back).
``metrics.csv`` has one row per epoch (``write_metrics`` / ``read_runs``); the best epoch is the one that
``selection_score`` ranks highest under the run's ``--select`` rule (``best_epoch`` applies the same rule to
a metrics table). No plotting import here.
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import LandscapeError
from .io import read_json, write_text

RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt", "hsat.json")   # + epoch_XXX.pt
EPOCH_FILE = re.compile(r"epoch_\d{3,}\.pt")
# --select, the best.pt rules: the validation number each one ranks epochs by (the highest wins; "loss": the lowest)
SELECT_RULES = {"clean+pgd": "validation clean + PGD accuracy (the paper's rule)",
                "pgd": "validation PGD accuracy", "clean": "validation clean accuracy",
                "loss": "validation (clean) cross-entropy, lowest"}
METHOD_NAMES = {"standard": "standard", "at": "AT", "trades": "TRADES", "sat-eps": "SAT-ε", "p-sat": "P-SAT",
                "h-sat": "H-SAT"}   # the house's display names of the training methods
COLUMN_NAMES = {"train_loss": "training loss", "train_acc": "training accuracy", "val_clean": "clean accuracy (val.)",
                "val_pgd": "PGD accuracy (val.)", "val_loss": "validation loss", "lam": "λ (curriculum)",
                "eps_t": "ε_t (training budget)", "lr": "learning rate", "sharpness": "top eigenvalue"}
_CONFIG_FILES = ("summary.json", "training.json", "config.json")   # what describes a run, most specific first
SURFACE_FILES = ("surface.json", "surface.npz", "directions.pt", "adversarial.npz")   # a surface folder's state
INPUT_SURFACE_FILES = ("input_surface.json", "input_surface.npz")   # landscape-surface --space input's result
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".ckpt")


def run_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` that the trainer writes (``RUN_FILES`` and epoch_XXX.pt), nothing else."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_file()
                  and (p.name in RUN_FILES or EPOCH_FILE.fullmatch(p.name)))


def protected_reason(path: str | os.PathLike, becoming: Sequence[str | os.PathLike] = ()) -> str | None:
    """Why no command may write a result over ``path`` (None: it may): an existing checkpoint, a file of a
    training run (``RUN_FILES``, epoch_XXX.pt, in a folder that holds config.json or last.pt), the state of
    a surface folder (``SURFACE_FILES``, which ``--resume`` continues from) or an input-space surface's
    result (``INPUT_SURFACE_FILES``). ``becoming``: folders the running command is about to make a run or a
    surface of (the folders it locks for that): one of those files there is protected before it exists, so
    that ``landscape-train --json runs/NEW/config.json`` is refused instead of replacing the new run's config
    at its end. Cost: a few stat calls."""
    p = Path(path)
    folder = p.parent
    own = p.name in RUN_FILES or EPOCH_FILE.fullmatch(p.name) or p.name in SURFACE_FILES \
        or p.name in INPUT_SURFACE_FILES
    if own:
        for b in becoming:
            if os.path.realpath(folder) == os.path.realpath(b):
                return f"it is the file {p.name} that this command writes in {b}"
    if not p.exists():
        return None
    if (p.name in RUN_FILES or EPOCH_FILE.fullmatch(p.name)) and \
            ((folder / "config.json").is_file() or (folder / "last.pt").is_file()):
        return f"it is the file {p.name} of the training run {folder}"
    if p.name in SURFACE_FILES and ((folder / "surface.json").is_file() or (folder / "surface.npz").is_file()):
        return f"it holds the state of the surface in {folder} (what --resume continues from)"
    if p.name in INPUT_SURFACE_FILES and (folder / "input_surface.json").is_file():
        return f"it is the input-space surface in {folder}"
    if p.suffix.lower() in CHECKPOINT_SUFFIXES:
        return "it is a checkpoint"
    return None


def run_name(method: str, dataset: str, eps: float | None, seed: int) -> str:
    """The default run name ``METHOD-DATASET-epsEPS-sSEED`` (``:`` and ``/`` of a dataset name become ``_``)."""
    tag = "" if eps is None else f"-eps{eps:g}"
    return f"{method}-{dataset.replace(':', '_').replace('/', '_')}{tag}-s{seed}"


def method_of_run(run: str, dataset: str | None = None) -> str:
    """What is left of a run name once ``run_name``'s suffixes are cut: ``at-digits-eps0.3-s0`` -> ``at``,
    ``p-sat-eps0.1`` -> ``p-sat``; a name of another form comes back without its eps and seed suffixes."""
    from .data import available_datasets
    name = re.sub(r"-eps[\d.e-]+$|-s\d+$", "", run)
    name = re.sub(r"-eps[\d.e-]+$|-s\d+$", "", name)
    for ds in sorted({str(dataset or ""), *available_datasets()} - {""}, key=len, reverse=True):
        if name.endswith("-" + ds.replace(":", "_").replace("/", "_")):
            return name[:-len(ds) - 1]
    return name


def known_method(run: str) -> str | None:
    """The training method a run name starts with (the longest of ``METHOD_NAMES``), or None."""
    return next((m for m in sorted(METHOD_NAMES, key=len, reverse=True) if run == m or run.startswith(m + "-")),
                None)


def pretty_method(name: str | None) -> str:
    """``h-sat-affine`` -> ``H-SAT-affine``, ``at`` -> ``AT``: the house's display names of the methods."""
    if not name:
        return ""
    for key in sorted(METHOD_NAMES, key=len, reverse=True):
        if name == key or name.startswith(key + "-"):
            return METHOD_NAMES[key] + name[len(key):]
    return name


def selection_score(rule: str, row: dict) -> tuple[float, float]:
    """(the validation number ``rule`` ranks by, a key where higher is better) for one metrics row."""
    pgd = row["val_pgd"] if row.get("val_pgd") is not None else 0.0
    value = {"clean+pgd": row["val_clean"] + pgd, "pgd": pgd, "clean": row["val_clean"],
             "loss": row["val_loss"]}[rule]
    return value, (-value if rule == "loss" else value)


def write_metrics(path: Path, history: list[dict]) -> None:
    """``metrics.csv``: one row per epoch, the union of the rows' keys as columns, floats to 6 digits; atomic."""
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


def run_config(folder: Path) -> dict:
    """What describes the run in ``folder``: its summary.json, training.json or config.json ({} if none reads)."""
    for name in _CONFIG_FILES:
        p = folder / name
        if p.is_file():
            try:
                d = read_json(p)
            except (OSError, ValueError):
                continue
            if isinstance(d, dict):
                return d
    return {}


def read_runs(obj: Any) -> list[tuple[Any, dict]]:
    """[(metrics DataFrame, settings dict)] for a DataFrame, metrics.csv, run folder, training JSON or dict
    (with a ``history``), or a CSV of several runs (a ``method`` or ``run`` column): one entry per run."""
    import pandas as pd
    meta: dict = {}
    if isinstance(obj, pd.DataFrame):
        df = obj
    elif isinstance(obj, dict) or (isinstance(obj, (str, os.PathLike)) and Path(obj).suffix == ".json"):
        from .results import load_result
        d = load_result(obj)
        if not isinstance(d, dict) or not isinstance(d.get("history"), list):
            raise LandscapeError("a training result needs a 'history' (one row per epoch)")
        df, meta = pd.DataFrame(d["history"]), d
    else:
        p = Path(obj)
        if p.is_dir():
            meta = run_config(p)
            meta.setdefault("run", p.name)
            p = p / "metrics.csv"
        elif p.name == "metrics.csv":
            meta = run_config(p.parent)
            meta.setdefault("run", p.parent.name)
        if not p.is_file():
            raise LandscapeError(f"metrics file not found: {p}")
        try:
            df = pd.read_csv(p)
        except (OSError, ValueError) as e:
            raise LandscapeError(f"cannot read {p} as CSV ({e})") from e
    _check_metrics(df, str(obj) if isinstance(obj, (str, os.PathLike)) else "the training metrics")
    for col in ("run", "method"):
        if col in df.columns and df[col].nunique() > 1 or (col in df.columns and not meta):
            return [(g.drop(columns=[col]).reset_index(drop=True), {**meta, col: k, "run": k} if col == "run"
                     else {**meta, "method": k, "run": k})
                    for k, g in df.groupby(col, sort=False)]
    return [(df, meta)]


def _check_metrics(df, where: str) -> None:
    """A metrics table the plots and the report may draw: at least one epoch, and numbers in every column the
    house names (``COLUMN_NAMES``, ``epoch``); else one ``LandscapeError`` for every reader alike."""
    if len(df) == 0:
        raise LandscapeError(f"{where}: no epoch has finished yet (the metrics hold only a header)")
    for col in ("epoch", *COLUMN_NAMES):
        if col in df.columns and not is_numeric(df[col]):
            import pandas as pd
            bad = [v for v in df[col] if not pd.isna(v) and not _is_number(v)]   # missing values are allowed
            if bad:
                raise LandscapeError(f"{where}: column {col!r} holds {bad[0]!r}, not a number")


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def epochs(df) -> np.ndarray:
    """The epoch numbers of a metrics table (its ``epoch`` column, else 1, 2, ...)."""
    return np.asarray(df["epoch"] if "epoch" in df.columns else np.arange(1, len(df) + 1))


def best_epoch(df, meta: dict | None = None) -> int | None:
    """The best epoch: the run's own record (``best_epoch``), else the first epoch that ``selection_score``
    ranks highest, under the run's ``--select`` rule (recorded per row, else in ``meta``, else clean+pgd) and
    on its recorded ``select_score`` where there is one; None without validation columns."""
    meta = meta or {}
    if isinstance(meta.get("best_epoch"), int):
        return meta["best_epoch"]
    rule = str(df["select"].iloc[-1]) if "select" in df.columns else str(meta.get("select") or "clean+pgd")
    if rule not in SELECT_RULES:
        rule = "clean+pgd"
    if "select_score" in df.columns and df["select_score"].notna().any():
        score = df["select_score"].to_numpy(dtype=float)
        keys = np.where(np.isnan(score), -np.inf, -score if rule == "loss" else score)
    elif "val_clean" in df.columns and (rule != "loss" or "val_loss" in df.columns):
        rows = df.reindex(columns=["val_clean", "val_pgd", "val_loss"]).astype(float)
        rows = rows.fillna({"val_clean": 0.0, "val_pgd": 0.0, "val_loss": np.inf})   # a missing number never wins
        keys = np.array([selection_score(rule, row)[1] for row in rows.to_dict("records")])
    else:
        return None
    return int(epochs(df)[int(np.argmax(keys))])


def is_numeric(series) -> bool:
    """Whether a pandas column holds numbers (pandas 3 stores text in a dtype numpy cannot interpret)."""
    import pandas as pd
    return pd.api.types.is_numeric_dtype(series)


def sharpness_column(df) -> str | None:
    """The metrics column that holds the top Hessian eigenvalue per epoch (``sharpness``, or an older name)."""
    for c in df.columns:
        if c.lower() == "sharpness":
            return c
    for c in df.columns:
        lc = c.lower()
        if ("sharp" in lc or "top_eig" in lc or "lambda_max" in lc or "eigenvalue" in lc) and \
                is_numeric(df[c]) and not lc.endswith(("_hvps", "_seconds", "_converged")):
            return c
    return None
