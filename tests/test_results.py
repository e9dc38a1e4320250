"""landscape.results: reading a result (file, folder, dict, object), its kind, what it says about itself
(``describe`` / ``measurement`` / ``caption``), the spectrum result's layout and the trace's interval.

The results are real ones, made once per module by the Python API on a tiny MLP and 32 digits."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from landscape import AttackSpec, audit, build_model, evaluate, load_dataset
from landscape.analysis import (HessianOperator, average_loss_increase, hessian_trace, input_surface, loss_surface,
                                random_directions, spectral_density, top_eigenvalues)
from landscape.errors import LandscapeError
from landscape.io import write_json
from landscape.names import INPUT_SURFACE_FILES, folder_result
from landscape.results import (RESULT_KINDS, SPECTRUM_PARTS, SpectrumResult, caption, describe, format_trace,
                               load_result, measurement, result_kind, result_run, spectrum_parts, trace_interval)
from landscape.training import TrainConfig, TrainResult

CHECKPOINT = "runs/at-digits-eps0.1-s0/best.pt"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One real result of every kind (``RESULT_KINDS``), with the folders the surfaces were saved in."""
    tmp = tmp_path_factory.mktemp("results")
    model = build_model("mlp", "digits", seed=0)
    x, y = load_dataset("digits", "test").tensors(32)
    op = HessianOperator(model, (x, y))
    eig = top_eigenvalues(op, k=2, max_hvps=40)
    tr = hessian_trace(op, method="hutchinson", max_hvps=12, min_probes=2)
    dens = spectral_density(op, n_probes=2, lanczos_steps=20, grid_points=50)
    surface_dir = tmp / "surface"
    surf = loss_surface(model, (x, y), random_directions(model, 2, seed=0), "-1:1:3", "-1:1:3", out=surface_dir)
    ins = input_surface(model, x, y, AttackSpec(eps=0.1), a="-1:1:3", b="-1:1:3")
    input_dir = tmp / "input"
    ins.save(input_dir, checkpoint=CHECKPOINT)
    spectrum = SpectrumResult({"top_eigenvalues": eig.to_dict(), "trace": tr.to_dict(), "density": dens.to_dict()},
                              context={"checkpoint": CHECKPOINT, "model": "mlp", "dataset": "digits",
                                       "split": "test", "num_samples": 32},
                              seconds={"setup": 0.5})
    history = [{"epoch": 1, "val_clean": 0.5, "val_pgd": 0.1}, {"epoch": 2, "val_clean": 0.6, "val_pgd": 0.2}]
    results = {
        "surface": surf,
        "spectrum": spectrum,
        "eigenvalues": eig,
        "trace": tr,
        "density": dens,
        "evaluation": evaluate(model, x, y, AttackSpec(eps=0.1, steps=3)),
        "training": TrainResult(tmp / "run", history, 2, TrainConfig(method="at", epochs=2)),
        "audit": audit(model, x, y, AttackSpec(eps=0.1, steps=3), autoattack=False, square_queries=10,
                       noise_draws=2, eot=2, effort_restarts=1),
        "input_surface": ins,
        "flatness": average_loss_increase(model, (x, y), radii=(0.05, 0.1), directions=2),
    }
    return {"results": results, "surface_dir": surface_dir, "input_dir": input_dir, "tmp": tmp}


# --- load_result -------------------------------------------------------------------------------------------

def test_load_result_reads_a_json_file(made, tmp_path):
    d = made["results"]["evaluation"].to_dict()
    write_json(tmp_path / "eval.json", d)
    got = load_result(tmp_path / "eval.json")
    assert got == json.loads(json.dumps(d))
    assert load_result(str(tmp_path / "eval.json")) == got        # a str path as well as a Path
    assert got["kind"] == "evaluation" and got["n"] == 32


