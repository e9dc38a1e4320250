"""The committed SAT study's layout (results/sat-study), tabulated.

Per model, ``OUT/models/NAME/`` holds the files that ``landscape.study.layout`` reads (``model_row``: one
folder as a flat row); ``aggregate_legacy`` writes every table of the study from them: per_model.csv,
summary_eps_sweep / summary_methods / summary_layers (.csv: mean, s.d. and n over seeds; .md), verdicts.csv/.md
(``landscape.study.verdicts``), and, from the audit.json files, audit.csv, summary_autoattack.md and
verdicts_autoattack.md; then the figures (``landscape.study.figures``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..audit import rejudge
from ..errors import LandscapeError
from ..io import write_text
from ..results import load_result   # the results owner reads result files
from .layout import METHODS, read_models
from .tables import flagged_cell, fmt, grouped_markdown, markdown_table, summarize
from .verdicts import verdict, verdicts, verdicts_markdown


# --- the audit's tables (audit.json per model) --------------------------------------------------------------

def audit_rows(out: Path) -> list[dict]:
    """One row per audited model, its verdict re-judged under today's thresholds."""
    table = []
    for path in sorted((out / "models").glob("*/audit.json")):
        d = load_result(path)
        tr = load_result(path.parent / "train.json")["settings"]
        block = rejudge(d)
        failed = [c["name"] for c in block["checks"] if c["passed"] is False]
        acc = d["accuracies"]
        table.append({"model": path.parent.name, "method": tr["method"], "eps": tr["eps"], "seed": tr["seed"],
                      "n": d["n"], "clean": acc["clean"], "pgd20": acc["pgd"], "autoattack": acc["autoattack"],
                      "worst_case": acc["worst_case"], "pgd_minus_autoattack": acc["pgd"] - acc["autoattack"],
                      "square_after_white_box": acc["autoattack_after"]["fab-t"] - acc["autoattack_after"]["square"],
                      "verdict": block["verdict"], "flagged": " ".join(failed),
                      "retrained_identical": d["retrained"]["identical"],
                      "retrained_largest_difference": d["retrained"]["largest_difference"],
                      "audit_seconds": d["cost"]["audit_seconds_without_autoattack"],
                      "autoattack_seconds": d["cost"]["parts"].get("autoattack", {}).get("seconds"),
                      "seconds": d["seconds"]})
    return table


#: AutoAttack accuracy from which a model's audit-to-AutoAttack time ratio is counted in the cost line
ROBUST_FOR_COST = 0.2


