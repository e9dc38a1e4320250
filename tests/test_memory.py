"""landscape.analysis.memory: the budget (units, bare numbers, "auto", one-line refusals), probing, the plans,
and the one planned job of a spectrum run (made once, printed, and run as printed)."""
import inspect
import json

import pytest
import torch

from cases import MatrixOp, decaying_spd, tiny_mlp
from conftest import assert_one_line_error, run_main
from landscape import build_model
from landscape.analysis import HessianOperator, hessian_trace, memory, spectrum, top_eigenvalues, trace
from landscape.analysis.memory import (DEFAULT_FRACTION, GRAPH_SHARE, MIN_BARE_BYTES, MemoryBudget,
                                       MemoryBudgetError, MemoryPlan, PeakMemory, SpectrumJob, TracePlan,
                                       available_memory, choose_top_k_plan, default_max_memory, fmt_bytes,
                                       graph_memory, memory_in_use, min_top_k_capacity, parse_memory, plan_density,
                                       plan_spectrum, plan_top_k, plan_trace, time_hvp)
from landscape.checkpoint import save_checkpoint
from landscape.cli import spectrum as spectrum_cli
from landscape.data import dataset_info
from landscape.errors import ConfigError


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg, msg
    return msg


# --- the budget: resolved once from "auto", a size, or bytes ---------------------------------------------

@pytest.mark.parametrize("given,total", [("8GB", 8 * 10 ** 9), ("512MB", 512 * 10 ** 6), ("8G", 8 * 10 ** 9),
                                         ("1.5GiB", int(1.5 * 2 ** 30)), ("96kB", 96_000), ("100B", 100),
                                         (" 2e9 ", 2 * 10 ** 9), (MIN_BARE_BYTES, MIN_BARE_BYTES),
                                         (6.4e9, 6_400_000_000), ("3000000", 3_000_000)])
def test_sizes_with_a_unit_and_bare_bytes_resolve_as_written(given, total):
    b = MemoryBudget.of(given, "cpu")
    assert (b.total, b.default, b.device, b.host) == (total, False, "cpu", 0)
    assert b.graphs == int(GRAPH_SHARE * total)
    assert b.to_dict() == {"max_memory": total, "max_memory_default": False, "graph_share": GRAPH_SHARE,
                           "device": "cpu"}


@pytest.mark.parametrize("given", [None, "auto", " AUTO "])
def test_auto_is_the_default_share_of_the_machine(given):
    b = MemoryBudget.of(given, "cpu")
    total = memory._meminfo().get("MemTotal", 0)
    assert b.default is True and 0 < b.total
    assert not total or b.total <= DEFAULT_FRACTION * total + 1


def test_a_resolved_budget_passes_through_and_is_kept_to_its_device():
    b = MemoryBudget.of("2GB", "cpu")
    assert MemoryBudget.of(b, "cpu") is b and MemoryBudget.of(b, torch.device("cpu")) is b
    with pytest.raises(ConfigError, match="resolved for cpu") as e:
        MemoryBudget.of(b, "meta")
    one_line(e.value)


@pytest.mark.parametrize("bad,words", [(8, "did you mean '8GB'"), ("8", "did you mean '8GB'"),
                                       (2048, "did you mean '2048MB'"), (999_999, "at least 1 MB"),
                                       ("-5GB", "must be positive"), ("0", "must be positive"),
                                       (float("nan"), "must be positive"), ("8XB", "cannot read"),
                                       ("lots", "cannot read"), (True, "cannot read")])
def test_what_is_not_a_budget_is_refused_in_one_line(bad, words):
    with pytest.raises(ConfigError, match=words) as e:
        MemoryBudget.of(bad, "cpu")
    one_line(e.value)


