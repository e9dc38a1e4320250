"""Mistakes of issue 33, classes 4, 7 and 8 (the report's part): budgets kept or refused the same way
everywhere, a report row that is one model under one setting, and a report that says what it found.

Class 4: every function that takes a memory budget (``hessian_trace`` in each method, ``top_eigenvalues``
with Lanczos and eigsh, ``spectral_density`` in each reorthogonalization, the plans and ``MemoryBudget``)
refuses a budget that what the process holds already exceeds ("1KB") with its estimate in one line, before
any HVP, and refuses a bare number below 1 MB (``max_memory=8`` meant as 8 GB) asking for the unit; a
method named is run as asked or refused, never swapped; ``auto`` records what it chose and why.
Class 7: results of one checkpoint under two settings (eps, steps, restarts, norm, split, the --arch
wrapper, its arguments, best.pt / last.pt) are two rows, labelled with what differs; a run folder that
also holds a result keeps its training row. Class 8: ``landscape-report runs/`` finds the run folders one
level down or says what it found; a stray JSON is named.
"""
import json

import numpy as np
import pytest
import torch

from cases import MatrixOp
from conftest import assert_one_line_error, run_main
from landscape.analysis import hessian_trace, spectral_density, top_eigenvalues
from landscape.analysis.memory import (MIN_BARE_BYTES, MemoryBudget, MemoryBudgetError, choose_top_k_plan,
                                       parse_budget, parse_memory, plan_density, plan_top_k, plan_trace)
from landscape.errors import ConfigError, LandscapeError, ResourceError
from landscape.io import write_json

# --- class 4: budgets ------------------------------------------------------------------------------------


class BlockOp(MatrixOp):
    """A matrix operator with ``matmat`` and a preferred block, as HessianOperator has."""
    preferred_block = 16

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.hvp_count += V.shape[1]
        return self.A @ V.to(self.A.dtype)


def spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (Q * torch.logspace(0, -3, n, dtype=torch.float64)) @ Q.T


#: every function that takes a memory budget, called with ``max_memory=m`` (the rest small and valid)
BUDGETED = {
    "trace auto": lambda op, m: hessian_trace(op, max_memory=m, max_hvps=40),
    "trace xtrace": lambda op, m: hessian_trace(op, method="xtrace", max_memory=m, max_hvps=40),
    "trace hutch++": lambda op, m: hessian_trace(op, method="hutch++", max_memory=m, max_hvps=40),
    "trace hutchinson": lambda op, m: hessian_trace(op, method="hutchinson", max_memory=m, max_hvps=40),
    "trace sketch_size": lambda op, m: hessian_trace(op, sketch_size=5, max_memory=m, max_hvps=40),
    # the plans take the budget resolved (MemoryBudget.of, as every entry point resolves it once)
    "plan_trace": lambda op, m: plan_trace(op, "auto", 40, MemoryBudget.of(m, op.device)),
    "top-k lanczos": lambda op, m: top_eigenvalues(op, k=2, max_memory=m),
    "top-k float64 basis": lambda op, m: top_eigenvalues(op, k=2, max_memory=m, basis_dtype=torch.float64),
    "top-k eigsh": lambda op, m: top_eigenvalues(op, k=2, max_memory=m, method="eigsh"),
    "density auto": lambda op, m: spectral_density(op, n_probes=1, lanczos_steps=10, max_memory=m),
    "density full": lambda op, m: spectral_density(op, n_probes=1, lanczos_steps=10, max_memory=m, reorth="full"),
    "density local": lambda op, m: spectral_density(op, n_probes=1, lanczos_steps=10, max_memory=m,
                                                    reorth="local"),
    "plan_top_k": lambda op, m: plan_top_k(op, 2, 30, MemoryBudget.of(m, op.device)),
    "choose_top_k_plan": lambda op, m: choose_top_k_plan(op, 2, 30, MemoryBudget.of(m, op.device)),
    "plan_density": lambda op, m: plan_density(op, 10, MemoryBudget.of(m, op.device)),
    "MemoryBudget.of": lambda op, m: MemoryBudget.of(m, "cpu"),
}


@pytest.fixture
def op():
    return MatrixOp(spd(40))


