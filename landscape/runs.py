"""The run folder, its one owner: what ``landscape-train`` writes into ``RUNS/NAME/`` and how everything else
(plots, the report, the benchmarks) reads it back.

A run folder holds ``names.RUN_FILES`` (config.json, metrics.csv, last.pt, best.pt, hsat.json) and
epoch_XXX.pt; its name, the files it owns and the ``--select`` rules are named in ``landscape.names`` (a core
module the trainer writes by). ``metrics.csv`` has one row per epoch (written by ``io.write_csv``, read by
``read_runs``); the best epoch is the one that ``names.selection_score`` ranks highest under the run's
``--select`` rule (``best_epoch`` applies the same rule to a metrics table). No plotting import here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LandscapeError
from .io import read_json
from .names import SELECT_RULES, selection_score
from .results import load_result

COLUMN_NAMES = {"train_loss": "training loss", "train_acc": "training accuracy", "val_clean": "clean accuracy (val.)",
                "val_pgd": "PGD accuracy (val.)", "val_loss": "validation loss", "lam": "λ (curriculum)",
                "eps_t": "ε_t (training budget)", "lr": "learning rate", "sharpness": "top eigenvalue"}
_CONFIG_FILES = ("summary.json", "training.json", "config.json")   # what describes a run, most specific first


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