def test_parse_memory_is_the_raw_parser():
    assert parse_memory("8GB") == 8 * 10 ** 9 and parse_memory("512MB") == 512 * 10 ** 6
    assert parse_memory("1.5GiB") == int(1.5 * 2 ** 30) and parse_memory("8G") == 8 * 10 ** 9
    assert parse_memory(1000) == 1000 and fmt_bytes(2.5e9) == "2.5 GB" and fmt_bytes(999) == "999 B"
    for bad in ("8XB", "-1GB", "0", "lots"):
        with pytest.raises(ConfigError):
            parse_memory(bad)


# --- max_graph_memory: the same unit as --max-memory -----------------------------------------------------

@pytest.fixture
def small_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 64, generator=g, dtype=torch.float64), torch.randint(0, 10, (24,), generator=g)


@pytest.mark.parametrize("bare", [8, "8", 512.0, 999_999])
def test_max_graph_memory_reads_a_bare_number_as_max_memory_does(small_data, bare):
    """``HessianOperator(max_graph_memory=8)`` was 8 bytes while ``--max-memory 8`` was refused: now both are
    bytes, and below 1 MB both are refused in one line asking for the unit, with the same words."""
    with pytest.raises(ConfigError, match="did you mean") as e:
        HessianOperator(tiny_mlp(), small_data, max_graph_memory=bare)
    msg = one_line(e.value)
    assert msg.startswith("max_graph_memory ")
    with pytest.raises(ConfigError) as cli:
        MemoryBudget.of(bare, "cpu")
    assert msg.split(" would be ", 1)[1] == str(cli.value).split(" would be ", 1)[1]


def test_max_graph_memory_sizes_budgets_and_zero(small_data):
    assert graph_memory("2MB", "cpu") == (2 * 10 ** 6, 2 * 10 ** 6)
    assert graph_memory(3 * 10 ** 6, "cpu") == (3 * 10 ** 6, 3 * 10 ** 6)
    assert graph_memory("300kB", "cpu") == (300_000, 300_000)          # a unit: taken as written
    assert graph_memory(0, "cpu") == graph_memory("0", "cpu") == (0, 0)   # keep no graph
    assert graph_memory(MemoryBudget(4 * 10 ** 9, False), "cpu") == (2 * 10 ** 9, 4 * 10 ** 9)
    for auto in (None, "auto"):
        share, given = graph_memory(auto, "cpu")
        assert share > 0 and given is None
    op = HessianOperator(tiny_mlp(), small_data, batch_size=8, max_graph_memory="2MB")
    g = op.describe()["graph_cache"]
    assert (g["budget_bytes"], g["budget_given"]) == (2 * 10 ** 6, 2 * 10 ** 6)
    with pytest.raises(ConfigError, match="must be positive"):
        HessianOperator(tiny_mlp(), small_data, max_graph_memory="-1GB")


# --- probing ---------------------------------------------------------------------------------------------

def test_probes_return_sane_positive_values():
    total = memory._meminfo().get("MemTotal", 0)
    held, free, default = memory_in_use("cpu"), available_memory("cpu"), default_max_memory("cpu")
    assert 10 ** 6 < held and 0 < free and 0 < default
    if total:
        assert held < total and free <= total and default <= DEFAULT_FRACTION * total + 1
    seconds, peak = time_hvp(MatrixOp(decaying_spd(50)[0]), repeats=2)
    assert 0 < seconds < 10 and peak >= 10 ** 6


def test_peak_memory_sees_a_transient_allocation():
    """100 MB of fresh pages, touched and freed inside the block. An anonymous mmap, not a tensor: malloc may
    serve a tensor from pages the process already holds (after a long test run it once did), and then the
    resident set never grows."""
    import mmap
    before = memory_in_use("cpu")
    with PeakMemory("cpu") as pk:
        size = 100 * 10 ** 6
        m = mmap.mmap(-1, size)
        for i in range(0, size, mmap.PAGESIZE):
            m[i] = 1
        m.close()
    assert pk.peak >= before + 90 * 10 ** 6 and pk.seconds > 0
    assert memory_in_use("cpu") < pk.peak