@pytest.mark.parametrize("name", [k for k in BUDGETED if k != "MemoryBudget.of"])
@pytest.mark.parametrize("budget", ["1KB", "100B", "1MB", 10 ** 6])
def test_a_budget_below_what_is_held_is_refused_with_its_estimate_before_any_hvp(op, name, budget):
    """The issue's ``hessian_trace(op, max_memory="1KB")`` ran Hutch++ (another number) where top-k refused:
    now every budgeted function refuses it alike, in one line with the estimate, before an HVP."""
    with pytest.raises(ResourceError) as err:
        BUDGETED[name](op, budget)
    msg = str(err.value)
    assert isinstance(err.value, MemoryBudgetError) and isinstance(err.value, ConfigError)  # old callers too
    assert "\n" not in msg and "cannot fit in memory" in msg and "budget is" in msg, msg
    assert op.hvp_count == 0, name


@pytest.mark.parametrize("name", list(BUDGETED))
@pytest.mark.parametrize("budget,hint", [(8, "'8GB'"), ("8", "'8GB'"), (8.0, "'8.0GB'"), (np.int64(8), "'8GB'"),
                                         (" 64 ", "'64GB'"), (512, "'512GB'"), (2048, "'2048MB'"),
                                         (999_999, "'999999MB'")])
def test_a_bare_number_below_1mb_is_refused_asking_for_the_unit(op, name, budget, hint):
    """``max_memory=8`` meant as 8 GB was 8 bytes: refused in one line that asks for the unit, the same rule
    (``parse_budget``) for every budgeted function and --max-memory."""
    with pytest.raises(ConfigError, match="did you mean") as err:
        BUDGETED[name](op, budget)
    msg = str(err.value)
    assert hint in msg and "\n" not in msg and "at least 1 MB" in msg, msg
    assert op.hvp_count == 0


def test_sizes_with_a_unit_and_large_byte_counts_are_taken_as_written():
    assert parse_budget("8GB") == 8 * 10 ** 9 and parse_budget("96kB") == 96_000 and parse_budget("100B") == 100
    assert parse_budget(MIN_BARE_BYTES) == MIN_BARE_BYTES and parse_budget("2e9") == 2 * 10 ** 9
    assert parse_memory(1000) == 1000                 # the raw parser stays a parser; the budget rule is on top
    assert MemoryBudget.of("1.5GiB", "cpu").total == int(1.5 * 2 ** 30)
    b = MemoryBudget(123, False)
    assert MemoryBudget.of(b, "cpu") is b             # a resolved budget passes through unchanged
    for bad in ("-1GB", "0", "lots", "8XB", True):
        with pytest.raises(ConfigError):
            parse_budget(bad)


@pytest.mark.parametrize("name", [k for k in BUDGETED if k not in ("MemoryBudget.of",)])
def test_a_roomy_budget_runs_and_is_recorded(op, name):
    res = BUDGETED[name](op, "4GB")
    settings = res.settings if hasattr(res, "settings") else res.to_dict() if hasattr(res, "to_dict") else res
    text = json.dumps(settings, default=str)
    assert "4000000000" in text, name                 # the budget kept is the one given, recorded


def test_auto_trace_chooses_by_its_rule_and_says_why_named_methods_are_kept_or_refused():
    """A budget that holds Hutch++'s sketch but not XTrace's probes (hvp_peak=0: only the probes count):
    auto takes Hutch++ and records why; xtrace by name is refused with what fits (it was cut to fewer
    probes, 20 of 90 HVPs, silently); hutch++ with a sketch that does not fit is refused; hutchinson runs."""
    n = 300
    op = MatrixOp(spd(n, 1))
    budget = f"{40 * 8 * n}B"                         # forty float64 n-vectors
    auto = hessian_trace(op, tol=0, max_hvps=90, max_memory=budget, hvp_peak=0)
    s = auto.settings
    assert (auto.method, s["method"], s["chosen"]) == ("hutch++", "auto", "hutch++")
    assert "AUTO_RULE: xtrace" in s["auto_reason"] and "hutch++ with a sketch of 10" in s["auto_reason"]
    assert auto.sketch_size == 10 and auto.hvps == 90 and s["estimated_peak"] <= 40 * 8 * n
    with pytest.raises(ResourceError, match=r"45 probes .* at most 10 probes fit \(max_hvps=20\)"):
        hessian_trace(op, method="xtrace", tol=0, max_hvps=90, max_memory=budget, hvp_peak=0)
    x = hessian_trace(op, method="xtrace", tol=0, max_hvps=20, max_memory=budget, hvp_peak=0)
    assert (x.method, x.sketch_size, x.hvps, x.settings["auto_reason"]) == ("xtrace", 10, 20, None)
    with pytest.raises(ResourceError, match=r"a sketch of at most 10 fits \(sketch_size=10\)"):
        hessian_trace(op, method="hutch++", sketch_size=20, tol=0, max_hvps=90, max_memory=budget, hvp_peak=0)
    with pytest.raises(ResourceError, match="a sketch of at most 10"):
        hessian_trace(op, method="hutch++", tol=0, max_hvps=90, max_memory=budget, hvp_peak=0)  # default 20
    for method in ("hutchinson", "hutch++"):
        kw = {"sketch_size": 10} if method == "hutch++" else {}
        r = hessian_trace(op, method=method, tol=0, max_hvps=90, max_memory=budget, hvp_peak=0, **kw)
        assert r.method == method and r.hvps == 90 and r.settings["auto_reason"] is None
    roomy = hessian_trace(op, tol=0, max_hvps=90, max_memory="1GB", hvp_peak=0)
    assert roomy.method == "xtrace" and roomy.settings["auto_reason"] == "AUTO_RULE: xtrace at max_hvps=90"
    tiny = f"{2 * 8 * n}B"                            # not even one probe's three vectors
    with pytest.raises(ResourceError, match="one probe"):
        hessian_trace(op, max_hvps=90, max_memory=tiny, hvp_peak=0)
    few = hessian_trace(op, max_hvps=90, max_memory=f"{3 * 8 * n}B", hvp_peak=0, tol=0)
    assert few.method == "hutchinson" and "no Hutch++ sketch fits" in few.settings["auto_reason"]


