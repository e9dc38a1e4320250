"""benchmarks/sat_study.py (issue 14's seeded study): the plan, the cost model of the full preset, the
aggregation and verdict rule, and one end-to-end run at --scale tiny (1 seed, 2 methods, digits) with resume."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import sat_study as S  # noqa: E402

from landscape.errors import ConfigError, LandscapeError  # noqa: E402


def test_plan_covers_seeds_methods_eps_and_the_at_sweep():
    specs = S.plan(S.METHODS, S.GRID_EPS, S.SWEEP_EPS, [0, 1, 2])
    assert len(specs) == 3 * (len(S.METHODS) * 2 + 3) == 45
    assert len({s.name for s in specs}) == 45
    # AT comes first within each (seed, eps), so a path finds its start trained
    for i, s in enumerate(specs):
        if s.grid and s.label != "at":
            assert any(p.label == "at" and p.eps == s.eps and p.seed == s.seed for p in specs[:i])
    assert {s.eps for s in specs if not s.grid} == {0.05, 0.1, 0.2}
    with pytest.raises(ConfigError):
        S.plan(["at", "sat"], [0.3], [], [0])
    with pytest.raises(ConfigError):
        S.plan(["sat-eps"], [0.3], [], [0])


def test_full_preset_is_estimated_at_about_two_hours():
    """The cost model (unit costs from results/sat) puts the full study, 45 models, at about 2 hours."""
    specs = S.plan(S.METHODS, S.GRID_EPS, S.SWEEP_EPS, [0, 1, 2])
    total = sum(S.estimate_seconds(S.SCALES["full"], s)["total_s"] for s in specs)
    assert 1.6 * 3600 < total < 2.3 * 3600
    full = S.SCALES["full"]
    assert full.train_samples * full.epochs > 6000 * 8  # better converged than the single-seed run


def test_verdict_rule():
    v = S.verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert v["exceeds_spread"] is True and v["diff"] == pytest.approx(-1.0)
    assert v["pooled_sd"] == pytest.approx(0.1) and "below" in v["verdict"]
    assert v["welch_t"] == pytest.approx(-1.0 / np.sqrt(2 * 0.01 / 3))
    v = S.verdict([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])  # diff 0.5, pooled s.d. 1: within
    assert v["exceeds_spread"] is False and v["verdict"] == "within the seed spread"
    v = S.verdict([1.0], [2.0, 2.1])
    assert v["exceeds_spread"] is None and np.isnan(v["pooled_sd"])


def test_verdict_against_zero_for_a_path_barrier():
    v = S.verdict_vs_zero([0.5, 0.6, 0.55])           # mean 0.55, s.d. 0.05: far from 0
    assert v["exceeds_spread"] is True and v["verdict"] == "above 0 beyond the seed spread"
    assert v["welch_t"] == pytest.approx(0.55 / (0.05 / np.sqrt(3)))
    v = S.verdict_vs_zero([0.0, 0.4, 0.2])            # mean 0.2, s.d. 0.2: 2 s.d. = 0.4 > 0.2
    assert v["exceeds_spread"] is False and "within" in v["verdict"]
    assert S.verdict_vs_zero([0.3])["exceeds_spread"] is None


def test_summary_has_mean_and_sd_over_seeds_and_markdown_shows_them():
    df = pd.DataFrame({"method": ["at", "at", "sat-eps", "sat-eps"], "eps": [0.3] * 4, "seed": [0, 1, 0, 1],
                       "test_pgd20": [0.2, 0.4, 0.5, 0.5], "eig1": [10.0, 12.0, 8.0, 9.0]})
    summ = S.summarize(df, ["eps", "method"])
    at = summ[summ.method == "at"].iloc[0]
    assert at["test_pgd20_mean"] == pytest.approx(0.3) and at["test_pgd20_sd"] == pytest.approx(np.sqrt(0.02))
    assert at["n"] == 2 and "seed_mean" not in summ.columns
    md = S.grouped_markdown(summ, ["eps", "method"])
    assert "0.300 ± 0.141" in md and "11.00 ± 1.41" in md and "### accuracy" in md
    v = S.verdicts(df, [0.3])
    row = v[(v.metric == "eig1")].iloc[0]
    assert row.comparison == "sat-eps vs at" and row.mean_a == pytest.approx(8.5)
    df["path_barrier_adversarial"] = [np.nan, np.nan, 0.5, 0.7]   # AT's own path has no barrier
    row = S.verdicts(df, [0.3]).set_index("metric").loc["path_barrier_adversarial"]
    assert row.comparison == "sat-eps vs 0" and row.mean_a == pytest.approx(0.6) and row.exceeds_spread


def test_barrier_of_a_path():
    a = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    loss = np.array([9.0, 1.0, 3.0, 2.0, 9.0])  # outside [0, 1] does not count
    assert S._barrier(a, loss) == pytest.approx(3.0 - 1.5)


ARGS = ["--scale", "tiny", "--seeds", "1", "--methods", "at", "sat-eps", "--eps", "0.3", "--sweep-eps",
        "--dataset", "digits"]
STEP_FILES = ("train.json", "accuracy.json", "spectrum.json", "surface_random.json", "flatness.json", "layers.json")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    out, runs = base / "out", base / "runs"
    assert S.main([*ARGS, "--out", str(out), "--runs", str(runs)]) == 0
    return out, runs


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tiny_study_end_to_end(tiny_study):
    out, runs = tiny_study
    for name in ("at-eps0.3-s0", "sat-eps-eps0.3-s0"):
        for f in STEP_FILES:
            d = json.loads((out / "models" / name / f).read_text())
            assert d["settings"]["model"] == name and d["settings"]["train"]["dataset"] == "digits"
    assert (out / "models" / "sat-eps-eps0.3-s0" / "path.json").exists()
    assert not (out / "models" / "at-eps0.3-s0" / "path.json").exists()
    path = json.loads((out / "models" / "sat-eps-eps0.3-s0" / "path.json").read_text())
    assert path["start"] == "at-eps0.3-s0" and path["adversarial"]["settings"]["attack"]["mode"] == "reattack"
    train = json.loads((out / "models" / "at-eps0.3-s0" / "train.json").read_text())
    assert 0 <= train["train_clean_acc"] <= 1 and train["seconds"] > 0 and train["best_epoch"] == 1
    fl = json.loads((out / "models" / "at-eps0.3-s0" / "flatness.json").read_text())
    assert fl["adversarial"]["worst"]["kind"] == "flatness"
    assert fl["adversarial"]["worst"]["settings"]["attack"]["eps"] == 0.3
    layers = json.loads((out / "models" / "at-eps0.3-s0" / "layers.json").read_text())["layers"]
    assert {r["loss"] for r in layers} == {"clean", "adversarial"} and len(layers) == 2 * 4  # 4 weight layers
    summ = pd.read_csv(out / "summary_methods.csv")
    assert {"test_pgd20_mean", "test_pgd20_sd", "eig1_mean", "eig1_sd", "n"} <= set(summ.columns)
    assert any(c.startswith("flat_worst_adversarial") and c.endswith("_sd") for c in summ.columns)
    assert "path_barrier_adversarial_mean" in summ.columns and list(summ.n) == [1, 1]
    assert (out / "summary_methods.md").read_text().count("| 0.3 |") >= 2
    assert (out / "summary_layers.csv").exists() and (out / "verdicts.md").exists()
    v = pd.read_csv(out / "verdicts.csv")
    assert v.metric.str.startswith("layer ").sum() == 8 and (v.verdict == "no spread (fewer than 2 seeds)").all()
    per_model = pd.read_csv(out / "per_model.csv")
    assert (per_model.analysis_seconds > 0).all() and set(per_model.method) == {"at", "sat-eps"}
    spec = json.loads((out / "models" / "at-eps0.3-s0" / "spectrum.json").read_text())
    assert spec["surface_eigen"]["surface"]["settings"]["directions"]["kind"] == "eigen"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["scale_name"] == "tiny" and len(settings["invocations"]) == 1 and settings["seconds"] > 0
    assert settings["invocations"][0]["finished"] is True
    for fig in ("eps_sweep", "methods", "flatness", "paths", "layers", "surfaces_eigen", "surfaces_random"):
        assert (out / f"fig_{fig}.png").read_bytes()[:4] == b"\x89PNG", fig


def test_tiny_study_resume_skips_finished_work(tiny_study):
    out, runs = tiny_study
    before_runs = _mtimes(runs)
    models = out / "models"
    before = _mtimes(models)
    # one file made with other settings, one missing: only those two are made again
    fl = models / "at-eps0.3-s0" / "flatness.json"
    d = json.loads(fl.read_text())
    d["settings"]["radii"] = [0.5]
    fl.write_text(json.dumps(d))
    (models / "sat-eps-eps0.3-s0" / "accuracy.json").unlink()
    before[fl] = fl.stat().st_mtime_ns
    assert S.main([*ARGS, "--out", str(out), "--runs", str(runs)]) == 0
    after = _mtimes(models)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {fl, models / "sat-eps-eps0.3-s0" / "accuracy.json"}
    assert json.loads(fl.read_text())["settings"]["radii"] == [0.05]
    # no training and no surface was redone
    assert {p for p, t in _mtimes(runs).items() if before_runs.get(p) != t} == set()
    settings = json.loads((out / "settings.json").read_text())
    assert len(settings["invocations"]) == 2
    assert settings["invocations"][-1]["methods"] == ["at", "sat-eps"] and settings["seeds"] == [0]


def test_settings_record_the_union_of_invocations(tmp_path):
    """sat_study.sh runs one invocation per seed and eps group: settings.json names the whole scope."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"seeds": [0], "methods": ["at", "trades"], "grid_eps": [0.3],
                                                   "sweep_eps": [], "invocations": [{"seconds": 1.0}]}))
    args = ["--scale", "tiny", "--seeds", "1", "--first-seed", "1", "--methods", "at", "--eps", "0.4",
            "--sweep-eps", "--dataset", "digits", "--out", str(out), "--runs", str(tmp_path / "runs")]
    assert S.main(args) == 0
    st = json.loads((out / "settings.json").read_text())
    assert st["seeds"] == [0, 1] and st["methods"] == ["at", "trades"] and st["grid_eps"] == [0.3, 0.4]
    assert st["invocations"][-1]["seeds"] == [1] and st["invocations"][-1]["grid_eps"] == [0.4]


