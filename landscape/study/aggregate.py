"""A study's numbers put side by side: one row per cell (``per_model.csv``), mean ± s.d. over seeds per method
and eps (``summary.csv``/``.md``), every method against the reference method at each eps (``verdicts.csv``/
``.md``, the seed-spread rule of ``verdicts.verdict``), the study file's claims judged by the same rule
(``claims.csv``/``.md``), figures, one HTML report of every cell, and per cell a RobustBench-style
``model_info.json`` with our curvature and audit numbers in ``landscape_info.json`` beside it.

A folder in the layout of the committed SAT study (``models/NAME/{train,accuracy,spectrum,...}.json``, written
by the runner that preceded this package) is aggregated by ``legacy.aggregate_legacy`` into the very tables
committed with it, and its claims are judged on its own column names (``eig1``, ``test_pgd20``, ...).

Columns of per_model.csv (new layout): cell, the axes (method, eps, seed, ...), best_epoch, val_clean, val_pgd,
train_seconds; per eval step clean_acc, pgd_acc, autoattack_acc, n, audit_verdict, audit_worst_case (a second
eval step's columns carry its name: ``NAME_clean_acc``; eval_samples is the number of samples); per spectrum
step lambda_1..k, converged (how many of them converged), trace,
trace_stderr (named likewise); per surface step NAME_loss_center / _loss_min / _loss_max / _loss_mean, and
NAME_barrier for a 1D path that holds a = 0 and a = 1 (max over [0, 1] of the loss above the chord).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._version import __version__
from ..errors import ConfigError, LandscapeError
from ..io import write_json, write_text
from .spec import Cell, Claim, Study, _same
from .state import state
from .tables import barrier, fmt, grouped_markdown, summarize
from .verdicts import verdict


def _result(path: Path) -> dict | None:
    from ..results import load_result
    if not path.is_file():
        return None
    d = load_result(path)
    return d if isinstance(d, dict) else None


def _prefix(step_name: str, kind: str) -> str:
    return "" if step_name == kind else f"{step_name}_"


def cell_row(study: Study, cell: Cell) -> dict:
    """One flat row of scalars for a cell, from the result files of its finished steps."""
    row: dict[str, Any] = {"cell": cell.name, **cell.values}
    if cell.source is not None:
        row["checkpoint"] = cell.source
    for step in study.steps_of(cell):
        if state(study, cell, step).status != "done":
            continue
        outs = study.outputs(cell, step)
        if step.kind == "train":
            row.update(_train_columns(study.out / outs["run"]))
            continue
        d = _result(study.out / outs["result"])
        if d is None:
            continue
        p = _prefix(step.name, step.kind)
        if step.kind == "eval":     # (a step named "audit" gives audit_verdict, not audit_audit_verdict)
            row.update({(k if p and k.startswith(p) else p + k): v for k, v in _eval_columns(d).items()})
        elif step.kind == "spectrum":
            row.update({p + k: v for k, v in _spectrum_columns(d).items()})
        elif step.kind == "surface":
            row.update({f"{step.name}_{k}": v for k, v in _surface_columns(d).items()})
    return row


def _train_columns(run: Path) -> dict:
    from ..runs import best_epoch, read_runs
    try:
        df, meta = read_runs(run)[0]
    except LandscapeError:
        return {}
    best = best_epoch(df, meta)
    out: dict[str, Any] = {"best_epoch": best, "epochs": int(len(df))}
    if best is not None:
        r = df.iloc[int(best) - 1]
        for col in ("val_clean", "val_pgd"):
            if col in df.columns:
                out[col] = float(r[col])
    if "seconds" in df.columns:
        out["train_seconds"] = float(df["seconds"].sum())
    return out


def _eval_columns(d: dict) -> dict:
    if isinstance(d.get("accuracies"), dict):          # an audit
        acc = d["accuracies"]
        block = d.get("audit") or {}
        return {"clean_acc": acc.get("clean"), "pgd_acc": acc.get("pgd"), "autoattack_acc": acc.get("autoattack"),
                "audit_worst_case": acc.get("worst_case"), "audit_verdict": block.get("verdict", d.get("verdict")),
                "eval_samples": d.get("n")}
    return {"clean_acc": d.get("clean_acc"), "pgd_acc": d.get("pgd_acc"), "autoattack_acc": d.get("autoattack_acc"),
            "eval_samples": d.get("n")}


def _spectrum_columns(d: dict) -> dict:
    from ..results import spectrum_parts
    top, tr, _ = spectrum_parts(d)
    out: dict[str, Any] = {}
    if top:
        for i, v in enumerate(top.get("values") or []):
            out[f"lambda_{i + 1}"] = float(v)
        conv = top.get("converged") or []
        out["converged"] = int(sum(bool(c) for c in conv))
    if tr:
        out["trace"] = tr.get("estimate")
        out["trace_stderr"] = tr.get("stderr")
    return out


def _surface_columns(d: dict) -> dict:
    loss = np.asarray(d.get("loss") if d.get("loss") is not None else [], dtype=float)
    if loss.size == 0:
        return {}
    out = {"loss_center": (d.get("center") or {}).get("loss"), "loss_min": float(np.nanmin(loss)),
           "loss_max": float(np.nanmax(loss)), "loss_mean": float(np.nanmean(loss))}
    x = np.asarray(d.get("x") or [], dtype=float)
    kind = ((d.get("settings") or {}).get("directions") or {}).get("spec", {}).get("directions")
    if kind == "interpolate" and d.get("dim") == 1 and loss.ndim == 1 and x.size == loss.size \
            and 0.0 in x and 1.0 in x:
        out["barrier"] = barrier(x, loss)
    return out


def per_model(study: Study):
    """The per-cell table (pandas), cells in the study's order."""
    import pandas as pd
    return pd.DataFrame([cell_row(study, c) for c in study.cells])