def test_the_probe_block_shrinks_to_the_budget_and_the_estimate_does_not_change():
    """Only how many probes go through one matmat adapts to the budget: the draws, the HVPs and the
    estimate are those of the roomy run."""
    n = 200
    A = spd(n, 2)
    roomy = hessian_trace(BlockOp(A), method="hutchinson", tol=0, max_hvps=48, max_memory="1GB", hvp_peak=0)
    tight = hessian_trace(BlockOp(A), method="hutchinson", tol=0, max_hvps=48, max_memory=f"{7 * 8 * n}B",
                          hvp_peak=0)
    assert roomy.settings["probe_block"] == 16 and tight.settings["probe_block"] == 2
    assert tight.estimate == pytest.approx(roomy.estimate, rel=1e-12) and tight.hvps == roomy.hvps == 48


def test_hvp_budgets_and_sketches_are_checked_alike():
    op = MatrixOp(spd(30))
    for call in (lambda: hessian_trace(op, max_hvps=8.5), lambda: hessian_trace(op, max_hvps=True),
                 lambda: top_eigenvalues(op, max_hvps=2.5),
                 lambda: spectral_density(op, lanczos_steps=2.5), lambda: spectral_density(op, n_probes=1.0),
                 lambda: hessian_trace(op, method="xtrace", sketch_size=5),
                 lambda: hessian_trace(op, method="hutchinson", sketch_size=5),
                 lambda: hessian_trace(op, sketch_size=2.5), lambda: hessian_trace(op, max_hvps=0)):
        with pytest.raises(ConfigError):
            call()
    assert op.hvp_count == 0
    r = hessian_trace(op, sketch_size=5, max_hvps=40, tol=0)   # a sketch size asks for Hutch++ by name
    assert r.method == "hutch++" and r.sketch_size == 5


def test_cli_max_memory_bare_number_is_one_line_asking_for_the_unit(tmp_path, capsys):
    from landscape.cli.spectrum import main
    proc = run_main(main, [tmp_path / "none.pt", "--max-memory", "8"], capsys)
    assert_one_line_error(proc, contains="did you mean '8GB'")


# --- class 7: one model under one setting per row --------------------------------------------------------

report = pytest.importorskip("landscape.report")


def evaluation(path, ck, eps=0.1, steps=20, restarts=1, norm="linf", split="test", n=100, clean=0.9, pgd=0.5,
               aa=None, model="cnn-small", arch_kwargs=None, train_eps=0.1, kind="evaluation", bn="eval",
               step_size=None):
    """A result as landscape-eval --json writes it (the checkpoint's training config under "config")."""
    attack = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size or 2.5 * eps / steps,
              "restarts": restarts, "random_start": True, "batch_size": 256, "bn": bn,
              "step_size_default": step_size is None}
    config = {"model": model, "dataset": "digits", "method": "at", "eps": train_eps}
    if arch_kwargs:
        config.update(arch_kwargs=arch_kwargs, foreign=True)
    d = {"kind": kind, "settings": {"samples": n, "seed": 0, "attack": attack}, "n": n, "clean_acc": clean,
         "pgd_acc": pgd, "autoattack_acc": aa, "checkpoint": str(ck), "dataset": "digits", "split": split,
         "config": config}
    if kind == "evaluation":
        d.update(eps=eps, steps=steps, restarts=restarts, step_size=attack["step_size"])
    else:
        d["audit"] = {"verdict": "ok", "checks": [{"name": "gradients", "passed": True}]}
    write_json(path, d)
    return path