def test_load_result_passes_dicts_through_and_calls_to_dict(made):
    d = {"kind": "trace", "estimate": 3.0}
    assert load_result(d) is d
    tr = made["results"]["trace"]
    got = load_result(tr)
    assert got["kind"] == "trace" and got["estimate"] == tr.estimate and got["hvps"] == tr.hvps
    assert load_result([1, 2]) == [1, 2]                                  # anything else: as it is


def test_load_result_of_an_input_surface_folder_is_its_json(made):
    folder = made["input_dir"]
    assert folder_result(folder) == folder / INPUT_SURFACE_FILES[0]
    d = load_result(folder)
    assert d["kind"] == "input_surface"
    assert d["checkpoint"] == CHECKPOINT                                  # the meta saved with it
    assert d == load_result(folder / INPUT_SURFACE_FILES[0])
    assert d["a"] == [-1.0, 0.0, 1.0] and d["n"] == 32


def test_load_result_of_a_surface_folder_is_its_surface(made):
    folder = made["surface_dir"]
    assert folder_result(folder) == folder
    assert load_result(folder)["kind"] == "surface"


def _one_line_error(call, *words):
    with pytest.raises(LandscapeError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_load_result_missing_and_non_json_files_are_one_line_errors(tmp_path):
    _one_line_error(lambda: load_result(tmp_path / "nope.json"), "result file not found", "nope.json")
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: load_result(tmp_path / "empty"), "result file not found")   # a folder of no result
    bad = tmp_path / "bad.json"
    bad.write_text("this is {not json\nat all\n")
    _one_line_error(lambda: load_result(bad), "bad.json", "is not a JSON result file")
    binary = tmp_path / "weights.json"
    binary.write_bytes(b"\x80\x02\xff\x00\x13")
    _one_line_error(lambda: load_result(binary), "is not a JSON result file")


# --- result_kind -------------------------------------------------------------------------------------------

def test_every_kind_has_a_result_here(made):
    assert set(made["results"]) == set(RESULT_KINDS)


@pytest.mark.parametrize("kind", RESULT_KINDS)
def test_result_kind_of_the_object_its_dict_and_its_file(made, kind, tmp_path):
    obj = made["results"][kind]
    assert result_kind(obj) == kind
    d = obj.to_dict()
    assert result_kind(d) == kind
    write_json(tmp_path / "r.json", d)
    assert result_kind(tmp_path / "r.json") == kind


def test_result_kind_of_folders_and_their_files(made, tmp_path):
    surf, ins = made["surface_dir"], made["input_dir"]
    assert result_kind(surf) == "surface"
    assert result_kind(surf / "surface.json") == "surface"
    assert result_kind(surf / "surface.npz") == "surface"
    assert result_kind(ins) == "input_surface"
    assert result_kind(ins / "input_surface.json") == "input_surface"
    assert result_kind(ins / "input_surface.npz") == "input_surface"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,val_clean\n1,0.5\n")
    assert result_kind(run) == "training"
    assert result_kind(run / "metrics.csv") == "training"
    assert result_kind(pd.DataFrame({"epoch": [1]})) == "training"
    (tmp_path / "nothing").mkdir()
    _one_line_error(lambda: result_kind(tmp_path / "nothing"), "without surface.json or metrics.csv")


@pytest.mark.parametrize("d,kind", [
    ({"x": [0.0, 1.0], "loss": [1.0, 2.0]}, "surface"),
    ({"audit": {"checks": []}}, "audit"),
    ({"history": [{"epoch": 1}]}, "training"),
    ({"top_eigenvalues": [3.0, 2.0], "trace": 10.0}, "spectrum"),
    ({"eigenvalues": [3.0, 2.0]}, "eigenvalues"),
    ({"grid": [0.0, 1.0], "density": [0.5, 0.5]}, "density"),
    ({"trace": {"estimate": 4.0}}, "trace"),
    ({"clean_acc": 0.9, "pgd_acc": 0.4}, "evaluation"),
    ({"kind": "flatness"}, "flatness"),                       # a kind field is taken as it is
])
def test_result_kind_of_older_files_by_their_keys(d, kind):
    assert result_kind(d) == kind


