"""Mistakes a new user makes (issue 22), each named in one line before any work, and none losing data:
outputs that would replace an input or a run's files, things that are not checkpoints, a --resume of a
folder that does not exist, negative sizes, checkpoints of different models, and the Python API's arguments
checked at the entrance."""
import hashlib
import json
import os
import shutil

import pytest
import torch
from torch import nn

import landscape as ls
from landscape import AttackSpec
from conftest import assert_one_line_error, run_main
from landscape.analysis import HessianOperator, top_eigenvalues
from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.cli.eval import main as eval_main
from landscape.cli.plot import main as plot_main
from landscape.cli.spectrum import main as spectrum_main
from landscape.cli.surface import main as surface_main
from landscape.data import dataset_info
from landscape.errors import CheckpointError, ConfigError, DataError


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder (config.json, last.pt, best.pt, metrics.csv) of an untrained cnn-small on digits, copied
    from nothing but save_checkpoint: cheap, and every file a real run has that the tests aim at."""
    folder = tmp_path_factory.mktemp("runs") / "at-digits"
    folder.mkdir()
    cfg = {"model": "cnn-small", "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(),
           "method": "at", "eps": 0.1}
    model = ls.build_model("cnn-small", "digits", seed=0)
    for name in ("last.pt", "best.pt"):
        save_checkpoint(folder / name, model, cfg, {}, 1)
    save_checkpoint(folder / "epoch_001.pt", model, cfg, {}, 1)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "metrics.csv").write_text("epoch,val_clean\n1,0.5\n")
    (folder / "hsat.json").write_text("{}")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    surf = folder.parent / "surf"   # a surface folder's state files
    surf.mkdir()
    (surf / "surface.json").write_text(json.dumps({"kind": "surface", "x": [0.0], "loss": [1.0]}))
    for name in ("surface.npz", "directions.pt"):
        (surf / name).write_bytes(b"state")
    return folder


@pytest.mark.parametrize("main,args,target", [
    (eval_main, ["{ck}", "--samples", "4", "--json", "{ck}"], "best.pt"),
    (eval_main, ["{ck}", "--samples", "4", "--json", "{run}/last.pt"], "last.pt"),
    (spectrum_main, ["{ck}", "--samples", "4", "--top-k", "1", "--json", "{run}/config.json"], "config.json"),
    (surface_main, ["{ck}", "--samples", "4", "--dim", "1", "--x=-1:1:3", "--out", "{tmp}/s", "--json",
                    "{run}/last.pt"], "last.pt"),
    (eval_main, ["{ck}", "--samples", "4", "--json", "{run}/metrics.csv"], "metrics.csv"),
    (eval_main, ["{ck}", "--samples", "4", "--json", "{run}/epoch_001.pt"], "epoch_001.pt"),
    (spectrum_main, ["{ck}", "--samples", "4", "--top-k", "1", "--json", "{run}/last.pt"], "last.pt"),
    (spectrum_main, ["{ck}", "--samples", "4", "--top-k", "1", "--json", "{run}/hsat.json"], "hsat.json"),
    (eval_main, ["{ck}", "--samples", "4", "--json", "{surf}/surface.json"], "surface.json"),
    (spectrum_main, ["{ck}", "--samples", "4", "--top-k", "1", "--json", "{surf}/directions.pt"], "directions.pt"),
    (eval_main, ["{ck}", "--samples", "4", "--json", "{run}/weights.safetensors"], "weights.safetensors"),
    (plot_main, ["{surf}", "--out", "{surf}/surface.npz"], "surface.npz"),
], ids=["eval-json-onto-its-checkpoint", "eval-json-onto-last.pt", "spectrum-json-onto-config.json",
        "surface-json-onto-last.pt", "eval-json-onto-metrics.csv", "eval-json-onto-epoch-file",
        "spectrum-json-onto-last.pt", "spectrum-json-onto-hsat.json", "eval-json-onto-a-surface-state",
        "spectrum-json-onto-directions.pt", "eval-json-onto-a-safetensors-file", "plot-out-onto-surface.npz"])
def test_an_output_never_replaces_an_input_or_a_run_file(run, tmp_path, capsys, main, args, target):
    folder = run.parent / "surf" if target in ("surface.json", "directions.pt", "surface.npz") else run
    before = digest(folder / target)
    argv = [a.format(ck=run / "best.pt", run=run, tmp=tmp_path, surf=run.parent / "surf") for a in args]
    proc = run_main(main, argv, capsys)
    assert_one_line_error(proc, contains="write the output elsewhere")
    assert digest(folder / target) == before
    assert proc.stdout == ""   # refused before any work


def test_plot_json_onto_the_result_it_reads(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "eigenvalues", "values": [3.0, 2.0], "converged": [True, True]}))
    before = digest(spec)
    proc = run_main(plot_main, [spec, "--json", spec], capsys)
    assert_one_line_error(proc, contains="also an input")
    assert digest(spec) == before


@pytest.mark.parametrize("make,says", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: os.mkfifo(p), "is a FIFO"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32), "PNG image"),
    (lambda p: p.write_text('{"kind": "spectrum"}'), "JSON file"),
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(b"%PDF-1.7\n" + b"0" * 32), "PDF document"),
    (lambda p: p.write_text("<!DOCTYPE html><html></html>"), "HTML page"),
    (lambda p: p.write_text('[{"epoch": 1}]'), "JSON file"),
], ids=["folder", "fifo", "png", "json-result", "empty", "pdf", "html", "json-list"])
def test_what_is_not_a_checkpoint_is_named(tmp_path, make, says):
    p = tmp_path / "thing.pt"
    make(p)
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(p)


def test_dev_null_is_a_device_not_a_missing_checkpoint():
    with pytest.raises(CheckpointError, match="a device"):
        load_checkpoint("/dev/null")


@pytest.mark.parametrize("arch", ["nope", "mlp", "preact-resnet18"])
def test_arch_that_contradicts_our_own_checkpoint_is_refused(run, arch):
    with pytest.raises(CheckpointError, match="drop --arch"):
        load_checkpoint(run / "best.pt", arch=arch)
    assert load_checkpoint(run / "best.pt", arch="cnn-small").arch == "cnn-small"


def test_surface_resume_of_a_missing_folder_says_so(run, tmp_path, capsys):
    proc = run_main(surface_main, [run / "best.pt", "--resume", tmp_path / "nowhere"], capsys)
    assert_one_line_error(proc, contains="no surface to resume")


def test_negative_memory_is_refused_for_what_it_is(run, capsys):
    proc = run_main(spectrum_main, [run / "best.pt", "--max-memory", "-5GB"], capsys)
    assert_one_line_error(proc, contains="must be positive")


def test_interpolation_between_different_models_is_named(run, tmp_path, capsys):
    other = tmp_path / "mlp.pt"
    cfg = {"model": "mlp", "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(), "method": "at"}
    save_checkpoint(other, ls.build_model("mlp", "digits", seed=0), cfg, {}, 1)
    proc = run_main(surface_main, [run / "best.pt", "--directions", "interpolate", "--to", other, "--dim", "1",
                                   "--samples", "4", "--out", tmp_path / "s"], capsys)
    assert_one_line_error(proc, contains="one model on one dataset")


# --- the Python API checks its arguments at the entrance --------------------------------------------------

@pytest.fixture(scope="module")
def model_xy():
    model = ls.build_model("cnn-small", "digits", seed=0).eval()
    x, y = ls.load_dataset("digits", "test").tensors(32)
    return model, x, y


@pytest.mark.parametrize("change,says", [
    (lambda x, y: (x.double(), y), "float64 but the model's weights are torch.float32"),
    (lambda x, y: (x, y.float()), "integer class indices"),
    (lambda x, y: (x, y + 10), "labels lie in"),
    (lambda x, y: (x.flatten(1), y), "cannot take inputs of shape"),
    (lambda x, y: (x, y[:5]), "32 inputs but"),
    (lambda x, y: (x * 255, y), "not [0, 1]"),
    (lambda x, y: (torch.where(x > 0.5, float("nan"), x), y), "NaN"),
    (lambda x, y: (x, y - 1), "labels lie in [-1"),
    (lambda x, y: (x, y.view(-1, 1)), "one class index per input"),
    (lambda x, y: ((x * 255).to(torch.uint8), y), "floating point"),
    (lambda x, y: (x, y.bool()), "integer class indices"),
    (lambda x, y: (x[0], y[:1]), "cannot take inputs of shape"),
], ids=["float64-inputs", "float-labels", "labels-out-of-range", "flattened-images", "5-labels",
        "0-255-inputs", "nan-inputs", "negative-labels", "labels-as-a-column", "uint8-images", "bool-labels",
        "one-image-without-batch"])
def test_evaluate_and_the_operator_name_bad_data_before_any_work(model_xy, change, says):
    model, x, y = model_xy
    bx, by = change(x, y)
    with pytest.raises(DataError, match=says.replace("[", r"\[").replace("]", r"\]")):
        ls.evaluate(model, bx, by, AttackSpec(eps=0.1, steps=2))
    with pytest.raises(DataError, match=says.replace("[", r"\[").replace("]", r"\]")):
        HessianOperator(model, (bx, by), loss="adversarial", attack=AttackSpec(eps=0.1, steps=2))


def test_clean_evaluation_allows_other_scales_and_the_operator_its_clean_loss(model_xy):
    """The [0, 1] rule is the attacks' box: clean accuracy and the clean-loss Hessian take any scale."""
    model, x, y = model_xy
    assert ls.evaluate(model, x * 2, y).pgd_acc is None
    assert HessianOperator(model, (x * 2, y)).num_samples == 32


