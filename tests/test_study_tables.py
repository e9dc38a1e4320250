"""landscape.study's aggregation half: the seed-spread verdict rule, the summary tables and their markdown, the
reader of the committed per-model layout (layout.py), and the figures. The acceptance test re-aggregates a copy
of results/sat-study and finds every committed table byte for byte."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landscape.errors import LandscapeError
from landscape.io import read_json
from landscape.study.figures import draw
from landscape.study.layout import METHODS, model_row
from landscape.study.legacy import aggregate_legacy
from landscape.study.tables import barrier, flagged_cell, fmt, grouped_markdown, markdown_table, summarize
from landscape.study.verdicts import verdict, verdict_vs_zero, verdicts, verdicts_markdown

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "results" / "sat-study"
TABLES = ("per_model.csv", "summary_eps_sweep.csv", "summary_eps_sweep.md", "summary_methods.csv",
          "summary_methods.md", "summary_layers.csv", "summary_layers.md", "verdicts.csv", "verdicts.md",
          "audit.csv", "summary_autoattack.md", "verdicts_autoattack.md")
FIGURES = ("eps_sweep", "methods", "flatness", "paths", "layers", "surfaces_eigen", "surfaces_random")


# --- the rule ---------------------------------------------------------------------------------------------

def test_verdict_rule():
    v = verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert v["exceeds_spread"] is True and v["diff"] == pytest.approx(-1.0)
    assert v["pooled_sd"] == pytest.approx(0.1) and "below" in v["verdict"]
    assert v["welch_t"] == pytest.approx(-1.0 / np.sqrt(2 * 0.01 / 3))
    v = verdict([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])  # diff 0.5, pooled s.d. 1: within
    assert v["exceeds_spread"] is False and v["verdict"] == "within the seed spread"
    v = verdict([1.0], [2.0, 2.1])
    assert v["exceeds_spread"] is None and np.isnan(v["pooled_sd"])
    v = verdict([1.0, None, np.nan, 1.0], [0.0, 0.0])   # missing values dropped; no spread at all: infinite t
    assert v["n_a"] == 2 and v["welch_t"] == np.inf and v["verdict"] == "A above B beyond the seed spread"


def test_verdict_against_zero_for_a_path_barrier():
    v = verdict_vs_zero([0.5, 0.6, 0.55])           # mean 0.55, s.d. 0.05: far from 0
    assert v["exceeds_spread"] is True and v["verdict"] == "above 0 beyond the seed spread"
    assert v["welch_t"] == pytest.approx(0.55 / (0.05 / np.sqrt(3)))
    v = verdict_vs_zero([0.0, 0.4, 0.2])            # mean 0.2, s.d. 0.2: 2 s.d. = 0.4 > 0.2
    assert v["exceeds_spread"] is False and "within" in v["verdict"]
    assert verdict_vs_zero([0.3])["exceeds_spread"] is None


def test_barrier_of_a_path():
    a = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    loss = np.array([9.0, 1.0, 3.0, 2.0, 9.0])  # outside [0, 1] does not count
    assert barrier(a, loss) == pytest.approx(3.0 - 1.5)


def test_barrier_is_the_one_each_committed_path_holds():
    paths = sorted(STUDY.glob("models/*/path.json"))
    assert len(paths) == 30
    for p in paths:
        d = read_json(p)
        for loss in ("clean", "adversarial"):
            assert barrier(d[loss]["a"], d[loss]["loss"]) == d[loss]["barrier"], p


# --- tables -------------------------------------------------------------------------------------------------

def _two_methods() -> pd.DataFrame:
    return pd.DataFrame({"method": ["at", "at", "sat-eps", "sat-eps"], "eps": [0.3] * 4, "seed": [0, 1, 0, 1],
                         "test_pgd20": [0.2, 0.4, 0.5, 0.5], "eig1": [10.0, 12.0, 8.0, 9.0]})


def test_summary_has_mean_and_sd_over_seeds_and_markdown_shows_them():
    df = _two_methods()
    summ = summarize(df, ["eps", "method"])
    at = summ[summ.method == "at"].iloc[0]
    assert at["test_pgd20_mean"] == pytest.approx(0.3) and at["test_pgd20_sd"] == pytest.approx(np.sqrt(0.02))
    assert at["n"] == 2 and "seed_mean" not in summ.columns
    md = grouped_markdown(summ, ["eps", "method"])
    assert "0.300 ± 0.141" in md and "11.00 ± 1.41" in md and "### accuracy" in md
    assert "### curvature" in md and "### scalar flatness" not in md   # empty sections left out
    v = verdicts(df, [0.3])
    row = v[(v.metric == "eig1")].iloc[0]
    assert row.comparison == "sat-eps vs at" and row.mean_a == pytest.approx(8.5)
    df["path_barrier_adversarial"] = [np.nan, np.nan, 0.5, 0.7]   # AT's own path has no barrier
    row = verdicts(df, [0.3]).set_index("metric").loc["path_barrier_adversarial"]
    assert row.comparison == "sat-eps vs 0" and row.mean_a == pytest.approx(0.6) and row.exceeds_spread


def test_markdown_cells():
    assert fmt(0.12345, 0.01) == "0.123 ± 0.010" and fmt(12.345, None) == "12.35" and fmt(123.45, np.nan) == "123.5"
    assert fmt(np.nan, 1.0) == "–" and fmt(None, None) == "–"
    assert flagged_cell(1, 3) == "1 of 3" and flagged_cell(0, 0) == "–"
    summ = summarize(_two_methods().assign(audit_suspect=[0.0, 0.0, 1.0, np.nan]), ["eps", "method"])
    assert list(summ.flagged) == [0, 1] and list(summ.audited) == [2, 1]
    md = markdown_table(summ, ["eps", "method"], ["eig1"])
    assert md.splitlines()[0] == "| eps | method | eig1 | n | audit: flagged |"
    assert "| 0.3 | sat-eps | 8.500 ± 0.707 | 2 | 1 of 1 |" in md


def test_verdicts_against_another_reference_and_the_eps_sweep():
    df = pd.concat([_two_methods(), pd.DataFrame({"method": ["at", "at"], "eps": [0.4, 0.4], "seed": [0, 1],
                                                  "test_pgd20": [0.1, 0.1], "eig1": [30.0, 31.0]})])
    v = verdicts(df, [0.3])
    assert set(v.comparison) == {"sat-eps vs at", "at eps 0.4 vs at eps 0.3"}
    sweep = v[v.comparison.str.startswith("at eps")].iloc[0]
    assert sweep.metric == "eig1" and sweep.mean_a == pytest.approx(30.5) and sweep.exceeds_spread
    v = verdicts(df, [0.3], reference="sat-eps")
    assert set(v.comparison) == {"at vs sat-eps"}
    assert v.set_index("metric").loc["eig1", "diff"] == pytest.approx(11.0 - 8.5)


def test_verdicts_markdown_names_the_rule_and_the_audit_columns_only_when_audited():
    df = _two_methods()
    md = verdicts_markdown(verdicts(df, [0.3]))
    assert md.startswith("Rule: a difference counts when |mean A - mean B| > 2 x pooled s.d.") and "Audit:" not in md
    assert "| sat-eps vs at | 0.3 | eig1 | 8.500 ± 0.707 | 11.00 ± 1.41 | -2.5 | 2.24 | -2.24 | A below B" in md
    md = verdicts_markdown(verdicts(df.assign(audit_suspect=[0.0, 0.0, 1.0, 0.0]), [0.3]))
    lines = md.splitlines()
    assert " Audit: A/B flagged" in lines[0] and lines[2].endswith(" audit: A flagged | B flagged |")
    assert lines[4].endswith("| 1 of 2 | 0 of 2 |")


# --- the committed layout -------------------------------------------------------------------------------

def _fake_model(out: Path, method: str, seed: int, suspect: bool, autoattack: float) -> None:
    """A model folder of the committed layout, small: train, accuracy, spectrum, layers, path and audit.json
    (its one check's stored evidence decides the re-judged verdict: 30 of 40 black-box breaks, or none)."""
    folder = out / "models" / f"{method}-eps0.3-s{seed}"
    folder.mkdir(parents=True)
    files = {
        "train.json": {"settings": {"method": method, "eps": 0.3, "seed": seed}, "best_epoch": 5,
                       "train_acc_objective_last": 0.6, "train_clean_acc": 0.8, "train_pgd20_acc": 0.4,
                       "seconds": 100.0, "eval_seconds": 1.0},
        "accuracy.json": {"clean_acc": 0.8, "pgd20_acc": 0.4 + 0.01 * seed, "seconds": 2.0},
        "spectrum.json": {"eigenvalues": [10.0 + seed, 5.0], "seconds": 3.0},
        "layers.json": {"layers": [{"layer": "0", "loss": loss, "top_eigenvalue": 1.0 + seed}
                                   for loss in ("clean", "adversarial")], "seconds": 4.0},
        "audit.json": {"n": 100, "seconds": 10.0,
                       "audit": {"verdict": "suspect" if suspect else "ok",
                                 "checks": [{"name": "black_box", "passed": not suspect, "advice": "",
                                             "evidence": {"count": 30 if suspect else 0, "of": 40, "summary": ""}}]},
                       "accuracies": {"clean": 0.9, "pgd": 0.5, "autoattack": autoattack, "worst_case": autoattack,
                                      "autoattack_after": {"fab-t": autoattack + 0.1, "square": autoattack}},
                       "retrained": {"identical": not suspect, "largest_difference": 0.01 if suspect else 0.0},
                       "cost": {"audit_seconds_without_autoattack": 2.0, "parts": {"autoattack": {"seconds": 8.0}}}}}
    if method != "at":
        files["path.json"] = {"clean": {"barrier": 0.1 + 0.1 * seed}, "adversarial": {"barrier": 0.5}, "seconds": 5.0}
    for name, d in files.items():
        (folder / name).write_text(json.dumps(d))


def test_models_the_audit_flags_are_marked_in_every_table(tmp_path):
    """With audit.json beside a model, per_model.csv gets AutoAttack and the verdict (re-judged from the
    evidence), every summary table a 'k of m' flagged column, every verdict row the flags of each side, and the
    audit's own tables count the same."""
    out = tmp_path / "study"
    for seed in (0, 1):
        _fake_model(out, "at", seed, False, 0.3)
        _fake_model(out, "sat-eps", seed, seed == 1, 0.1)
    row, layers = model_row(out / "models" / "sat-eps-eps0.3-s1")
    assert row["audit_suspect"] == 1.0 and row["audit_flags"] == "black_box" and row["test_autoattack"] == 0.1
    assert row["path_barrier_clean"] == pytest.approx(0.2) and row["eig1"] == 11.0
    assert row["analysis_seconds"] == pytest.approx(2 + 3 + 4 + 5 + 1)       # not train.json's or audit.json's
    assert len(layers) == 2 and {lr["audit_suspect"] for lr in layers} == {1.0}
    written = aggregate_legacy(out, (0.3,), write_figures=False)
    assert "figures" not in written and not list(out.glob("*.png"))
    per_model = pd.read_csv(out / "per_model.csv")
    assert list(per_model.method) == ["at", "at", "sat-eps", "sat-eps"]
    assert list(per_model.audit_suspect) == [0, 0, 0, 1]
    md = (out / "summary_methods.md").read_text()
    assert "audit: flagged" in md and "| 1 of 2 |" in md and "| 0 of 2 |" in md
    assert "| 1 of 2 |" in (out / "summary_layers.md").read_text()
    v = pd.read_csv(out / "verdicts.csv")
    assert set(v[v.comparison == "sat-eps vs at"].audit_flagged_a) == {"1 of 2"}
    assert set(v[v.comparison == "sat-eps vs at"].audit_flagged_b) == {"0 of 2"}
    assert set(v[v.comparison == "sat-eps vs 0"].metric) == {"path_barrier_clean", "path_barrier_adversarial"}
    audit_csv = pd.read_csv(out / "audit.csv").set_index("model")
    assert audit_csv.loc["sat-eps-eps0.3-s1", "verdict"] == "suspect"
    assert audit_csv.loc["at-eps0.3-s0", "verdict"] == "ok"
    assert "| 0.3 | sat-eps | 2 |" in (out / "summary_autoattack.md").read_text()
    assert "1 (black_box)" in (out / "summary_autoattack.md").read_text()
    assert "| sat-eps vs at | 0.3 | autoattack |" in (out / "verdicts_autoattack.md").read_text()
    assert "1 of 2" in (out / "verdicts_autoattack.md").read_text()


def test_no_finished_model_is_an_error(tmp_path):
    (tmp_path / "models" / "at-eps0.3-s0").mkdir(parents=True)     # no train.json: not finished
    with pytest.raises(LandscapeError, match="no finished model"):
        aggregate_legacy(tmp_path, (0.3,), write_figures=False)


# --- the committed study, re-aggregated -----------------------------------------------------------------

@pytest.fixture(scope="module")
def study_copy(tmp_path_factory) -> Path:
    """results/sat-study without its figures, re-aggregated (tables only)."""
    out = tmp_path_factory.mktemp("sat-study") / "sat-study"
    shutil.copytree(STUDY, out, ignore=shutil.ignore_patterns("*.png"))
    aggregate_legacy(out, (0.3, 0.4), write_figures=False)
    return out


@pytest.mark.parametrize("name", TABLES)
def test_the_committed_tables_are_reproduced_byte_for_byte(study_copy, name):
    assert (study_copy / name).read_bytes() == (STUDY / name).read_bytes(), \
        f"results/sat-study/{name} differs from its re-aggregation"


def test_the_committed_study_has_every_method():
    assert set(pd.read_csv(STUDY / "per_model.csv").method) == set(METHODS)


def test_draw_writes_the_figures(study_copy):
    written = draw(study_copy, (0.3, 0.4))
    assert sorted(p.name for p in written) == sorted(f"fig_{f}.png" for f in FIGURES)
    for p in written:
        assert p.read_bytes()[:4] == b"\x89PNG", p.name
    assert not list(study_copy.glob("*.tmp*"))