def test_result_kind_refuses_what_is_no_result():
    _one_line_error(lambda: result_kind({"hello": 1}), "cannot tell what this result is")
    _one_line_error(lambda: result_kind([1, 2, 3]), "cannot tell what this result is")


# --- describe, measurement, caption -------------------------------------------------------------------------

def test_describe_and_measurement_of_an_evaluation(made):
    ev = made["results"]["evaluation"]
    info = describe(ev)
    assert info["eps"] == 0.1 and info["n"] == 32
    assert info["run"] is None and info["name"] == "" and info["loss"] is None
    m = measurement(ev)
    assert m["eps"] == 0.1 and m["norm"] == "linf" and m["steps"] == 3 and m["restarts"] == 1
    assert m["step_size"] == pytest.approx(2.5 * 0.1 / 3)               # the default step rule
    assert m["samples"] == 32 and m["bn"] == "eval"
    assert m["run"] is None and m["checkpoint"] is None and m["dataset"] is None
    assert measurement(ev) == measurement(ev.to_dict())                 # the object as its dict


def test_describe_and_measurement_of_a_clean_hessian_result(made):
    eig = made["results"]["eigenvalues"]
    info = describe(eig)
    assert info["loss"] == "clean" and info["n"] == 32 and info["eps"] is None
    assert info["method"] is None                 # "lanczos" is an estimator, not a training method
    m = measurement(eig)
    assert m["loss"] == "clean" and m["bn"] == "running" and m["samples"] == 32
    assert all(m[k] is None for k in ("eps", "norm", "steps", "restarts", "step_size"))   # no attack
    assert caption(info) == "clean loss, n = 32"


def test_describe_names_the_run_of_the_checkpoint(made):
    d = made["results"]["spectrum"].to_dict()
    info = describe(d)
    assert info["run"] == "at-digits-eps0.1-s0"
    assert info["name"] == "AT" and info["method"] == "at"
    assert info["dataset"] == "digits" and info["model"] == "mlp" and info["n"] == 32
    m = measurement(d)
    assert m["checkpoint"] == "best.pt" and m["run"] == "at-digits-eps0.1-s0"
    assert m["model"] == "mlp" and m["dataset"] == "digits" and m["split"] == "test"
    assert caption(info) == "clean loss, n = 32, digits"
    ins = describe(load_result(made["input_dir"]))
    assert ins["name"] == "AT" and ins["eps"] == 0.1 and ins["n"] == 32


def test_result_run_of_a_study_cell_is_the_cell():
    assert result_run({"checkpoint": "study/cells/p-sat-eps0.1-s0/train/best.pt"}) == "p-sat-eps0.1-s0"
    assert result_run({"run": "mine", "checkpoint": CHECKPOINT}) == "mine"
    assert result_run({}) is None


def test_caption():
    info = {"loss": "adversarial", "eps": 0.3, "n": 512, "dataset": "fashion-mnist"}
    assert caption(info) == "adversarial loss (ε = 0.3), n = 512, fashion-mnist"
    assert caption(info, noun="accuracy") == "adversarial accuracy (ε = 0.3), n = 512, fashion-mnist"
    assert caption(info, with_eps=False) == "adversarial loss, n = 512, fashion-mnist"
    assert caption({"loss": "clean", "n": None}) == "clean loss"
    assert caption({}) == ""


# --- the spectrum result and the trace interval -------------------------------------------------------------