def test_a_model_of_another_dtype_is_named(model_xy):
    model, x, y = model_xy
    with pytest.raises(DataError, match="float64"):
        HessianOperator(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double(), (x, y))


def test_top_eigenvalues_wants_a_whole_k_before_the_work(model_xy):
    model, x, y = model_xy
    op = HessianOperator(model, (x[:8], y[:8]))
    with pytest.raises(ConfigError, match="^--top-k: 2.5 must be an integer$"):
        top_eigenvalues(op, k=2.5)
    assert op.hvp_count == 0


def test_two_trainers_of_one_name_cannot_both_hold_the_folder(tmp_path):
    """The folder is locked before it is examined: a second run of the same name, started while the first is
    being set up, is refused at once (it used to find the folder empty too, and replace the first)."""
    from landscape.errors import BusyError
    from landscape.training import TrainConfig
    from landscape.training.trainer import Trainer
    cfg = TrainConfig(method="standard", epochs=1, train_samples=64, batch_size=32, val_samples=16, name="same")
    first = Trainer(cfg, tmp_path)
    with pytest.raises(BusyError, match="in use"):
        Trainer(cfg, tmp_path)
    first.fit()
    assert (tmp_path / "same" / "best.pt").exists()
    with pytest.raises(ConfigError, match="already holds a run"):   # and after it, the run is there to see
        Trainer(cfg, tmp_path)


