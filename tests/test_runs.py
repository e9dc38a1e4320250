"""landscape.runs: the run folder and its readers (``read_runs``, ``run_config``, ``best_epoch``, ``epochs``,
``sharpness_column``), on one tiny real run trained once for the module, and the run names they read back."""
import json
import shutil

import pandas as pd
import pytest

from landscape.checkpoint import read_checkpoint
from landscape.errors import LandscapeError
from landscape.io import write_json
from landscape.names import (METHOD_NAMES, RUN_FILES, SELECT_RULES, is_run_folder, method_of_run, pretty_method,
                             run_files, run_name, selection_score)
from landscape.results import describe, result_kind
from landscape.runs import (COLUMN_NAMES, best_epoch, epochs, read_runs, run_config, sharpness_column)
from landscape.training import TrainConfig, train

EPOCHS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A standard run with a validation attack (eps 0.1): 3 epochs of 64 digits, epoch_002.pt kept."""
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(method="standard", eps=0.1, epochs=EPOCHS, train_samples=64, val_samples=32, batch_size=32,
                      val_steps=2, save_every=2)
    return train(cfg, out=out)


def test_the_run_folder_holds_the_trainers_files(run):
    folder = run.run_dir
    assert folder.name == run_name("standard", "digits", 0.1, 0) == "standard-digits-eps0.1-s0"
    assert is_run_folder(folder)
    names = [p.name for p in run_files(folder)]
    assert names == ["best.pt", "config.json", "epoch_002.pt", "last.pt", "metrics.csv"]   # no hsat.json
    assert set(names) - {"epoch_002.pt"} <= set(RUN_FILES)
    (folder.parent / "not-a-run").mkdir(exist_ok=True)
    assert not is_run_folder(folder.parent / "not-a-run") and run_files(folder.parent / "absent") == []


def test_run_config_is_the_config_json(run):
    cfg = run_config(run.run_dir)
    assert cfg == json.loads((run.run_dir / "config.json").read_text())
    assert cfg["method"] == "standard" and cfg["dataset"] == "digits" and cfg["eps"] == 0.1
    assert cfg["train"]["epochs"] == EPOCHS and cfg["train"]["train_samples"] == 64


def test_run_config_prefers_a_summary_and_skips_what_does_not_read(run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(run.run_dir, folder, ignore=shutil.ignore_patterns("*.pt", ".landscape.lock"))
    (folder / "summary.json").write_text("{broken")
    assert run_config(folder)["method"] == "standard"                 # the summary does not read: config.json
    write_json(folder / "training.json", {"kind": "training", "select": "pgd"})
    assert run_config(folder) == {"kind": "training", "select": "pgd"}
    write_json(folder / "summary.json", {"run": "named"})
    assert run_config(folder) == {"run": "named"}
    assert run_config(tmp_path / "absent") == {}


def test_read_runs_of_the_folder_and_its_metrics(run):
    [(df, meta)] = read_runs(run.run_dir)
    assert meta["run"] == run.run_dir.name and meta["method"] == "standard"
    assert len(df) == EPOCHS and list(epochs(df)) == [1, 2, 3]
    for col in set(COLUMN_NAMES) - {"sharpness"}:                       # every column the house names
        assert col in df.columns, col
    for row, hist in zip(df.to_dict("records"), run.history):
        assert row["val_clean"] == pytest.approx(hist["val_clean"], rel=1e-5)
        assert row["val_pgd"] == pytest.approx(hist["val_pgd"], rel=1e-5)
        assert row["train_loss"] == pytest.approx(hist["train_loss"], rel=1e-5)
    [(df2, meta2)] = read_runs(run.run_dir / "metrics.csv")
    pd.testing.assert_frame_equal(df, df2)
    assert meta2 == meta
    assert result_kind(run.run_dir) == result_kind(run.run_dir / "metrics.csv") == "training"


def test_read_runs_of_the_training_result(run, tmp_path):
    d = run.to_dict()
    [(df, meta)] = read_runs(d)
    assert len(df) == EPOCHS and meta["best_epoch"] == run.best_epoch
    assert list(df["val_clean"]) == [h["val_clean"] for h in run.history]
    write_json(tmp_path / "training.json", d)
    [(df2, meta2)] = read_runs(tmp_path / "training.json")
    assert list(df2["epoch"]) == [1, 2, 3] and meta2["select"] == "clean+pgd"
    [(df3, _)] = read_runs(run.to_frame())
    assert list(df3["epoch"]) == [1, 2, 3]


def test_the_best_epoch_is_the_selection_rules_first_best(run):
    [(df, meta)] = read_runs(run.run_dir)
    keys = [selection_score("clean+pgd", h)[1] for h in run.history]
    first_best = keys.index(max(keys)) + 1                 # the first epoch of the highest clean + PGD
    assert run.best_epoch == first_best
    assert best_epoch(df, meta) == first_best              # the recorded select_score
    assert best_epoch(df.drop(columns=["select_score"]), {}) == first_best    # recomputed from the columns
    assert read_checkpoint(run.run_dir / "best.pt")["epoch"] == first_best
    assert read_checkpoint(run.run_dir / "last.pt")["epoch"] == EPOCHS
    assert read_checkpoint(run.run_dir / "epoch_002.pt")["epoch"] == 2
    assert best_epoch(df, {"best_epoch": 1}) == 1          # the run's own record wins


def _table(**cols):
    return pd.DataFrame({"epoch": [1, 2, 3, 4], **cols})


@pytest.mark.parametrize("rule,expected", [("clean+pgd", 2), ("clean", 3), ("pgd", 1), ("loss", 4)])
def test_best_epoch_under_each_select_rule(rule, expected):
    assert set(SELECT_RULES) == {"clean+pgd", "clean", "pgd", "loss"}
    df = _table(val_clean=[0.50, 0.70, 0.80, 0.60], val_pgd=[0.45, 0.35, 0.10, 0.20],
                val_loss=[1.5, 1.2, 1.1, 0.9])
    # clean+pgd: 0.95, 1.05, 0.90, 0.80 -> 2; clean -> 3; pgd -> 1; loss (lowest) -> 4
    assert best_epoch(df, {"select": rule}) == expected
    assert best_epoch(df.assign(select=rule)) == expected          # the rule recorded per row wins over meta
    assert best_epoch(df.assign(select=rule), {"select": "clean"}) == expected


def test_best_epoch_ties_missing_values_and_no_validation():
    assert best_epoch(_table(val_clean=[0.5, 0.7, 0.7, 0.1])) == 2         # a tie: the first
    assert best_epoch(_table(val_clean=[0.5, None, 0.6, 0.1], val_pgd=[None, 0.9, 0.0, 0.0])) == 2
    # a recorded select_score; "loss" ranks it lowest-first, a missing one never wins
    scores = _table(select=["loss"] * 4, select_score=[1.0, 0.5, None, 0.7])
    assert best_epoch(scores) == 2
    assert best_epoch(_table(select_score=[1.0, 0.5, None, 0.7])) == 1     # clean+pgd: the highest
    assert best_epoch(_table(train_loss=[1.0, 0.9, 0.8, 0.7])) is None     # no validation columns
    assert best_epoch(_table(val_clean=[0.1, 0.2, 0.3, 0.4]), {"select": "loss"}) is None   # loss without val_loss
    assert best_epoch(_table(val_clean=[0.1, 0.9, 0.3, 0.4]), {"select": "bogus"}) == 2     # unknown: clean+pgd


def test_epochs_without_an_epoch_column():
    assert list(epochs(pd.DataFrame({"val_clean": [0.1, 0.2, 0.3]}))) == [1, 2, 3]
    assert list(epochs(pd.DataFrame({"epoch": [5, 6]}))) == [5, 6]


def test_sharpness_column():
    assert sharpness_column(pd.DataFrame(columns=["epoch", "Sharpness", "top_eig"])) == "Sharpness"
    assert sharpness_column(pd.DataFrame({"epoch": [1], "top_eig_hvps": [10], "lambda_max": [3.0]})) == "lambda_max"
    assert sharpness_column(pd.DataFrame({"top_eigenvalue": ["big"]})) is None        # not numbers
    assert sharpness_column(pd.DataFrame({"epoch": [1], "val_clean": [0.5]})) is None


def test_a_csv_of_several_runs_is_one_entry_per_run(tmp_path):
    p = tmp_path / "all.csv"
    p.write_text("method,epoch,val_clean\nat,1,0.5\nat,2,0.6\np-sat,1,0.4\np-sat,2,0.7\np-sat,3,0.65\n")
    runs = read_runs(p)
    assert [m["method"] for _, m in runs] == ["at", "p-sat"]
    assert [m["run"] for _, m in runs] == ["at", "p-sat"]
    assert [len(df) for df, _ in runs] == [2, 3]
    assert "method" not in runs[0][0].columns
    assert [best_epoch(df, m) for df, m in runs] == [2, 2]


def test_unreadable_metrics_are_one_line_errors(tmp_path):
    def refused(obj, *words):
        with pytest.raises(LandscapeError) as e:
            read_runs(obj)
        assert "\n" not in str(e.value)
        for w in words:
            assert w in str(e.value), str(e.value)

    folder = tmp_path / "run"
    folder.mkdir()
    refused(folder, "metrics file not found")
    (folder / "metrics.csv").write_text("epoch,val_clean\n")
    refused(folder, "no epoch has finished yet")
    (folder / "metrics.csv").write_text("epoch,val_clean\n1,0.5\n2,oops\n")
    refused(folder / "metrics.csv", "column 'val_clean' holds 'oops', not a number")
    refused({"kind": "training"}, "needs a 'history'")
    (folder / "metrics.csv").write_text("epoch,val_clean\n1,0.5\n2,\n")     # a missing value is allowed
    [(df, meta)] = read_runs(folder)
    assert len(df) == 2 and meta == {"run": "run"}


@pytest.mark.parametrize("method", sorted(METHOD_NAMES))
@pytest.mark.parametrize("dataset,eps", [("digits", 0.1), ("fashion-mnist", 8 / 255), ("mnist", None),
                                         ("folder:/data/pets", 0.03)])
def test_method_of_run_reads_back_run_name(method, dataset, eps):
    name = run_name(method, dataset, eps, seed=3)
    assert "/" not in name and ":" not in name
    assert method_of_run(name, dataset) == method
    if not dataset.startswith("folder:"):          # a known dataset is found without being named
        assert method_of_run(name) == method
    assert pretty_method(method_of_run(name, dataset)) == METHOD_NAMES[method]
    info = describe({"run": name, "dataset": dataset})
    assert info["name"] == METHOD_NAMES[method] and info["method"] == method


def test_pretty_method_keeps_what_follows_the_method():
    assert pretty_method("h-sat-affine") == "H-SAT-affine"
    assert pretty_method("at") == "AT"
    assert pretty_method("sat-eps") == "SAT-ε"
    assert pretty_method("mine") == "mine" and pretty_method("") == "" and pretty_method(None) == ""
    assert method_of_run("at-eps0.3") == "at" and method_of_run("p-sat-digits-eps0.1-s0") == "p-sat"