def _group_axes(study: Study, df) -> list[str]:
    return [a for a in study.axes if a not in ("seed", "model") and a in df.columns]


def judge_claim(df, claim: Claim) -> dict:
    """A claim's verdict by the seed-spread rule (``verdicts.verdict``): holds / does not hold / undecided."""
    metric = claim.metric if claim.metric in df.columns else ALIASES.get(claim.metric)
    if metric is not None and metric in df.columns and metric != claim.metric:
        claim = dataclasses.replace(claim, metric=metric)      # the committed layout's name on a rerun's table
    if claim.metric not in df.columns:
        raise ConfigError(f"claim {claim.name!r}: no column {claim.metric!r} in per_model.csv; its columns: "
                          f"{', '.join(c for c in df.columns if c != 'cell')}")

    def pick(flt: dict):
        mask = np.ones(len(df), dtype=bool)
        for k, v in flt.items():
            mask &= np.array([_same(x, v) for x in df[k]]) if k in df.columns else False
        return df[mask]
    base = {"claim": claim.name, "metric": claim.metric}
    if claim.trend:
        part = pick(claim.where)
        levels = sorted({float(v) if isinstance(v, (int, float)) else v for v in part[claim.along]})
        pairs = []
        for lo, hi in zip(levels, levels[1:]):
            v = verdict(pick({claim.along: hi}).loc[lambda f: f.index.isin(part.index), claim.metric].tolist(),
                        pick({claim.along: lo}).loc[lambda f: f.index.isin(part.index), claim.metric].tolist())
            pairs.append((lo, hi, v))
        if len(pairs) == 0:
            return {**base, "verdict": "undecided", "detail": f"fewer than 2 values of {claim.along}"}
        want = 1 if claim.trend == "increasing" else -1
        signs = [None if v["exceeds_spread"] is None else (np.sign(v["diff"]) if v["exceeds_spread"] else 0)
                 for _, _, v in pairs]
        detail = "; ".join(f"{claim.along} {lo:g} -> {hi:g}: {fmt(v['mean_b'], v['sd_b'])} -> "
                           f"{fmt(v['mean_a'], v['sd_a'])} ({v['verdict']})" for lo, hi, v in pairs)
        if any(s is None for s in signs):
            text = "undecided"
        elif all(s == want for s in signs):
            text = "holds"
        elif any(s == -want for s in signs):
            text = "contradicted"
        else:
            text = "not shown (within the seed spread)"
        return {**base, "verdict": text, "detail": detail}
    a, b = pick(claim.a)[claim.metric].tolist(), pick(claim.b)[claim.metric].tolist()
    v = verdict(a, b)
    if v["exceeds_spread"] is None:
        text = "undecided"
    elif claim.expect == "equal":
        text = "holds" if not v["exceeds_spread"] else "does not hold"
    else:
        sign = 1 if claim.expect == "above" else -1
        text = ("holds" if v["exceeds_spread"] and np.sign(v["diff"]) == sign else
                "contradicted" if v["exceeds_spread"] else "not shown (within the seed spread)")
    return {**base, "verdict": text, "detail": f"A {fmt(v['mean_a'], v['sd_a'])} (n={v['n_a']}) vs B "
            f"{fmt(v['mean_b'], v['sd_b'])} (n={v['n_b']}): {v['verdict']}", "diff": v["diff"],
            "two_pooled_sd": 2 * v["pooled_sd"] if v["pooled_sd"] == v["pooled_sd"] else math.nan}