# --- plans -----------------------------------------------------------------------------------------------

BIG = type("Op", (), {"num_params": 10 ** 7, "device": torch.device("cpu"), "dtype": torch.float32})()


def test_plans_take_only_a_resolved_budget():
    for call in (lambda: plan_top_k(BIG, 5, 100, "8GB", 0), lambda: choose_top_k_plan(BIG, 5, 100, 10 ** 10, 0),
                 lambda: plan_density(BIG, 80, None, 0), lambda: plan_trace(BIG, "auto", 40, "8GB", 0)):
        with pytest.raises(ConfigError, match="resolved MemoryBudget") as e:
            call()
        one_line(e.value)


def test_lanczos_plans():
    vb, peak = 4 * 10 ** 7, 10 ** 9       # 40 MB per float32 vector
    roomy = plan_top_k(BIG, 5, 100, MemoryBudget(10 ** 10, False), peak)
    assert roomy.capacity == 101 and not roomy.thick_restart and roomy.estimated_peak == peak + (101 + 3) * vb
    tight = plan_top_k(BIG, 5, 100, MemoryBudget(peak + 30 * vb, False), peak)
    assert tight.thick_restart and min_top_k_capacity(5) <= tight.capacity <= 28
    assert tight.estimated_peak <= peak + 30 * vb
    with pytest.raises(MemoryBudgetError, match="needs about"):
        plan_top_k(BIG, 5, 100, MemoryBudget(peak + 5 * vb, False), peak)
    with pytest.raises(MemoryBudgetError, match="needs about"):
        plan_top_k(BIG, 100000, 100000, MemoryBudget.of(None, "cpu"), peak)
    d_full = plan_density(BIG, 80, MemoryBudget(10 ** 10, False), peak)
    d_local = plan_density(BIG, 80, MemoryBudget(peak + 20 * vb, False), peak)
    assert (d_full.reorth, d_full.capacity, d_local.reorth) == ("full", 81, "local")
    assert d_local.estimated_peak == peak + 5 * vb
    with pytest.raises(MemoryBudgetError, match="needs about"):
        plan_density(BIG, 80, MemoryBudget(peak + 20 * vb, False), peak, reorth="full")
    assert MemoryPlan(**json.loads(json.dumps(d_local.to_dict()))) == d_local


def test_top_k_basis_falls_back_to_the_operators_dtype_when_float64_does_not_fit():
    vb, peak = 4 * 10 ** 7, 10 ** 9
    roomy = MemoryBudget(10 ** 10, False)
    assert choose_top_k_plan(BIG, 5, 100, roomy, peak).dtype == "float64"
    tight = choose_top_k_plan(BIG, 5, 100, MemoryBudget(peak + 24 * vb, False), peak)  # 12 float64 vectors
    assert (tight.dtype, tight.thick_restart) == ("float32", True)
    assert "does not fit" in tight.dtype_choice
    asked = choose_top_k_plan(BIG, 5, 100, roomy, peak, dtype=torch.float32)
    assert (asked.dtype, asked.dtype_choice) == ("float32", "asked")
    with_vectors = choose_top_k_plan(BIG, 5, 100, roomy, peak, return_vectors=True)  # vectors in float32
    assert with_vectors.estimated_peak == peak + (101 + 2) * 2 * vb + 5 * vb


def test_trace_plan_and_a_plan_handed_in():
    op = MatrixOp(decaying_spd(300)[0])
    plan = plan_trace(op, "auto", 90, MemoryBudget(40 * 8 * 300, False), 0)
    assert (plan.chosen, plan.sketch_size, plan.max_hvps, plan.num_params) == ("hutch++", 10, 90, 300)
    assert TracePlan(**json.loads(json.dumps(plan.to_dict()))) == plan and "hutch++" in plan.describe()
    tr = hessian_trace(op, tol=0, max_hvps=90, plan=plan)
    assert tr.settings["memory"] == plan.to_dict() and tr.method == "hutch++" and tr.hvps == 90
    with pytest.raises(ConfigError, match="made for") as e:
        hessian_trace(op, tol=0, max_hvps=60, plan=plan)      # a plan for another call
    one_line(e.value)
    with pytest.raises(ConfigError, match="eigsh"):
        top_eigenvalues(op, k=2, method="eigsh", plan=choose_top_k_plan(op, 2, 30, MemoryBudget.of(None, "cpu")))