def test_spectrum_result_layout(made):
    sp = made["results"]["spectrum"]
    eig, tr, dens = (made["results"][k] for k in ("eigenvalues", "trace", "density"))
    d = sp.to_dict()
    assert d["kind"] == "spectrum"
    assert d["eigenvalues"] == d["top_eigenvalues"] == eig.to_dict()
    assert d["hvps"] == {"top_eigenvalues": eig.hvps, "trace": tr.hvps, "density": dens.hvps,
                         "total": eig.hvps + tr.hvps + dens.hvps}
    assert d["seconds"] == {"setup": 0.5, "top_eigenvalues": eig.seconds, "trace": tr.seconds,
                            "density": dens.seconds}
    assert d["checkpoint"] == CHECKPOINT and d["num_samples"] == 32
    e, de, t = spectrum_parts(d)
    assert e["values"] == pytest.approx(list(eig.values)) and e["converged"] == list(map(bool, eig.converged))
    assert t == {"estimate": tr.estimate, "half_width_95": pytest.approx(tr.half_width)}
    assert de["grid"] == pytest.approx(list(dens.grid)) and len(de["density"]) == 50


def test_spectrum_result_round_trips_through_its_dict_and_file(made, tmp_path):
    d = made["results"]["spectrum"].to_dict()
    back = SpectrumResult.from_dict(d)
    assert set(back.parts) == set(SPECTRUM_PARTS)
    assert back.context == {"checkpoint": CHECKPOINT, "model": "mlp", "dataset": "digits", "split": "test",
                            "num_samples": 32}
    assert back.to_dict() == d
    write_json(tmp_path / "spectrum.json", d)
    from_file = SpectrumResult.from_dict(tmp_path / "spectrum.json")
    assert from_file.to_dict() == json.loads(json.dumps(d))
    assert from_file.hvps["total"] == d["hvps"]["total"]


def test_spectrum_result_refuses_unknown_parts_and_non_objects():
    _one_line_error(lambda: SpectrumResult({"trace": {"hvps": 1}, "eigvals": {}}), "unknown spectrum part(s) eigvals")
    _one_line_error(lambda: SpectrumResult.from_dict([1, 2]), "not a spectrum result")


def test_trace_interval_and_format_trace():
    assert trace_interval({"estimate": 72.8, "half_width_95": 3.15}) == {"estimate": 72.8, "half_width_95": 3.15}
    older = trace_interval({"estimate": 10, "stderr": 2.0})                # 1.96 x stderr
    assert older["estimate"] == 10.0 and older["half_width_95"] == pytest.approx(3.92)
    assert trace_interval({"estimate": 5, "stderr": 1.0, "half_width_95": 2.5})["half_width_95"] == 2.5
    assert trace_interval({"estimate": 5}) == {"estimate": 5.0, "half_width_95": None}
    assert format_trace({"estimate": 72.8, "half_width_95": 3.15}) == "72.8 ± 3.15 (95%)"
    assert format_trace({"estimate": 10, "stderr": 2.0}) == "10 ± 3.92 (95%)"
    assert format_trace({"estimate": 1234.5678}) == "1235"


def test_trace_result_reads_as_its_interval(made):
    tr = made["results"]["trace"]
    t = spectrum_parts(tr.to_dict())[2]
    assert t["estimate"] == tr.estimate and t["half_width_95"] == pytest.approx(tr.half_width)
    assert math.isfinite(t["half_width_95"]) and t["half_width_95"] > 0
    assert format_trace(t) == f"{tr.estimate:.4g} ± {tr.half_width:.3g} (95%)"


def test_flatness_result_describes_its_loss_and_samples(made):
    fl = made["results"]["flatness"]
    d = fl.to_dict()
    assert d["radii"] == [0.05, 0.1] and len(d["increase"]) == 2
    assert np.all(np.isfinite(d["increase"]))
    info = describe(fl)
    assert info["loss"] == "clean" and info["n"] == 32


def test_describe_reads_a_result_folder_as_its_result(made):
    """An input surface's folder is the result it holds (not a table of runs): described as that result."""
    folder = made["input_dir"]
    assert describe(folder) == describe(load_result(folder))
    assert describe(folder)["eps"] == 0.1 and describe(folder)["n"] == 32