GROUPS = (("accuracy and training", ("clean_acc", "pgd_acc", "autoattack_acc", "audit_", "val_", "best_epoch",
                                     "train_")),
          ("curvature", ("lambda_", "trace")),
          ("surfaces and paths", ("surface", "path")))
#: the committed SAT study's column names and a landscape-study run's, both ways
ALIASES = {"eig1": "lambda_1", "eig2": "lambda_2", "test_clean": "clean_acc", "test_pgd20": "pgd_acc",
           "test_autoattack": "audit_autoattack_acc"}
ALIASES.update({v: k for k, v in list(ALIASES.items())})
RULE = ("Rule: a difference counts when |mean A - mean B| > 2 x pooled s.d. over seeds (pooled s.d. = "
        "sqrt((sd_A^2 + sd_B^2)/2), sample s.d.s); fewer than 2 seeds on a side: undecided. A trend holds when "
        "every step along the axis moves the metric the claimed way beyond the spread.")


def write_claims(out: Path, df, claims: Sequence[Claim]) -> list[str]:
    """claims.csv and claims.md; [] when the study has no claims."""
    import pandas as pd
    if not claims:
        return []
    rows = [judge_claim(df, c) for c in claims]
    write_text(out / "claims.csv", pd.DataFrame(rows).to_csv(index=False))
    lines = [RULE, "", "| claim | metric | verdict | evidence |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {r['metric']} | **{r['verdict']}** | {r['detail']} |" for r in rows]
    write_text(out / "claims.md", "\n".join(lines) + "\n")
    return ["claims.csv", "claims.md"]


def _comparisons(study: Study, df, reference: str = "at"):
    """Every method against ``reference`` at each eps (other axes equal), on every numeric column."""
    import pandas as pd
    if "method" not in df.columns or reference not in set(df.method):
        return pd.DataFrame()
    metrics = [c for c in df.columns if c not in (*study.axes, "cell", "epochs", "converged")
               and not c.endswith("eval_samples") and pd.api.types.is_numeric_dtype(df[c])]
    groups = [a for a in _group_axes(study, df) if a != "method"]
    rows = []
    for key, part in (df.groupby(groups, sort=True) if groups else [((), df)]):
        key = key if isinstance(key, tuple) else (key,)
        ref = part[part.method == reference]
        for m in [m for m in dict.fromkeys(part.method) if m != reference]:
            other = part[part.method == m]
            for metric in metrics:
                v = verdict(other[metric].tolist(), ref[metric].tolist())
                if v["n_a"] and v["n_b"]:
                    rows.append({"comparison": f"{m} vs {reference}", **dict(zip(groups, key)), "metric": metric, **v})
    return pd.DataFrame(rows)


def model_info(study: Study, cell: Cell, row: dict) -> tuple[dict, dict]:
    """RobustBench's ModelInfo fields for a cell (clean and AutoAttack accuracy when AutoAttack ran on the
    test split), and our numbers for the sidecar."""
    def pct(v):
        return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * float(v):.2f}"
    prefix = next((c[:-len("autoattack_acc")] for c in row if c.endswith("autoattack_acc")
                   and row.get(c) is not None), "")
    aa = row.get(prefix + "autoattack_acc")
    samples = row.get(prefix + "eval_samples")
    arch = str(study.train.get("model") or study.source_options.get("arch") or row.get("checkpoint") or "auto")
    if cell.trained:
        from ..models import resolve_model_name
        try:
            arch = resolve_model_name(arch, str(study.train.get("dataset") or "digits"))
        except LandscapeError:
            pass
    info = {"link": None, "name": f"{study.name}: {cell.name}", "authors": None, "additional_data": False,
            "number_forward_passes": 1, "dataset": str(study.train.get("dataset") or
                                                       study.source_options.get("dataset") or "digits"),
            "venue": None, "architecture": arch,
            "eps": (f"{cell.values['eps']:g}" if "eps" in cell.values else None),
            "clean_acc": pct(row.get(prefix + "clean_acc")) if aa is not None else None,
            "reported": None, "autoattack_acc": pct(aa), "footnote": "measured by landscape-study "
            f"{__version__} on the first {samples} test samples" if aa is not None else None}
    side = {"kind": "study_cell", "landscape_version": __version__, "study": study.name, "cell": cell.name,
            **{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}}
    return info, side