def run_folder(root, name="at-digits-eps0.1-s0", eps=0.1):
    run = root / name
    run.mkdir(parents=True)
    write_json(run / "config.json", {"model": "cnn-small", "dataset": "digits", "method": "at", "eps": eps})
    (run / "metrics.csv").write_text("epoch,val_clean,val_pgd\n1,0.5,0.2\n2,0.6,0.3\n")
    return run


def test_two_evaluations_at_two_eps_are_two_rows_each_labelled(tmp_path):
    """The issue's case: PGD at eps 0.1 from one file and AutoAttack at eps 0.3 from the other were one row
    labelled with one eps."""
    run = run_folder(tmp_path)
    evaluation(run / "eval_eps0.1.json", run / "best.pt", eps=0.1, pgd=0.5)
    evaluation(run / "eval_eps0.3.json", run / "best.pt", eps=0.3, pgd=0.2, aa=0.15)
    entries = report.collect([run])
    by = {e.label: e for e in entries}
    assert sorted(by) == ["AT (ε = 0.1)", "AT (ε = 0.3)"]
    assert by["AT (ε = 0.1)"].evaluation["pgd"] == 0.5 and "autoattack" not in by["AT (ε = 0.1)"].evaluation
    assert by["AT (ε = 0.3)"].evaluation == {"clean": 0.9, "clean_n": 100, "pgd": 0.2, "pgd_n": 100,
                                             "autoattack": 0.15, "autoattack_n": 100, "n": 100}
    assert len(by["AT (ε = 0.1)"].metrics) == 1 and not by["AT (ε = 0.3)"].metrics   # trained at 0.1
    html = report.table_html(entries)
    assert html.count("AT (ε = 0.") == 2


def test_an_audit_is_labelled_with_its_own_eps_not_the_training_eps(tmp_path):
    """A CLI audit has no top-level eps: its eps was read from the checkpoint's training config."""
    run = run_folder(tmp_path)
    evaluation(run / "audit.json", run / "best.pt", eps=0.3, kind="audit", train_eps=0.1)
    entries = report.collect([run])
    assert sorted(e.label for e in entries) == ["AT (ε = 0.1)", "AT (ε = 0.3)"]
    audit = next(e for e in entries if e.audit)
    assert audit.settings["shared"]["eps"] == 0.3 and not audit.metrics


@pytest.mark.parametrize("change,label", [
    ({"steps": 100}, "100 steps"), ({"restarts": 10}, "10 restarts"), ({"norm": "l2"}, "L2"),
    ({"split": "train"}, "train split"), ({"model": "WrapperB"}, "model WrapperB"), ({"bn": "train"}, "BN train"),
    ({"step_size": 0.05}, "step 0.05"), ({"eps": 8 / 255}, "ε = 8/255)"),
    ({"arch_kwargs": {"depth": 34}}, 'arch kwargs {"depth": 34}')])
def test_one_checkpoint_under_two_settings_is_two_rows_showing_the_difference(tmp_path, change, label):
    ck = tmp_path / "zoo" / "weights.pt"
    a = evaluation(tmp_path / "a.json", ck, pgd=0.5)
    b = evaluation(tmp_path / "b.json", ck, pgd=0.3, aa=0.25, **change)
    entries = report.collect([a, b])
    assert len(entries) == 2, [e.label for e in entries]
    other = entries[1]
    assert label in other.label and other.evaluation["pgd"] == 0.3 and entries[0].evaluation["pgd"] == 0.5
    assert "autoattack" not in entries[0].evaluation


def test_two_arch_wrappers_of_one_weights_file_are_two_rows(tmp_path):
    ck = tmp_path / "zoo" / "weights.pt"
    a = evaluation(tmp_path / "a.json", ck, kind="audit", model="wrap.py:Normalized")
    b = evaluation(tmp_path / "b.json", ck, kind="audit", model="wrap.py:Raw")
    entries = report.collect([a, b])
    assert [e.label for e in entries] == ["zoo (model wrap.py:Normalized)", "zoo (model wrap.py:Raw)"]
    assert all(e.audit for e in entries) and entries[0].settings["shared"]["checkpoint"] == "weights.pt"


