import json

import pytest
import torch

from landscape.cli import eval as eval_cli
from landscape.cli import train as train_cli
from conftest import assert_one_line_error, run_cli, run_main


@pytest.mark.parametrize("args,contains", [
    (["--dataset", "imagenet-99"], "unknown dataset"),
    (["--model", "resnet-9000"], "unknown model"),
    (["--method", "madry"], "--method: 'madry' must be one of standard, at"),
    (["--eps", "1.5"], "eps"),
    (["--eps", "-0.1"], "eps"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "--download"),
    (["--epochs", "zero"], "argument --epochs: 'zero' must be an integer"),
    (["--resume", "/nonexistent/run"], "no run"),
])
def test_train_bad_input(tmp_path, capsys, args, contains):
    assert_one_line_error(run_main(train_cli.main, [*args, "--out", tmp_path, "--quiet"], capsys), contains=contains)


def test_eval_bad_input(tmp_path, capsys, trained_digits):
    ck = str(trained_digits / "best.pt")
    bad = tmp_path / "trunc.pt"
    bad.write_bytes((trained_digits / "best.pt").read_bytes()[:300])
    torch.save({"w": torch.zeros(3)}, tmp_path / "foreign.pt")
    cases = [([str(tmp_path / "missing.pt")], "not found"),
             ([str(bad)], "corrupt or truncated"),
             ([str(tmp_path / "foreign.pt")], "--arch"),
             ([str(tmp_path / "foreign.pt"), "--arch", "cnn-small", "--dataset", "digits"], "do not fit"),
             ([ck, "--eps", "2"], "eps"),
             ([ck, "--n-samples", "100000"], "samples"),
             ([ck, "--split", "dev"], "unknown split")]
    for args, contains in cases:
        assert_one_line_error(run_main(eval_cli.main, args, capsys), contains=contains)


def test_eval_json_and_foreign_checkpoint(tmp_path, capsys, trained_digits):
    out = tmp_path / "e.json"
    assert eval_cli.main([str(trained_digits / "best.pt"), "--n-samples", "128", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 128 and res["eps"] == 0.1 and res["steps"] == 20 and 0 <= res["pgd_acc"] <= res["clean_acc"]
    assert "landscape_version" in res
    # the same weights as a foreign DataParallel-style state_dict give the same numbers
    from landscape.checkpoint import load_checkpoint
    sd = load_checkpoint(trained_digits / "best.pt").model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "f.pt")
    out2 = tmp_path / "f.json"
    assert eval_cli.main([str(tmp_path / "f.pt"), "--arch", "cnn-small", "--dataset", "digits", "--eps", "0.1",
                          "--n-samples", "128", "--json", str(out2)]) == 0
    res2 = json.loads(out2.read_text())
    assert (res2["clean_acc"], res2["pgd_acc"]) == (res["clean_acc"], res["pgd_acc"])


def test_console_scripts_end_to_end(tmp_path):
    """The installed entry points, in a real process: one-line error and exit 2, and --help."""
    proc = run_cli("eval", str(tmp_path / "nothing.pt"))
    assert_one_line_error(proc, contains="not found")
    for script in ("train", "eval", "spectrum", "surface", "plot"):
        h = run_cli(script, "--help")
        assert h.returncode == 0 and "usage" in h.stdout.lower(), (script, h.stderr)


@pytest.mark.slow
def test_autoattack_runs(trained_digits, tmp_path):
    out = tmp_path / "aa.json"
    assert eval_cli.main([str(trained_digits / "best.pt"), "--n-samples", "32", "--autoattack",
                          "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["autoattack_acc"] <= res["pgd_acc"] + 1e-9


def test_training_says_what_is_starting_before_the_first_epoch(tmp_path, capsys):
    """A slow first epoch (WRN-34-10 on a CPU) printed nothing for minutes: one line on stdout says what runs,
    before any batch; --quiet keeps it quiet."""
    from conftest import run_main
    from landscape.cli.train import main
    args = ["--method", "at", "--epochs", "1", "--train-samples", "128", "--val-samples", "64", "--steps", "1",
            "--runs-dir", str(tmp_path), "--name", "x"]
    proc = run_main(main, args, capsys)
    first = proc.stdout.splitlines()[0]
    assert proc.returncode == 0 and first.startswith("landscape-train: ") and "128 training samples" in first
    assert "parameters" in first and "epochs 1-1 of 1 batches" in first
    quiet = run_main(main, [*args, "--name", "y", "--quiet"], capsys)
    assert not quiet.stdout.startswith("landscape-train:")


def test_eval_shows_pgd_progress_in_a_log(tmp_path, capsys, monkeypatch):
    """PGD over a large split ran silently (hours for WRN-34-10 on a CPU): a progress line per interval now."""
    from conftest import run_main
    from landscape import build_model, save_checkpoint
    from landscape.cli.eval import main
    from landscape.data import dataset_info
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, build_model("mlp", "digits", seed=0), {"model": "mlp", "dataset": "digits", "method": "at",
                                                               "eps": 0.1, "dataset_info": dataset_info("digits").to_dict()})
    monkeypatch.setenv("LANDSCAPE_PROGRESS_SECONDS", "0")
    proc = run_main(main, [ck, "--samples", "40", "--attack-batch-size", "16", "--steps", "2"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("PGD-2: 40/40 sample (100%)"), proc.stderr