def test_a_trainer_that_fails_in_setup_leaves_no_folder(tmp_path):
    from landscape.training import TrainConfig
    from landscape.training.trainer import Trainer
    cfg = TrainConfig(method="standard", epochs=1, dataset="cifar10", data_dir=str(tmp_path / "none"), name="gone")
    with pytest.raises(ls.errors.LandscapeError):   # CIFAR-10 is not there (and tests never download)
        Trainer(cfg, tmp_path / "runs")
    assert not (tmp_path / "runs" / "gone").exists()
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


# --- pictures that are honest, options never silently clipped ------------------------------------------------

def test_nan_eigenvalues_are_not_drawn_as_a_converged_empty_panel(tmp_path):
    from landscape import plots
    from landscape.results import spectrum_parts
    nan = {"kind": "eigenvalues", "values": [float("nan"), float("nan")], "converged": [True, True]}
    assert spectrum_parts(nan)[0]["converged"] == [False, False]
    with pytest.raises(ls.errors.LandscapeError, match="finite eigenvalues"):
        plots.plot_eigenvalues(nan)
    with pytest.raises(ls.errors.LandscapeError, match="finite eigenvalues"):
        plots.plot_spectrum(nan)
    some = {"kind": "eigenvalues", "values": [3.0, float("nan")], "converged": [True, True]}
    fig = plots.plot_eigenvalues(some)
    assert "1 not finite" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


