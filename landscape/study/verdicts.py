"""The study's verdicts: does a difference between two groups of seeds exceed their seed-to-seed spread?

``verdict`` (two groups) and ``verdict_vs_zero`` (one group against 0) are the rule; ``verdicts`` applies it
to a per-model table (every method against a reference method at each eps), ``verdicts_markdown`` writes the
result as the study's verdicts.md."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from .tables import flagged_cell, fmt


def _t(diff: float, se: float) -> float:
    """diff / se, with +-inf (or 0) when the standard error is 0."""
    return diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0


def verdict(a: Sequence[float], b: Sequence[float], k: float = 2.0) -> dict:
    """Does mean(a) - mean(b) exceed the seed-to-seed spread?

    Rule: yes when |mean_a - mean_b| > k * pooled s.d. with pooled s.d. = sqrt((sd_a^2 + sd_b^2) / 2) (sample
    s.d.s, ddof 1) and k = 2; with fewer than 2 seeds on a side there is no spread and no verdict. Welch's
    t = diff / sqrt(sd_a^2/n_a + sd_b^2/n_b) is reported beside it for the reader (with 3 seeds a side its
    degrees of freedom lie between 2 and 4, so |t| > 2.8 to 4.3 is p < 0.05 two-sided); the rule is the verdict.
    With equal s.d.s the rule is |t| > 2 sqrt(n/2) = 2.45 for n = 3: a simple, slightly lenient screen.
    """
    a, b = np.asarray([v for v in a if v is not None and np.isfinite(v)], float), \
        np.asarray([v for v in b if v is not None and np.isfinite(v)], float)
    out = {"mean_a": float(a.mean()) if a.size else math.nan, "mean_b": float(b.mean()) if b.size else math.nan,
           "n_a": int(a.size), "n_b": int(b.size)}
    out["diff"] = out["mean_a"] - out["mean_b"]
    if a.size < 2 or b.size < 2:
        return {**out, "sd_a": math.nan, "sd_b": math.nan, "pooled_sd": math.nan, "welch_t": math.nan,
                "exceeds_spread": None, "verdict": "no spread (fewer than 2 seeds)"}
    sa, sb = float(a.std(ddof=1)), float(b.std(ddof=1))
    pooled = math.sqrt((sa ** 2 + sb ** 2) / 2)
    se = math.sqrt(sa ** 2 / a.size + sb ** 2 / b.size)
    t = _t(out["diff"], se)
    exceeds = abs(out["diff"]) > k * pooled
    text = ("within the seed spread" if not exceeds else
            "A above B beyond the seed spread" if out["diff"] > 0 else "A below B beyond the seed spread")
    return {**out, "sd_a": sa, "sd_b": sb, "pooled_sd": pooled, "welch_t": t, "exceeds_spread": exceeds,
            "verdict": text}


def verdict_vs_zero(a: Sequence[float], k: float = 2.0) -> dict:
    """Is mean(a) away from 0 beyond the seed-to-seed spread? For a quantity with no AT counterpart (the
    barrier on the path from AT to a model is 0 for AT itself). Rule: |mean| > k * s.d. (ddof 1, k = 2),
    the one-sample analogue of ``verdict``; t = mean / (s.d. / sqrt(n)) beside it (with 3 seeds, |t| > 4.3 is
    p < 0.05 two-sided, and the rule is |t| > 3.46)."""
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], float)
    out = {"mean_a": float(a.mean()) if a.size else math.nan, "mean_b": 0.0, "n_a": int(a.size), "n_b": 0,
           "sd_b": 0.0}
    out["diff"] = out["mean_a"]
    if a.size < 2:
        return {**out, "sd_a": math.nan, "pooled_sd": math.nan, "welch_t": math.nan, "exceeds_spread": None,
                "verdict": "no spread (fewer than 2 seeds)"}
    sa = float(a.std(ddof=1))
    t = _t(out["diff"], sa / math.sqrt(a.size))
    exceeds = abs(out["diff"]) > k * sa
    text = ("within the seed spread of 0" if not exceeds else
            "above 0 beyond the seed spread" if out["diff"] > 0 else "below 0 beyond the seed spread")
    # pooled_sd is reported so that the table's "2 x pooled s.d." column shows this rule's threshold, 2 s.d.
    return {**out, "sd_a": sa, "pooled_sd": sa, "welch_t": t, "exceeds_spread": exceeds, "verdict": text}


#: per-model columns compared between each method and the reference (with every ``flat_*`` column)
VERDICT_METRICS = ("test_clean", "test_pgd20", "train_pgd20", "eig1", "eigen_plane_max", "random_plane_max")
#: against 0: see verdict_vs_zero
PATH_METRICS = ("path_barrier_clean", "path_barrier_adversarial")


def _flags(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """The audit's flags in groups A and B ('k of m'), when the models were audited."""
    if "audit_suspect" not in a.columns:
        return {}
    return {"audit_flagged_a": flagged_cell(a.audit_suspect.sum(), a.audit_suspect.count()),
            "audit_flagged_b": flagged_cell(b.audit_suspect.sum(), b.audit_suspect.count())}