def test_an_interrupted_invocation_stays_in_the_record(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise LandscapeError("interrupted")
    monkeypatch.setattr(S, "study_model", interrupted)
    out = tmp_path / "out"
    assert S.main([*ARGS, "--out", str(out), "--runs", str(tmp_path / "runs")]) == 2
    inv = json.loads((out / "settings.json").read_text())["invocations"]
    assert len(inv) == 1 and inv[0]["finished"] is False and inv[0]["seconds"] is None


def test_bad_input_is_one_line(tmp_path, capsys):
    assert S.main(["--scale", "tiny", "--methods", "sat-eps", "--out", str(tmp_path / "o"),
                   "--runs", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "include 'at'" in err[0]


def test_resume_from_results_alone(tiny_study, tmp_path):
    """On a machine without runs/ (a fresh checkout of committed results), finished models are skipped whole;
    a missing path file retrains its AT start (seeded: the same model) and gives the same path."""
    import shutil
    out = tmp_path / "out"
    shutil.copytree(tiny_study[0], out)
    runs = tmp_path / "no-runs"
    models = out / "models"
    path = models / "sat-eps-eps0.3-s0" / "path.json"
    old = json.loads(path.read_text())
    before = _mtimes(models)
    assert S.main([*ARGS, "--out", str(out), "--runs", str(runs)]) == 0
    assert _mtimes(models) == before and not runs.exists()  # all finished: nothing trained or recomputed
    path.unlink()
    before = _mtimes(models)
    assert S.main([*ARGS, "--out", str(out), "--runs", str(runs)]) == 0
    after = _mtimes(models)
    assert {p for p in after if before.get(p) != after[p]} == {path}
    new = json.loads(path.read_text())
    for loss in ("clean", "adversarial"):
        np.testing.assert_allclose(new[loss]["loss"], old[loss]["loss"], rtol=1e-5)
    # AT (the path's start) and sat-eps (whose path was missing) were trained again; nothing else
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["at-eps0.3-s0", "sat-eps-eps0.3-s0"]


def test_a_run_stopped_before_its_first_checkpoint_is_trained_from_the_start(tiny_study, tmp_path):
    """A study killed during a model's first epoch leaves config.json and no last.pt: the next invocation
    trains that model from the start (it refused the folder before), and gets the same weights."""
    import shutil
    import torch
    runs = tmp_path / "runs"
    src = tiny_study[1] / "at-eps0.3-s0"
    (runs / src.name).mkdir(parents=True)
    shutil.copy(src / "config.json", runs / src.name / "config.json")
    s = S.SCALES["tiny"]
    run = S.train_run("at", 0.3, s, runs, 0, track=True, name=src.name, dataset="digits",
                      track_every=s.track_every, hsat_probe=s.hsat_probe, hsat_iters=s.hsat_iters,
                      hsat_bisect=s.hsat_bisect)
    new = torch.load(run / "last.pt", weights_only=True)["model_state"]
    old = torch.load(src / "last.pt", weights_only=True)["model_state"]
    assert all(torch.equal(new[k], old[k]) for k in old)


def _fake_audit(suspect: bool, autoattack: float) -> dict:
    """An audit.json as sat_study_audit.py writes it, with one check whose stored evidence decides the verdict
    (re-judged by the tables: 30 of 40 is a black-box break rate far above the threshold, 0 of 40 none)."""
    check = {"name": "black_box", "passed": not suspect, "evidence": {"count": 30 if suspect else 0, "of": 40,
                                                                      "summary": ""}, "advice": ""}
    return {"n": 100, "seconds": 10.0, "audit": {"verdict": "suspect" if suspect else "ok", "checks": [check]},
            "accuracies": {"clean": 0.9, "pgd": 0.5, "autoattack": autoattack, "worst_case": autoattack,
                           "autoattack_after": {"fab-t": autoattack + 0.1, "square": autoattack}},
            "retrained": {"identical": not suspect, "largest_difference": 0.01 if suspect else 0.0},
            "cost": {"audit_seconds_without_autoattack": 2.0, "parts": {"autoattack": {"seconds": 8.0}}}}


def test_models_the_audit_flags_are_marked_in_tables_and_figures(tiny_study, tmp_path):
    """Issue 23: with audit.json beside a model, per_model.csv gets AutoAttack and the verdict (re-judged from
    the evidence), every summary table a 'k of m' flagged column, every verdict row the flags of each side;
    sat_study_audit's tables count the same; the figures draw."""
    import shutil
    import sat_study_audit as A
    out = tmp_path / "out"
    shutil.copytree(tiny_study[0], out)
    for name, bad, aa in (("at-eps0.3-s0", False, 0.3), ("sat-eps-eps0.3-s0", True, 0.1)):
        (out / "models" / name / "audit.json").write_text(json.dumps(_fake_audit(bad, aa)))
    S.aggregate(out, [0.3])
    per_model = pd.read_csv(out / "per_model.csv").set_index("method")
    assert per_model.loc["sat-eps", "audit_suspect"] == 1 and per_model.loc["at", "audit_suspect"] == 0
    assert per_model.loc["sat-eps", "audit_flags"] == "black_box" and per_model.loc["at", "test_autoattack"] == 0.3
    md = (out / "summary_methods.md").read_text()
    assert "audit: flagged" in md and "| 1 of 1 |" in md and "| 0 of 1 |" in md
    assert "| 1 of 1 |" in (out / "summary_layers.md").read_text()
    v = pd.read_csv(out / "verdicts.csv")
    assert set(v[v.comparison == "sat-eps vs at"].audit_flagged_a) == {"1 of 1"}
    assert set(v[v.comparison == "sat-eps vs at"].audit_flagged_b) == {"0 of 1"}
    A.aggregate(out)
    audit_csv = pd.read_csv(out / "audit.csv").set_index("model")
    assert audit_csv.loc["sat-eps-eps0.3-s0", "verdict"] == "suspect" and audit_csv.loc["at-eps0.3-s0", "flagged"] != "black_box"
    assert "1 (black_box)" in (out / "summary_autoattack.md").read_text()
    assert "1 of 1" in (out / "verdicts_autoattack.md").read_text()
    for fig in ("eps_sweep", "methods", "flatness", "paths", "layers", "surfaces_eigen"):
        assert (out / f"fig_{fig}.png").read_bytes()[:4] == b"\x89PNG", fig