def test_the_hvp_count_is_no_longer_called_a_budget():
    """trace.py's ``budget`` was an HVP count beside the memory ``budget``: it is ``max_hvps`` now."""
    for fn in (trace._Counter.__init__, trace._hutchpp, trace._xtrace, spectrum._lanczos_top, spectrum._eigsh):
        params = inspect.signature(fn).parameters
        assert "max_hvps" in params or "max_steps" in params, fn
    assert "budget" not in inspect.signature(trace._Counter.__init__).parameters


def test_a_job_refuses_what_cannot_fit_even_at_its_least_before_any_operator():
    held = memory_in_use("cpu")
    small = MemoryBudget(held + 10 ** 8, False)                   # 100 MB beside what is held: 2.5 float32 vectors
    for job, words in ((SpectrumJob(10 ** 7, "float32", small, top_k=5), "top-5 cannot fit in memory"),
                       (SpectrumJob(10 ** 7, "float32", small, density=True), "the density cannot fit"),
                       (SpectrumJob(10 ** 7, "float32", small, trace=True), "the trace cannot fit"),
                       (SpectrumJob(10, "float32", MemoryBudget(10 ** 6, False), trace=True), "this process holds")):
        with pytest.raises(MemoryBudgetError, match=words) as e:
            job.check()
        one_line(e.value)
    SpectrumJob(10 ** 4, "float32", MemoryBudget(held + 10 ** 9, False), top_k=5, trace=True, density=True).check()


# --- the one planned job of a spectrum run ----------------------------------------------------------------

def count_calls(monkeypatch, calls: dict, where: list) -> None:
    """Count every call of ``module.name`` for each (module, name) in ``where``, by name."""
    for module, name in where:
        real = getattr(module, name)

        def wrapper(*a, _real=real, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*a, **k)
        monkeypatch.setattr(module, name, wrapper)


def test_plan_spectrum_plans_each_part_once_and_the_estimators_run_it(monkeypatch):
    op = MatrixOp(decaying_spd(200)[0])
    budget = MemoryBudget.of(memory_in_use("cpu") + 10 ** 9, "cpu")   # 1 GB beside what this process holds
    job = SpectrumJob(op.num_params, "float64", budget, top_k=3, trace=True,
                      trace_max_hvps=40, density=True, density_probes=1, density_steps=10)
    calls: dict = {}
    count_calls(monkeypatch, calls, [(memory, "time_hvp"), (memory, "choose_top_k_plan"), (memory, "plan_density"),
                                     (memory, "plan_trace"), (spectrum, "choose_top_k_plan"),
                                     (spectrum, "plan_density"), (trace, "plan_trace")])
    plan = plan_spectrum(op, job)
    assert op.hvp_count == 2 and set(plan.parts) == {"top_k", "trace", "density"}
    assert calls == {"time_hvp": 1, "choose_top_k_plan": 1, "plan_density": 1, "plan_trace": 1}
    eig = top_eigenvalues(op, k=3, plan=plan.top_k)
    tr = hessian_trace(op, max_hvps=40, plan=plan.trace)
    rho = spectrum.spectral_density(op, n_probes=1, lanczos_steps=10, plan=plan.density)
    assert calls == {"time_hvp": 1, "choose_top_k_plan": 1, "plan_density": 1, "plan_trace": 1}   # no replanning
    assert eig.settings["memory"] == plan.top_k.to_dict() and tr.settings["memory"] == plan.trace.to_dict()
    assert rho.settings["memory"] == plan.density.to_dict()
    d = plan.to_dict()
    assert d["peak_bytes"] == max(p["estimated_peak"] for p in d["plans"].values()) == plan.peak_bytes
    assert d["hvps_at_most"] == {"top_eigenvalues": 100 + 3, "trace": 40, "density": 10}
    assert d["text"] == plan.describe() and all(p.describe() in d["text"] for p in plan.parts.values())
    with pytest.raises(ConfigError, match="weights"):
        plan_spectrum(MatrixOp(decaying_spd(20)[0]), job)


