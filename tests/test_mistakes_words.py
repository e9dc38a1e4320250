"""Mistakes of issue 33, classes 1, 5 and 8 (not the report's): a number is never labelled with a setting it
was not computed with (an option a mode ignores is refused in one line, not recorded); every command says
what its work will cost before it starts and refuses what exceeds --max-hours; and a failure says what is
wrong in words (--sync-bn on CPUs, a run's metrics.csv or a NumPy file given as a checkpoint, an AutoAttack
state of another batch size, Ctrl-C in landscape-eval)."""
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import landscape as ls
from conftest import ROOT, assert_one_line_error, run_main
from landscape.attack_spec import AttackSpec
from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.cli import eval as eval_cli
from landscape.cli.eval import main as eval_main
from landscape.cli.train import main as train_main
from landscape.data import dataset_info
from landscape.errors import CheckpointError, ConfigError
from landscape.training import TrainConfig


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _config(**extra) -> dict:
    return {"model": "mlp", "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(), "method": "at",
            "eps": 0.1, **extra}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of an mlp on digits trained for a fraction of a second (most samples right, so that attacks
    have work): best.pt, last.pt, metrics.csv, config.json; and restarts3.pt, whose config records a training
    attack of 3 restarts."""
    folder = tmp_path_factory.mktemp("runs") / "at-digits"
    folder.mkdir()
    model = ls.build_model("mlp", "digits", seed=0)
    x, y = ls.load_dataset("digits", "train").tensors(512)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for name in ("best.pt", "last.pt"):
        save_checkpoint(folder / name, model, _config(), {}, 1)
    save_checkpoint(folder / "restarts3.pt", model,
                    _config(attack=AttackSpec(eps=0.1, steps=2, restarts=3).to_dict()), {}, 1)
    (folder / "config.json").write_text(json.dumps(_config()))
    (folder / "metrics.csv").write_text("epoch,val_clean\n1,0.5\n")
    return folder


# --- class 1: a setting a mode does not use is refused, not recorded --------------------------------------

@pytest.mark.parametrize("args,says", [
    (["--restarts", "30", "--audit", "--no-autoattack"], "--restarts 30 sets plain PGD's restarts"),
    (["--restarts", "2", "--audit"], "--audit runs its PGD once"),
    (["--restarts", "1", "--audit"], "drop --restarts"),                  # a default given explicitly too
    (["--square-queries", "100"], "without --audit no Square attack runs"),
    (["--square-queries", "100", "--autoattack"], "without --audit no Square attack runs"),
    (["--square-queries", "100", "--audit"], "with AutoAttack, Square runs as its member"),
    (["--restarts", "3", "--no-random-start"], "with --no-random-start every restart is the same attack"),
], ids=["restarts-audit-no-aa", "restarts-audit", "restarts-1-audit", "square-plain", "square-autoattack",
        "square-audit-with-aa", "restarts-without-random-start"])
def test_eval_refuses_an_option_its_mode_ignores(run, capsys, args, says):
    proc = run_main(eval_main, [run / "best.pt", "--samples", "4", *args], capsys)
    assert_one_line_error(proc, contains=says)
    assert proc.stdout == ""   # before any work


def test_eval_records_the_attack_it_computed_with(run, tmp_path, capsys):
    """Plain PGD honours --restarts (and the checkpoint's restarts); the audit runs one restart whatever the
    checkpoint says, and records 1; --square-queries is recorded where it was used."""
    out = tmp_path / "plain.json"
    proc = run_main(eval_main, [run / "best.pt", "--samples", "8", "--steps", "2", "--restarts", "2", "--json", out],
                    capsys)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["restarts"] == 2 and res["settings"]["attack"]["restarts"] == 2 and "2 restarts" in proc.stdout
    out = tmp_path / "inherited.json"
    proc = run_main(eval_main, [run / "restarts3.pt", "--samples", "8", "--json", out], capsys)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["settings"]["attack"]["restarts"] == 3   # the checkpoint's, honoured
    out = tmp_path / "audit.json"
    proc = run_main(eval_main, [run / "restarts3.pt", "--samples", "8", "--steps", "2", "--audit", "--no-autoattack",
                                "--square-queries", "20", "--json", out], capsys)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["settings"]["attack"]["restarts"] == 1
    assert res["settings"]["square_queries"] == 20
    pgd_line = next(l for l in proc.stdout.splitlines() if l.startswith(str(run)))
    assert "restarts" not in pgd_line.split(": ", 1)[1]
    assert "more_effort 5 x PGD-4" in proc.stdout and "Square if half survive" in proc.stdout   # the estimate


@pytest.mark.parametrize("args,flag", [
    (["--method", "at", "--beta", "3"], "--beta is TRADES' weight (--method trades); --method at ignores it"),
    (["--method", "at", "--beta", "6"], "--beta"),           # the default value, given: refused alike
    (["--method", "p-sat", "--beta", "1"], "--method p-sat ignores it"),
    (["--method", "at", "--ramp", "0.5"], "--ramp is the SAT curriculum's ramp"),
    (["--method", "trades", "--lam0", "0.2"], "--lam0"),
    (["--method", "at", "--schedule", "cosine"], "--schedule"),
    (["--method", "p-sat", "--hsat-probe", "32"], "--hsat-probe is an H-SAT setting"),
    (["--method", "at", "--hsat-every", "5"], "--hsat-every"),
    (["--method", "sat-eps", "--hsat-normalize", "affine"], "--hsat-normalize"),
    (["--method", "at", "--hsat-iters", "4"], "--hsat-iters"),
    (["--method", "at", "--hsat-bisect", "3"], "--hsat-bisect"),
    (["--method", "at", "--track-probe", "32"], "without --track-hessian-every"),
    (["--method", "at", "--track-hessian-every", "0", "--track-probe", "32"], "--track-probe"),
    (["--method", "standard", "--steps", "3"], "--method standard trains on clean inputs"),
    (["--method", "standard", "--eps", "0.1", "--step-size", "0.01"], "--step-size"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_train_refuses_an_option_of_another_method(tmp_path, capsys, args, flag):
    proc = run_main(train_main, [*args, "--epochs", "1", "--runs-dir", tmp_path, "--name", "r", "--quiet"], capsys)
    assert_one_line_error(proc, contains=flag)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args,says", [
    (["--method", "at", "--val-samples", "5000"], "--val-samples 5000: the validation split of digits holds only 144"),
    (["--method", "at", "--track-hessian-every", "1", "--track-probe", "500"], "--track-probe 500: the validation"),
    (["--method", "h-sat", "--train-samples", "64", "--hsat-probe", "100"],
     "--hsat-probe 100: --train-samples 64 holds only 64 samples; give at most 64"),
], ids=["val-samples", "track-probe", "hsat-probe"])
def test_train_refuses_a_sample_count_the_data_cannot_fill(tmp_path, capsys, args, says):
    """The run used the samples there were and recorded the number asked for (clipped silently)."""
    proc = run_main(train_main, [*args, "--epochs", "1", "--runs-dir", tmp_path, "--name", "r", "--quiet"], capsys)
    assert_one_line_error(proc, contains=says)
    assert not (tmp_path / "r").exists()


def test_train_accepts_each_option_where_it_is_used(tmp_path, capsys):
    """The same options with the method that uses them: no refusal (cheap: the check alone), and one real run
    records what it was given and prints its estimate."""
    for method, given in [("trades", {"beta"}), ("p-sat", {"ramp", "lam0", "schedule"}),
                          ("sat-eps", {"ramp", "lam0", "schedule"}),
                          ("h-sat", {"hsat_every", "hsat_probe", "hsat_iters", "hsat_bisect", "hsat_normalize"}),
                          ("at", {"steps", "step_size"})]:
        assert TrainConfig(method=method).resolved().ignored(given) is None, method
    assert TrainConfig(method="at", track_hessian_every=1).resolved().ignored({"track_probe"}) is None
    tracked = TrainConfig(method="standard", eps=0.1, track_hessian_every=1).resolved()   # tracking attacks
    assert tracked.ignored({"steps", "step_size"}) is None
    assert TrainConfig(method="at").resolved().ignored(set()) is None   # defaults left alone: never refused
    proc = run_main(train_main, ["--method", "trades", "--beta", "3", "--steps", "1", "--epochs", "1",
                                 "--train-samples", "32", "--val-samples", "16", "--runs-dir", tmp_path,
                                 "--name", "t"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "t" / "config.json").read_text())["train"]["beta"] == 3
    line = next(l for l in proc.stdout.splitlines() if l.startswith("landscape-train: estimated ~"))
    assert "32 samples x" in line and "1 epoch of trades with PGD-1" in line and "validation on 16 samples" in line


# --- class 5: every command estimates its work first and keeps --max-hours ---------------------------------

def test_eval_prints_its_estimate_before_the_work(run, capsys):
    proc = run_main(eval_main, [run / "best.pt", "--samples", "8"], capsys)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("landscape-eval: estimated ~") and "8 samples x" in first and "PGD-20 21" in first
    assert "ms per sample-pass (timed here)" in first


@pytest.mark.parametrize("args,says", [
    (["--restarts", "100000", "--max-hours", "0.01"], "x 100000 restarts 2,100,000"),
    (["--steps", "1000000", "--max-hours", "0.01"], "PGD-1000000 1,000,001"),
    (["--samples", "8", "--max-hours", "1e-6"], "more than --max-hours 1e-06"),
    (["--samples", "8", "--autoattack", "--max-hours", "1e-6"], "AutoAttack if half survive each member"),
    (["--samples", "8", "--audit", "--max-hours", "1e-6"], "eps sweep"),
], ids=["restarts", "steps", "tiny-limit", "autoattack", "audit"])
def test_eval_refuses_what_exceeds_max_hours_before_the_work(run, capsys, monkeypatch, args, says):
    """--restarts 100000 or --steps 1000000 ran for minutes without a word: one pass is timed, the passes
    counted, and what exceeds --max-hours refused before any attack (the progress bar never starts)."""
    import landscape.attack_spec as spec
    monkeypatch.setattr(spec.AttackSpec, "examples", lambda *a, **k: pytest.fail("the attack ran"))
    proc = run_main(eval_main, [run / "best.pt", *args], capsys)
    assert_one_line_error(proc, contains="more than --max-hours")
    assert says in proc.stderr and "or raise --max-hours" in proc.stderr
    assert proc.stdout == ""


def test_train_refuses_what_exceeds_max_hours_and_keeps_the_run_it_would_replace(tmp_path, capsys):
    base = ["--method", "at", "--steps", "1", "--train-samples", "32", "--val-samples", "16", "--runs-dir", tmp_path]
    proc = run_main(train_main, [*base, "--epochs", "1", "--name", "r", "--quiet", "--save-every", "1"], capsys)
    assert proc.returncode == 0, proc.stderr
    files = {p.name: digest(p) for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert "epoch_001.pt" in files
    proc = run_main(train_main, [*base, "--epochs", "100000", "--name", "new", "--max-hours", "0.01"], capsys)
    assert_one_line_error(proc, contains="more than --max-hours 0.01")
    assert "100,000 epochs of at with PGD-1" in proc.stderr and not (tmp_path / "new").exists()
    proc = run_main(train_main, [*base, "--epochs", "2", "--name", "r", "--overwrite", "--max-hours", "1e-9"], capsys)
    assert_one_line_error(proc, contains="more than --max-hours 1e-09")
    assert {p.name: digest(p) for p in (tmp_path / "r").iterdir() if p.is_file()} == files   # nothing replaced


# --- class 8: words that say what is wrong ------------------------------------------------------------------

def test_sync_bn_on_cpus_is_one_line_before_the_work(tmp_path):
    """--sync-bn under torchrun on CPUs: every rank died in SyncBatchNorm's ValueError. Refused before the
    process group is joined (a rank's environment is enough), and by the trainer's own check."""
    from landscape.distributed import check_sync_bn
    with pytest.raises(ConfigError, match="--sync-bn needs GPUs with nccl"):
        check_sync_bn("cpu")
    check_sync_bn(torch.device("cuda", 0))   # a CUDA device passes (nothing is touched)
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29531", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "landscape.cli.train", "--sync-bn", "--device", "cpu", "--epochs",
                           "1", "--runs-dir", str(tmp_path), "--quiet"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc, contains="--sync-bn needs GPUs with nccl")
    assert not any(tmp_path.iterdir())


def _write(path, kind):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "npz":
        np.savez(path, x=np.zeros(3), loss=np.ones(3))
    elif kind == "npy":
        np.save(path, np.zeros(3))
    elif kind == "json":
        path.write_text(json.dumps({"kind": "evaluation", "clean_acc": 0.5}))
    elif kind == "csv":
        path.write_text("epoch,train_loss,val_clean\n1,0.3,0.5\n")
    elif kind == "jpeg":
        path.write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 32)
    elif kind == "gzip":
        path.write_bytes(b"\x1f\x8b\x08\x00" + b"0" * 32)
    elif kind == "zip":
        import zipfile
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    elif kind == "text":
        path.write_text("some notes\n")
    return path


@pytest.mark.parametrize("name,kind,says", [
    ("run/metrics.csv", "csv", "is a run's training log, not a checkpoint; give {run}/best.pt or last.pt"),
    ("run/config.json", "json", "is a run's config, not a checkpoint; give {run}/best.pt"),
    ("lone/metrics.csv", "csv", "training log, not a checkpoint; give best.pt or last.pt of that run"),
    ("s/surface.npz", "npz", "a surface's arrays (landscape-plot draws it), not a checkpoint"),
    ("arrays.npz", "npz", "a NumPy archive (.npz of x, loss), not a checkpoint"),
    ("weights.npz", "zip", "a ZIP archive that is not a PyTorch checkpoint"),
    ("a.npy", "npy", "a NumPy array (.npy), not a checkpoint"),
    ("result.json", "json", "a JSON file (a landscape result of kind 'evaluation'), not a checkpoint"),
    ("log.pt", "csv", "a CSV table (a training log like a run's metrics.csv), not a checkpoint"),
    ("table.csv", "text", "a CSV table, not a checkpoint"),
    ("notes.txt", "text", "a text file, not a checkpoint"),
    ("photo.pt", "jpeg", "a JPEG image, not a checkpoint"),
    ("model.pt.gz", "gzip", "a gzip-compressed file (unpack it first)"),
    ("junk.pt", "text", "corrupt or not a checkpoint: it holds text (it begins 'some notes')"),
])
def test_a_file_of_another_kind_is_named_not_called_corrupt(run, tmp_path, name, kind, says):
    if name.startswith("run/"):
        path = run / name[4:]
    else:
        path = _write(tmp_path / name, kind)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert says.format(run=run) in msg, msg
    assert "truncated" not in msg and "could run code" not in msg


def test_metrics_csv_given_to_eval_is_one_line_naming_it(run, capsys):
    proc = run_main(eval_main, [run / "metrics.csv"], capsys)
    assert_one_line_error(proc, contains=f"metrics.csv is a run's training log, not a checkpoint; give {run}/best.pt")


def test_a_safetensors_file_of_another_name_is_read_as_one(run, tmp_path):
    from safetensors.torch import save_file
    model = load_checkpoint(run / "best.pt").model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "weights.pt"))
    ck = load_checkpoint(tmp_path / "weights.pt", arch="mlp", dataset="digits")
    assert all(torch.equal(a, b) for a, b in zip(ck.model.state_dict().values(), model.state_dict().values()))


@pytest.fixture
def fake_members(monkeypatch):
    """AutoAttack's members replaced by one that breaks nothing (no package work), counting its calls; set
    ``stop_at`` to raise KeyboardInterrupt at that call (Ctrl-C in the middle of the ensemble)."""
    pytest.importorskip("pyautoattack")
    import landscape.autoattack as aa
    calls = {"n": 0, "stop_at": None}

    def member(model, x, y, attack, *a, **k):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt
        return x.clone()
    monkeypatch.setattr(aa, "_member", member)
    return calls


def test_ctrl_c_in_eval_says_rerunning_continues_and_it_does(run, tmp_path, capsys, fake_members):
    state = tmp_path / "aa"
    argv = [str(run / "best.pt"), "--samples", "8", "--steps", "1", "--autoattack", "--batch-size", "4",
            "--autoattack-state", str(state)]
    fake_members["stop_at"] = 2
    proc = run_main(eval_main, argv, capsys)
    assert proc.returncode == 130, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 + 1   # "AutoAttack ... on 8 samples" line, then Ctrl-C's
    last = proc.stderr.strip().splitlines()[-1]
    assert f"AutoAttack's finished chunks are kept in {state}; rerunning continues" in last
    words = shlex.split(last.split("): ", 1)[1])
    assert words[0] == "landscape-eval" and words[1:] == argv
    full = fake_members["n"]
    fake_members.update(n=0, stop_at=None)
    proc = run_main(eval_main, words[1:], capsys)            # the printed command continues
    assert proc.returncode == 0, proc.stderr
    assert full == 2 and fake_members["n"] == 7   # 2 chunks x 4 members, less the one done before Ctrl-C
    # the same state with another batch size: the cause is named
    proc = run_main(eval_main, [*argv[:-4], "--batch-size", "8", "--autoattack-state", str(state)], capsys)
    assert_one_line_error(proc, contains=f"--autoattack-state {state} was made with other settings than this run: "
                                         "batch size 4 (its chunks of samples); this run uses 8 (--batch-size)")
    assert proc.stdout == ""   # named before the PGD work, not after it
    proc = run_main(eval_main, [*argv, "--eps", "0.2"], capsys)
    assert_one_line_error(proc, contains="eps 0.1; this run uses 0.2")
    proc = run_main(eval_main, [*argv, "--seed", "3"], capsys)
    assert_one_line_error(proc, contains="seed 0; this run uses 3")


def test_the_library_names_what_differs_in_an_autoattack_state(run, tmp_path, fake_members):
    """run_autoattack itself (the API, and what the CLI's early check cannot see: the model, the samples)."""
    from landscape.autoattack import run_autoattack
    model = load_checkpoint(run / "best.pt").model
    x, y = ls.load_dataset("digits", "test").tensors(8)
    run_autoattack(model, x, y, 0.1, batch_size=4, state_dir=tmp_path / "s")
    for kwargs, says in [({"batch_size": 8}, "batch size 4 (its chunks of samples); this run uses 8"),
                         ({"batch_size": 4, "seed": 1}, "seed 0; this run uses 1")]:
        with pytest.raises(ConfigError, match=re.escape("was made with other settings than this run: " + says)):
            run_autoattack(model, x, y, 0.1, state_dir=tmp_path / "s", **kwargs)
    with pytest.raises(ConfigError, match="other samples"):
        run_autoattack(model, x.flip(0), y.flip(0), 0.1, batch_size=4, state_dir=tmp_path / "s")
    other = ls.build_model("mlp", "digits", seed=1).eval()
    with pytest.raises(ConfigError, match="another model's weights"):
        run_autoattack(other, x, y, 0.1, batch_size=4, state_dir=tmp_path / "s")


@pytest.mark.parametrize("extra,says", [([], "nothing is kept: rerunning starts over"),
                                        (["--autoattack"], "add --autoattack-state DIR to keep AutoAttack's")])
def test_ctrl_c_in_eval_without_a_state_says_nothing_is_kept(run, capsys, monkeypatch, extra, says):
    pytest.importorskip("pyautoattack")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(eval_cli, "evaluate", interrupted)
    proc = run_main(eval_main, [run / "best.pt", "--samples", "4", *extra], capsys)
    assert proc.returncode == 130 and says in proc.stderr.strip().splitlines()[-1], proc.stderr


# --- class 1 in the analysis scripts: settings recorded only for what ran ------------------------------------

def test_spectrum_records_only_the_settings_of_the_parts_that_ran(run, tmp_path, capsys):
    """A shared set of flags may carry a trace's or an attack's settings into a run that computes neither: the
    result then records none of them (a clean-loss eigenvalue labelled with 30 restarts was class 1)."""
    from landscape.cli.spectrum import main as spectrum_main
    out = tmp_path / "s.json"
    proc = run_main(spectrum_main, [run / "best.pt", "--top-k", "1", "--samples", "16", "--trace-method", "xtrace",
                                    "--trace-max-hvps", "7", "--density-probes", "2", "--restarts", "30", "--steps", "3",
                                    "--json", out], capsys)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(out.read_text())["settings"]
    for key in ("trace_method", "trace_max_hvps", "density_probes", "sigma", "restarts", "attack_norm"):
        assert key not in st, key
    assert st["steps"] is None and st["eps"] is None and st["top_k"] == 1
    out2 = tmp_path / "a.json"
    proc = run_main(spectrum_main, [run / "best.pt", "--top-k", "1", "--samples", "16", "--loss", "adversarial",
                                    "--restarts", "2", "--steps", "3", "--trace", "--trace-max-hvps", "7",
                                    "--json", out2], capsys)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(out2.read_text())["settings"]
    assert st["restarts"] == 2 and st["steps"] == 3 and st["trace_max_hvps"] == 7


def test_input_space_surface_records_and_prints_only_eps_and_norm(run, tmp_path, capsys):
    """--space input moves each input by eps along its gradient: no PGD runs, so its steps, step size and
    restarts are neither recorded nor printed beside the result."""
    from landscape.cli.surface import main as surface_main
    out = tmp_path / "in"
    proc = run_main(surface_main, [run / "best.pt", "--space", "input", "--samples", "8", "--x", "-1:1:3", "--y",
                                   "-1:1:3", "--curvature-iters", "0", "--steps", "50", "--restarts", "4",
                                   "--out", out], capsys)
    assert proc.returncode == 0, proc.stderr
    d = json.loads((out / "input_surface.json").read_text())
    assert d["settings"]["attack"] == {"eps": 0.1, "norm": "linf"}
    assert "PGD steps" not in proc.stdout and "restarts" not in proc.stdout and "eps 0.1" in proc.stdout