def test_best_and_last_and_two_seeds_are_separate_rows(tmp_path):
    run = run_folder(tmp_path)
    evaluation(run / "eval_best.json", run / "best.pt", pgd=0.5)
    evaluation(run / "eval_last.json", run / "last.pt", pgd=0.4)
    other = run_folder(tmp_path, "at-digits-eps0.1-s1")
    evaluation(other / "eval.json", other / "best.pt", pgd=0.45)
    entries = report.collect([run, other])
    labels = sorted(e.label for e in entries)
    assert len(entries) == 3 and len(set(labels)) == 3, labels
    assert any("last.pt" in x for x in labels) and any("at-digits-eps0.1-s1" in x for x in labels)
    assert {e.evaluation["pgd"] for e in entries} == {0.5, 0.4, 0.45}


def test_results_of_one_model_and_setting_stay_one_row(tmp_path):
    """An evaluation, an audit (its AutoAttack on fewer samples), a clean-loss spectrum and the training of
    one checkpoint: one row, each accuracy with its n (nothing to tell apart)."""
    run = run_folder(tmp_path)
    evaluation(run / "eval.json", run / "best.pt", n=359, pgd=0.7)
    evaluation(run / "eval_audit.json", run / "best.pt", n=40, pgd=0.6, aa=0.45, kind="audit")
    write_json(run / "spectrum.json", {"kind": "spectrum", "checkpoint": str(run / "best.pt"), "model": "cnn-small",
                                       "dataset": "digits", "num_samples": 64, "settings": {"loss": "clean"},
                                       "eigenvalues": {"values": [3.0], "converged": [True]}})
    entries = report.collect([run])
    assert len(entries) == 1, [e.label for e in entries]
    e = entries[0]
    assert e.label == "AT" and e.metrics and e.eigen and e.audit
    assert (e.evaluation["pgd"], e.evaluation["pgd_n"], e.evaluation["autoattack_n"]) == (0.7, 359, 40)
    text = report.table_html(entries)
    assert "spectrum: clean loss, n = 64" in text and "attack: Linf, 20 steps, 1 restart, step 0.0125, test split" in text


def test_a_run_folder_holding_a_result_keeps_its_training_row(tmp_path):
    """``landscape-surface --out runs/X`` (or --space input) writes its result into the run folder itself: the
    folder was then read as that surface alone and its training row (and every other result) was lost."""
    from landscape.analysis.surface import SurfaceResult
    run = run_folder(tmp_path)
    x = np.linspace(-1, 1, 3)
    sr = SurfaceResult(x, x, np.ones((3, 3)), np.ones((3, 3)), np.ones((3, 3), bool),
                       {"loss": "clean", "samples": 8, "info": {"checkpoint": str(run / "best.pt")}})
    write_json(run / "surface.json", sr.to_dict())
    evaluation(run / "eval.json", run / "best.pt")
    entries = report.collect([run])
    assert len(entries) == 1 and entries[0].metrics and entries[0].surfaces and entries[0].evaluation
    (run / "surface.json").unlink()
    a = [-1.0, 0.0, 1.0]
    write_json(run / "input_surface.json", {
        "kind": "input_surface", "settings": {"samples": 8, "attack": {"eps": 0.1}}, "checkpoint": str(run / "best.pt"),
        "n": 8, "a": a, "b": a, "mean_loss": [[1] * 3] * 3, "accuracy": [[1] * 3] * 3,
        "curvature": {"per_sample": [0.1] * 8, "mean": 0.1, "median": 0.1, "max": 0.5}, "examples": []})
    entries = report.collect([run])
    assert len(entries) == 1 and entries[0].metrics and entries[0].input_surface and entries[0].evaluation


# --- class 8: what the report found ------------------------------------------------------------------------

def test_a_folder_of_run_folders_is_read_one_level_down(tmp_path):
    runs = tmp_path / "runs"
    for name, eps, pgd in (("at-digits-eps0.1-s0", 0.1, 0.5), ("p-sat-digits-eps0.1-s0", 0.1, 0.6)):
        r = run_folder(runs, name, eps)
        evaluation(r / "eval.json", r / "best.pt", pgd=pgd)
    entries = report.collect([runs])
    assert sorted(e.label for e in entries) == ["AT", "P-SAT"]
    assert all(e.metrics and e.evaluation for e in entries)