@pytest.mark.parametrize("csv,says", [("epoch,train_loss,val_clean\n", "only a header"),
                                      ("epoch,train_loss,val_clean\n1,abc,0.5\n", "'abc', not a number")],
                         ids=["header-only", "non-number"])
def test_plot_and_report_refuse_the_same_bad_metrics(tmp_path, capsys, csv, says):
    from landscape.cli.report import main as report_main
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.csv").write_text(csv)
    assert_one_line_error(run_main(plot_main, [run / "metrics.csv", "--out", tmp_path / "p.png"], capsys),
                          contains=says)
    assert_one_line_error(run_main(report_main, [run, "--out", tmp_path / "r.html"], capsys), contains=says)


def test_train_samples_above_the_split_are_refused_not_clipped(tmp_path, capsys):
    from landscape.cli.train import main as train_main
    proc = run_main(train_main, ["--method", "standard", "--train-samples", "100000", "--epochs", "1",
                                 "--runs-dir", tmp_path], capsys)
    assert_one_line_error(proc, contains="has only 1294 samples")
    assert not any(tmp_path.iterdir())   # and no empty run folder is left behind


def test_spectrum_refuses_what_would_take_longer_than_max_hours(run, capsys):
    """The estimate is printed; a run over --max-hours stops there (the surface had the option, the spectrum
    announced 2.7 h and started)."""
    proc = run_main(spectrum_main, [run / "best.pt", "--samples", "8", "--top-k", "1", "--max-hours", "1e-9"],
                    capsys)
    assert_one_line_error(proc, contains="more than --max-hours 1e-09")
    assert proc.stdout.startswith("estimate:") and "rank" not in proc.stdout   # no eigenvalue table: no work


def test_the_report_says_when_a_row_mixes_sample_counts(run, tmp_path):
    """PGD on 359 samples and AutoAttack on 16 in one row: each cell says its n (the table mixed them silently)."""
    from landscape.report import collect, table_html
    base = {"checkpoint": str(run / "best.pt"), "dataset": "digits", "eps": 0.1}
    (tmp_path / "pgd.json").write_text(json.dumps({**base, "clean_acc": 0.9, "pgd_acc": 0.5, "n": 359}))
    (tmp_path / "aa.json").write_text(json.dumps({**base, "clean_acc": 0.875, "autoattack_acc": 0.25, "n": 16}))
    html = table_html(collect([tmp_path / "pgd.json", tmp_path / "aa.json"]))
    assert "50.0% (n = 359)" in html and "25.0% (n = 16)" in html and "90.0% (n = 359)" in html
    same = table_html(collect([tmp_path / "pgd.json"]))
    assert "90.0% (n = 359)" in same and "50.0% (n = 359)" in same   # every accuracy says its n (issue 23)


def test_surface_refuses_an_absurd_attack_before_running_it(run, tmp_path, capsys):
    """--restarts 100000000 ran for minutes with no estimate (the time check only looked at big grids and
    timed a whole point first): now one forward pass is timed and the attack's cost counted."""
    proc = run_main(surface_main, [run / "best.pt", "--dim", "1", "--x=-1:1:3", "--samples", "8", "--loss",
                                   "adversarial", "--restarts", "100000000", "--out", tmp_path / "s"], capsys)
    assert_one_line_error(proc, contains="more than --max-hours 24")
    assert not (tmp_path / "s" / "surface.json").exists()


def test_zero_pgd_steps_are_refused_alike_by_the_api_and_every_cli(run, capsys):
    """AttackSpec(steps=0) was accepted and reported a 'PGD' accuracy of the random start alone, while the CLIs
    refused --steps 0 (but landscape-spectrum took it): one rule now."""
    from landscape.cli.spectrum import main as spectrum_main
    with pytest.raises(ls.errors.ConfigError, match="^--steps: 0 must be >= 1$"):
        AttackSpec(eps=0.1, steps=0)
    for main, extra in ((eval_main, []), (spectrum_main, ["--loss", "adversarial"]), (surface_main, [])):
        assert_one_line_error(run_main(main, [run / "best.pt", "--steps", "0", *extra], capsys),
                              contains="argument --steps: 0 must be >= 1")