def verdicts(df: pd.DataFrame, grid_eps: Sequence[float], layers: pd.DataFrame | None = None,
             reference: str = "at") -> pd.DataFrame:
    """Every method against ``reference`` at each grid eps (VERDICT_METRICS and every flatness column; with
    ``layers``, each layer's top eigenvalue of each loss), each other method's barrier on the path from AT
    against 0 (``verdict_vs_zero``), and ``reference`` at each eps against itself at the next smaller one on
    the top eigenvalue and trace (claim 1).

    ``df`` has a row per model (columns method, eps, seed and the metrics; ``audit_suspect`` adds each side's
    flagged count); ``layers`` a row per model, layer and loss (method, eps, layer, loss, top_eigenvalue)."""
    rows = []
    flat = [c for c in df.columns if c.startswith("flat_")]
    for eps in grid_eps:
        ref = df[(df.method == reference) & np.isclose(df.eps, eps)]
        for m in sorted(set(df.method) - {reference}):
            other = df[(df.method == m) & np.isclose(df.eps, eps)]
            if other.empty:
                continue
            for metric in [*VERDICT_METRICS, *flat]:
                if metric in df.columns:
                    rows.append({"comparison": f"{m} vs {reference}", "eps": eps, "metric": metric,
                                 **verdict(other[metric].tolist(), ref[metric].tolist()), **_flags(other, ref)})
            for metric in PATH_METRICS:
                if metric in df.columns:
                    rows.append({"comparison": f"{m} vs 0", "eps": eps, "metric": metric,
                                 **verdict_vs_zero(other[metric].tolist()), **_flags(other, other.iloc[:0])})
    ref = df[df.method == reference]
    eps_all = sorted(set(ref.eps))
    for lo, hi in zip(eps_all, eps_all[1:]):
        a, b = ref[np.isclose(ref.eps, hi)], ref[np.isclose(ref.eps, lo)]
        for metric in ("eig1", "trace"):
            if metric in df.columns:
                rows.append({"comparison": f"{reference} eps {hi:g} vs {reference} eps {lo:g}", "eps": hi,
                             "metric": metric, **verdict(a[metric].tolist(), b[metric].tolist()), **_flags(a, b)})
    if layers is not None and len(layers):
        for (eps, layer, loss), part in layers.groupby(["eps", "layer", "loss"], sort=True):
            ref_layer = part[part.method == reference]
            for m in sorted(set(part.method) - {reference}):
                other = part[part.method == m]
                rows.append({"comparison": f"{m} vs {reference}", "eps": eps,
                             "metric": f"layer {layer} top eig ({loss})",
                             **verdict(other["top_eigenvalue"].tolist(), ref_layer["top_eigenvalue"].tolist()),
                             **_flags(other, ref_layer)})
    return pd.DataFrame(rows)


def verdicts_markdown(v: pd.DataFrame) -> str:
    """``verdicts``' table as verdicts.md: the rule, then one row per comparison (with the audit's flags of each
    side when the models were audited)."""
    audited = "audit_flagged_a" in v.columns
    # the audit's origin is named as the committed results/sat-study/verdicts.md has it (byte-identical)
    lines = ["Rule: a difference counts when |mean A - mean B| > 2 x pooled s.d. over seeds "
             "(pooled s.d. = sqrt((sd_A^2 + sd_B^2)/2)); Welch's t beside it. A path barrier (\"vs 0\": AT's "
             "own path has none) counts when |mean| > 2 x its s.d., shown in the same column; t = mean / "
             "(s.d. / sqrt(n))." + (" Audit: A/B flagged = the models of each side that the evaluation audit "
                                    "calls suspect (sat_study_audit.py, re-judged under today's thresholds)."
                                    if audited else "") + "\n",
             "| comparison | eps | metric | A | B | diff | 2 x pooled s.d. | Welch t | verdict |"
             + (" audit: A flagged | B flagged |" if audited else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if audited else "")]
    for _, r in v.iterrows():
        lines.append(f"| {r.comparison} | {r.eps:g} | {r.metric} | {fmt(r.mean_a, r.sd_a)} | "
                     f"{fmt(r.mean_b, r.sd_b)} | {r['diff']:.3g} | {2 * r.pooled_sd:.3g} | {r.welch_t:.3g} | "
                     f"{r.verdict} |" + (f" {r.audit_flagged_a} | {r.audit_flagged_b} |" if audited else ""))
    return "\n".join(lines) + "\n"