def test_a_folder_without_results_says_what_it_found_and_what_it_expects(tmp_path):
    empty = tmp_path / "runs"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(LandscapeError) as err:
        report.collect([empty])
    msg = str(err.value)
    assert "\n" not in msg and "2 folder(s) (a, b) with no results" in msg and "notes.txt" in msg
    assert "expected a run folder" in msg and "a folder of run folders" in msg
    (tmp_path / "void").mkdir()
    with pytest.raises(LandscapeError, match="it is empty"):
        report.collect([tmp_path / "void"])


def test_a_stray_json_is_named_refused_given_skipped_with_a_note_in_a_folder(tmp_path, capsys):
    from landscape.cli.report import main
    run = run_folder(tmp_path)
    evaluation(run / "eval.json", run / "best.pt")
    stray = run / "wandb-summary.json"
    write_json(stray, {"_step": 3, "loss": 0.1})
    with pytest.raises(LandscapeError, match="wandb-summary.json"):
        report.collect([stray])
    entries = report.collect([run])
    assert len(entries) == 1 and len(entries.notes) == 1 and "wandb-summary.json" in entries.notes[0]
    assert "wandb-summary.json" in report.build_report(entries) if _has_plotly() else True
    proc = run_main(main, [stray, "--out", tmp_path / "r.html"], capsys)
    assert_one_line_error(proc, contains="wandb-summary.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    proc = run_main(main, [broken, "--out", tmp_path / "r2.html"], capsys)
    assert_one_line_error(proc, contains="broken.json")


def _has_plotly() -> bool:
    try:
        import plotly  # noqa: F401
        return True
    except ImportError:
        return False


def test_a_clean_and_an_adversarial_surface_of_one_model_are_two_rows(tmp_path):
    """Two 3D scenes were both titled with the run's name; the loss that made them differs."""
    from landscape.analysis.surface import SurfaceResult
    run = run_folder(tmp_path)
    x = np.linspace(-1, 1, 3)
    for loss in ("adversarial", "clean"):
        st = {"loss": loss, "samples": 64, "info": {"checkpoint": str(run / "best.pt")}}
        if loss == "adversarial":
            st["attack"] = {"eps": 0.1, "steps": 10, "norm": "linf"}
        sr = SurfaceResult(x, x, np.ones((3, 3)), np.ones((3, 3)), np.ones((3, 3), bool), st)
        (run / "surfaces" / loss).mkdir(parents=True)
        write_json(run / "surfaces" / loss / "surface.json", sr.to_dict())
    entries = report.collect([run])
    labels = sorted(e.label for e in entries)
    assert labels == ["AT (surfaces adversarial loss)", "AT (surfaces clean loss)"], labels
    assert sum(len(e.surfaces) for e in entries) == 2 and sum(len(e.metrics) for e in entries) == 1


def test_a_checkpoint_or_an_empty_runs_folder_given_to_the_cli_is_one_line(tmp_path, capsys):
    from landscape.cli.report import main
    run = run_folder(tmp_path / "runs")
    (run / "best.pt").write_bytes(b"PK\x03\x04 not json")
    proc = run_main(main, [run / "best.pt", "--out", tmp_path / "r.html"], capsys)
    assert_one_line_error(proc, contains="is a checkpoint, not a result: give its run folder")
    (run / "metrics.csv").unlink()                       # a run that has not written a result yet
    proc = run_main(main, [tmp_path / "runs", "--out", tmp_path / "r.html"], capsys)
    assert_one_line_error(proc, contains="no results found (1 folder(s) (at-digits-eps0.1-s0) with no results")
    assert not (tmp_path / "r.html").exists()


def test_study_cells_whose_run_folders_are_all_called_train_stay_apart(tmp_path):
    """landscape-study's report passes each cell's result JSONs and its cells/CELL/train run: every run
    folder is called train, so every cell was one run "train" and cells at one eps became one row."""
    paths = []
    for cell, pgd in (("at-eps0.1-s0", 0.5), ("trades-eps0.1-s0", 0.4), ("at-eps0.1-s1", 0.45)):
        train = run_folder(tmp_path / "cells" / cell, "train")
        paths += [evaluation(tmp_path / "cells" / cell / "eval.json", f"cells/{cell}/train/best.pt", pgd=pgd), train]
    entries = report.collect(paths)
    assert sorted(e.label for e in entries) == ["AT (at-eps0.1-s0)", "AT (at-eps0.1-s1)", "TRADES"]
    assert all(len(e.metrics) == 1 and e.evaluation for e in entries)