@pytest.fixture(scope="module")
def mlp_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "mlp.pt"
    cfg = {"model": "mlp", "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(), "method": "standard"}
    save_checkpoint(path, build_model("mlp", "digits", seed=0), cfg, {}, 1)
    return path


def test_the_cli_plans_once_prints_the_plan_and_runs_it(mlp_ckpt, tmp_path, capsys, monkeypatch):
    """One planning per run (no fake operator, no second plan in the estimators), one resolution of the
    budget, and the plan printed is the plan recorded and the plan every estimator ran."""
    calls: dict = {}
    count_calls(monkeypatch, calls, [(spectrum_cli, "plan_spectrum"), (memory, "time_hvp"),
                                     (memory, "choose_top_k_plan"), (memory, "plan_density"), (memory, "plan_trace"),
                                     (spectrum, "choose_top_k_plan"), (spectrum, "plan_density"),
                                     (trace, "plan_trace")])
    resolved = []
    real_of = MemoryBudget.of.__func__

    def of(cls, max_memory, device):
        if not isinstance(max_memory, MemoryBudget):
            resolved.append(max_memory)
        return real_of(cls, max_memory, device)
    monkeypatch.setattr(MemoryBudget, "of", classmethod(of))
    out = tmp_path / "s.json"
    proc = run_main(spectrum_cli.main, [mlp_ckpt, "--top-k", "2", "--trace", "--trace-max-hvps", "30", "--density",
                                        "--density-probes", "1", "--density-steps", "6", "--samples", "16",
                                        "--max-memory", "3GB", "--json", out], capsys)
    assert proc.returncode == 0, proc.stderr
    assert calls == {"plan_spectrum": 1, "time_hvp": 1, "choose_top_k_plan": 1, "plan_density": 1, "plan_trace": 1}
    assert resolved == ["3GB"]
    first = proc.stdout.splitlines()[0]
    d = json.loads(out.read_text())
    est = d["estimate"]
    assert first == "estimate: " + est["text"]
    for part, key, cls in (("top_k", "top_eigenvalues", MemoryPlan), ("trace", "trace", TracePlan),
                           ("density", "density", MemoryPlan)):
        ran = d[key]["settings"]["memory"]
        assert est["plans"][part] == d["memory"][key] == ran, part
        assert cls(**ran).describe() in first, part                 # the printed line says what ran
    assert est["max_memory"] == d["memory"]["max_memory"] == 3 * 10 ** 9 and est["max_memory_default"] is False
    assert d["settings"]["max_memory"] == "3GB"                       # the flag as given
    assert d["operator"]["graph_cache"]["budget_bytes"] == int(GRAPH_SHARE * 3 * 10 ** 9)


def test_the_cli_refuses_before_the_samples_what_cannot_fit(mlp_ckpt, capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the samples were loaded before the refusal")
    monkeypatch.setattr(spectrum_cli, "load_dataset", boom)
    proc = run_main(spectrum_cli.main, [mlp_ckpt, "--top-k", "2", "--max-memory", "1MB"], capsys)
    assert_one_line_error(proc, contains="cannot fit in memory")
    proc = run_main(spectrum_cli.main, [mlp_ckpt, "--top-k", "2", "--max-memory", "8"], capsys)
    assert_one_line_error(proc, contains="did you mean '8GB'")