def aggregate_audit(out: Path) -> pd.DataFrame:
    """audit.csv (one row per audited model: clean, PGD-20 and AutoAttack accuracy on the same n images, the
    audit's worst case, the verdict and the checks that flagged, re-judged from the stored evidence under
    today's ``audit.Thresholds``, and whether the retrained model equals the committed one),
    summary_autoattack.md (mean and s.d. over seeds per method and eps, flagged models counted, the cost line)
    and verdicts_autoattack.md (each method against AT on AutoAttack and PGD-20 accuracy, ``verdict``'s rule).
    Returns audit.csv's table."""
    df = pd.DataFrame(audit_rows(out))
    if df.empty:
        raise LandscapeError(f"{out / 'models'} holds no audit.json yet")
    df = df.sort_values(["eps", "method", "seed"])
    write_text(out / "audit.csv", df.to_csv(index=False))
    lines = [f"AutoAttack (standard) and PGD-20 (step eps/4) on the same first {int(df.n.iloc[0])} test images; "
             "mean ± s.d. over seeds; flagged = models whose audit says 'suspect' (landscape.audit, thresholds "
             "of today's audit.Thresholds, re-judged from the stored evidence).\n",
             "| eps | method | seeds | clean | PGD-20 | AutoAttack | PGD-20 − AA | Square after white-box | flagged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (eps, method), g in df.groupby(["eps", "method"], sort=True):
        flagged = g[g.verdict == "suspect"]
        mark = f"{len(flagged)} ({', '.join(sorted(set(' '.join(flagged.flagged).split())))})" if len(flagged) else "0"
        lines.append(f"| {eps:g} | {method} | {len(g)} | {fmt(g.clean.mean(), g.clean.std())} | "
                     f"{fmt(g.pgd20.mean(), g.pgd20.std())} | {fmt(g.autoattack.mean(), g.autoattack.std())} | "
                     f"{fmt(g.pgd_minus_autoattack.mean(), g.pgd_minus_autoattack.std())} | "
                     f"{fmt(g.square_after_white_box.mean(), g.square_after_white_box.std())} | {mark} |")
    same = int(df.retrained_identical.sum())
    lines.append(f"\nRetrained models identical to the committed ones (test clean and PGD-20 accuracy on 1,000 "
                 f"images, best epoch): {same} of {len(df)}; largest accuracy difference "
                 f"{df.retrained_largest_difference.max():.4f}.")
    # per model, on the models AutoAttack has work on (a collapsed model's AutoAttack stops in seconds, so its
    # ratio says nothing); the sum ratio beside it also counts waits (a paused run) and resumed AutoAttack runs
    robust = df[df.autoattack >= ROBUST_FOR_COST]
    ratio = robust.audit_seconds / robust.autoattack_seconds
    lines.append(f"Audit cost beside AutoAttack (the audit's own attacks; one thread per process): median "
                 f"{ratio.median():.2f} of AutoAttack's time per model (range {ratio.min():.2f}-{ratio.max():.2f}; "
                 f"median {robust.audit_seconds.median():.0f} s against {robust.autoattack_seconds.median():.0f} s) "
                 f"over the {len(robust)} models with AutoAttack accuracy >= {ROBUST_FOR_COST:g}; over all "
                 f"{len(df)}: {df.audit_seconds.sum() / df.autoattack_seconds.sum():.2f} (audit "
                 f"{df.audit_seconds.sum():.0f} s, AutoAttack {df.autoattack_seconds.sum():.0f} s).")
    write_text(out / "summary_autoattack.md", "\n".join(lines) + "\n")
    vrows = ["Each method against AT at the same eps, on AutoAttack accuracy (rule of verdicts.md: a difference "
             "counts when |mean A − mean B| > 2 × pooled s.d. over seeds). Models the audit flags are counted "
             "beside.\n", "| comparison | eps | metric | A | B | diff | 2 × pooled s.d. | verdict | A flagged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for eps in sorted(set(df.eps)):
        at = df[(df.method == "at") & (df.eps == eps)]
        for m in [m for m in METHODS if m != "at"]:
            o = df[(df.method == m) & (df.eps == eps)]
            if o.empty or at.empty:
                continue
            for metric in ("autoattack", "pgd20"):
                v = verdict(o[metric].tolist(), at[metric].tolist())
                vrows.append(f"| {m} vs at | {eps:g} | {metric} | {fmt(v['mean_a'], v['sd_a'])} | "
                             f"{fmt(v['mean_b'], v['sd_b'])} | {v['diff']:.3g} | {2 * v['pooled_sd']:.3g} | "
                             f"{v['verdict']} | {flagged_cell((o.verdict == 'suspect').sum(), len(o))} |")
    write_text(out / "verdicts_autoattack.md", "\n".join(vrows) + "\n")
    return df


# --- everything -------------------------------------------------------------------------------------------

def aggregate_legacy(out: Path, grid_eps: Sequence[float], write_figures: bool = True) -> dict:
    """Every table from ``out/models/*/`` (module doc); with ``write_figures``, the figures too (fig_*.png;
    fig_input_space.png when ``out/input_space`` holds its surfaces). Returns what was written: the summary,
    verdict and audit tables (DataFrames) by name, and "figures" (the paths)."""
    out = Path(out)
    df, layers = read_models(out)
    write_text(out / "per_model.csv", df.to_csv(index=False))
    written: dict = {"per_model": df}
    grid = df[df.eps.isin(grid_eps)]
    for name, part, by in (("summary_eps_sweep", df[df.method == "at"], ["eps"]),
                           ("summary_methods", grid, ["eps", "method"])):
        if part.empty:
            continue
        summ = summarize(part.drop(columns=["method"]) if by == ["eps"] else part, by)
        write_text(out / f"{name}.csv", summ.to_csv(index=False))
        write_text(out / f"{name}.md", grouped_markdown(summ, by))
        written[name] = summ
    if layers:
        ldf = pd.DataFrame(layers)
        summ = summarize(ldf, ["eps", "loss", "layer", "method"])
        write_text(out / "summary_layers.csv", summ.to_csv(index=False))
        write_text(out / "summary_layers.md", markdown_table(summ, ["eps", "loss", "layer", "method"]))
        written["summary_layers"] = summ
    v = verdicts(df, grid_eps, pd.DataFrame(layers) if layers else None)
    if not v.empty:
        write_text(out / "verdicts.csv", v.to_csv(index=False))
        write_text(out / "verdicts.md", verdicts_markdown(v))
        written["verdicts"] = v
    if any((out / "models").glob("*/audit.json")):
        written["audit"] = aggregate_audit(out)
    if write_figures:
        from .figures import draw, input_space_figure   # matplotlib figures from the files just written
        figures = draw(out, grid_eps)
        extra = input_space_figure(out)
        written["figures"] = figures + ([extra] if extra else [])
    return written