def aggregate(study: Study, figures: bool = True, report: bool = True) -> list[str]:
    """Write every table (module doc) into the study's folder; returns the names written."""
    out = study.out
    if (out / "models").is_dir() and not (out / "cells").is_dir():
        return _aggregate_legacy(study, figures)
    if not (out / "cells").is_dir():
        raise LandscapeError(f"{out} holds no cell yet: run the study first (landscape-study run {study.file})")
    df = per_model(study)
    if len(df.columns) <= len(study.axes) + 1:
        raise LandscapeError(f"{out}: no step of any cell is done yet; nothing to aggregate")
    written = []
    write_text(out / "per_model.csv", df.to_csv(index=False))
    written.append("per_model.csv")
    by = _group_axes(study, df)
    numeric = df.drop(columns=[c for c in df.columns if c in ("cell", "checkpoint", "audit_verdict", "epochs",
                                                             "converged") or c.endswith("eval_samples")])
    if by:
        summ = summarize(numeric, by)
        write_text(out / "summary.csv", summ.to_csv(index=False))
        write_text(out / "summary.md", grouped_markdown(summ, by, GROUPS))
        written += ["summary.csv", "summary.md"]
    comp = _comparisons(study, df, str(study.reference.get("method", "at")))
    if not comp.empty:
        write_text(out / "verdicts.csv", comp.to_csv(index=False))
        lines = [RULE, "", "| comparison | " + " | ".join(a for a in by if a != "method") + " | metric | A | B | diff | "
                 "2 x pooled s.d. | verdict |", "|---|" + "---|" * (len([a for a in by if a != "method"]) + 6)]
        for _, r in comp.iterrows():
            lines.append(f"| {r.comparison} | " + " | ".join(f"{r[a]:g}" if isinstance(r[a], float) else str(r[a])
                                                             for a in by if a != "method")
                         + f" | {r.metric} | {fmt(r.mean_a, r.sd_a)} | {fmt(r.mean_b, r.sd_b)} | {r['diff']:.3g} | "
                         f"{2 * r.pooled_sd:.3g} | {r.verdict} |")
        write_text(out / "verdicts.md", "\n".join(lines) + "\n")
        written += ["verdicts.csv", "verdicts.md"]
    for cell, (_, row) in zip(study.cells, df.iterrows()):
        info, side = model_info(study, cell, {k: v for k, v in row.items() if not _missing(v)})
        d = out / study.cell_dir(cell)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "model_info.json", info)
        write_json(d / "landscape_info.json", side)
    written.append("cells/*/model_info.json, cells/*/landscape_info.json")
    if figures:
        written += _figures(study, df)
    if report:
        written += _report(study)
    written += write_claims(out, df, study.claims)    # last: a claim on a missing column is refused after the rest
    return written


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not np.isfinite(v))


def _figures(study: Study, df) -> list[str]:
    """One figure: each numeric headline metric against eps (or cell), a line per method, seeds as points."""
    from .figures import headline_figure
    path = headline_figure(study.out, df, [m for m in ("clean_acc", "pgd_acc", "autoattack_acc", "lambda_1",
                                                       "trace") if m in df.columns])
    return [path.name] if path else []


def _report(study: Study) -> list[str]:
    """report.html of every cell (landscape-report's page); skipped with a note without plotly."""
    try:
        from ..report import write_report
    except ImportError:
        return []
    paths = []
    for c in study.cells:
        d = study.out / study.cell_dir(c)
        for p in sorted(d.glob("*.json")):
            if p.name not in ("model_info.json", "landscape_info.json"):
                paths.append(p)
        if (d / "train" / "metrics.csv").exists():
            paths.append(d / "train")
    if not paths:
        return []
    try:
        write_report([str(p) for p in paths], study.out / "report.html", f"study {study.name}")
    except LandscapeError as e:
        if "plotly" in str(e):
            return [f"(no report.html: {e})"]
        raise
    return ["report.html"]


def _aggregate_legacy(study: Study, figures: bool) -> list[str]:
    from .layout import read_models
    from .legacy import aggregate_legacy
    eps = sorted({float(c.values["eps"]) for c in study.cells if "eps" in c.values
                  and c.values.get("method") != "at"} or {0.3, 0.4})
    written = aggregate_legacy(study.out, eps, write_figures=figures)
    names = []
    for k, v in written.items():
        if k == "figures":
            names += [Path(p).name for p in v]
        elif k == "per_model":
            names.append("per_model.csv")
        elif k == "audit":
            names += ["audit.csv", "summary_autoattack.md", "verdicts_autoattack.md"]
        else:
            names += [f"{k}.csv", f"{k}.md"]
    if study.claims:
        df, _ = read_models(study.out)
        names += write_claims(study.out, df, study.claims)
    return names
