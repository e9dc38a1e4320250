"""Issue 33, classes 2 and 3: models whose outputs are not finite, and broken models in the input-space tools.

Class 2: a model whose logits are NaN or infinite (all of them, one class's, or only some samples') is refused
in one line that counts the samples (``finite.NonFiniteOutputError``), by the API (evaluate, audit, AutoAttack,
the attacks, the weight- and input-space surfaces, the input curvature, the flatness measures) and by the
console scripts (exit 2, one line, no accuracy printed); a model that is finite at its inputs but not at PGD's
iterates or at the input surface's points is refused there; a weight-space grid point where the MOVED model
diverges holds NaN (masked, null in the JSON), while the centre (the model itself) is refused.

Class 3: a model that quantizes (or detaches) its inputs has a zero input gradient: the input-space surface
and curvature give a result (zero curvature, a flat line, the share of zero-gradient samples), PGD does not
crash, and the rise along the gradient comes with its median and that share beside the mean.

The broken models are one class, ``Broken(mode)``, in a helper module written to a temporary folder: the
console scripts load it as a foreign checkpoint (``--arch FILE.py:Broken --arch-kwargs``).
"""
import json

import numpy as np
import pytest
import torch

import landscape as ls
from conftest import assert_one_line_error, run_main
from landscape import AttackSpec
from landscape.analysis.flatness import average_loss_increase, worst_case_loss_increase
from landscape.analysis.input_space import InputSurfaceResult, input_curvature, input_surface
from landscape.analysis.surface import loss_surface
from landscape.attacks import adversarial_examples, pgd, pgd_trace
from landscape.cli.eval import main as eval_main
from landscape.cli.surface import main as surface_main
from landscape.errors import LandscapeError, ModelError
from landscape.finite import NonFiniteOutputError, OutputWatch, check_outputs, nonfinite_rows

BROKEN = '''
import torch
from torch import nn


class Broken(nn.Module):
    """A linear digits classifier whose outputs go wrong as ``mode`` says. ``gate`` (1 x 1, value 1) enters as
    log(gate) = 0: weights moved so that gate <= 0 give -inf or NaN logits (a model that diverges far out)."""

    def __init__(self, mode="ok", num_classes=10):
        super().__init__()
        self.mode = mode
        self.fc = nn.Linear(64, num_classes)
        self.gate = nn.Parameter(torch.ones(1, 1))

    def forward(self, x):
        if self.mode == "quantize":            # the textbook masked model: zero input gradient
            x = torch.round(x * 4) / 4
        if self.mode == "detach":              # no input gradient at all
            x = x.detach()
        flat = x.flatten(1)
        z = self.fc(flat) + torch.log(self.gate).sum()
        col = torch.arange(z.shape[1], device=z.device)
        if self.mode == "nan":
            z = z * float("nan")
        elif self.mode == "posinf":
            z = torch.where(col == 0, float("inf"), z)
        elif self.mode == "neginf":
            z = torch.where(col == 1, float("-inf"), z)
        elif self.mode == "some":              # NaN for the samples whose pixel 20 is bright
            z = torch.where((flat[:, 20] > 0.5).unsqueeze(1), float("nan"), z)
        elif self.mode == "offdata":           # finite on the data (multiples of 1/16), NaN just off it
            z = torch.where(((flat > 0) & (flat < 0.05)).any(1, keepdim=True), float("nan"), z)
        return z
'''

N = 64
BAD_MODES = ["nan", "posinf", "neginf", "some"]


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    path = tmp_path_factory.mktemp("helper") / "broken_models.py"
    path.write_text(BROKEN)
    return f"{path}:Broken"


@pytest.fixture(scope="module")
def data():
    return ls.load_dataset("digits", "test").tensors(N)


def build(arch, mode):
    return ls.build_model(arch, "digits", seed=0, kwargs={"mode": mode}).eval()


def expected_bad(mode, x) -> int:
    """How many of ``x``'s samples the mode makes non-finite at the inputs themselves."""
    return int((x.flatten(1)[:, 20] > 0.5).sum()) if mode == "some" else len(x)


def says_count(e, k, n=N) -> None:
    msg = str(e.value) if hasattr(e, "value") else str(e)
    assert f"not finite for {k} of {n} samples" in msg, msg
    assert "\n" not in msg and "NaN or inf" in msg


# --- the one check ---------------------------------------------------------------------------------------------

def test_the_check_counts_rows_and_is_a_model_error():
    out = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [0.0, float("inf")], [float("-inf"), 2.0]])
    assert nonfinite_rows(out).tolist() == [False, True, True, True]
    with pytest.raises(NonFiniteOutputError) as e:
        check_outputs(out)
    says_count(e, 3, 4)
    assert isinstance(e.value, ModelError) and isinstance(e.value, LandscapeError)
    assert "no accuracy is computed from them" in str(e.value)
    watch = OutputWatch(at="somewhere")
    for part in (out[:2], out[2:], out[:1]):
        watch(part)
    with pytest.raises(NonFiniteOutputError, match="3 of 5 samples somewhere"):
        watch.check()
    first = out[:1]
    assert check_outputs(first) is first


# --- class 2 through the API --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", BAD_MODES)
@pytest.mark.parametrize("attack", [None, AttackSpec(eps=0.1, steps=2)], ids=["clean", "pgd"])
def test_evaluate_refuses_nonfinite_outputs(arch, data, mode, attack):
    """It scored the argmax of NaN (class 0) as an accuracy: 'clean 0.1250'."""
    x, y = data
    with pytest.raises(NonFiniteOutputError) as e:
        ls.evaluate(build(arch, mode), x, y, attack=attack)
    says_count(e, expected_bad(mode, x))
    assert "no accuracy" in str(e.value)


def test_the_count_covers_every_batch(arch, data):
    x, y = data
    with pytest.raises(NonFiniteOutputError) as e:
        ls.evaluate(build(arch, "some"), x, y, batch_size=8)
    says_count(e, expected_bad("some", x))


def test_evaluate_refuses_outputs_that_go_nonfinite_at_pgds_iterates(arch, data):
    x, y = data
    model = build(arch, "offdata")
    assert 0 <= ls.evaluate(model, x, y).clean_acc <= 1      # finite on the data itself
    with pytest.raises(NonFiniteOutputError, match="at PGD's iterates") as e:
        ls.evaluate(model, x, y, attack=AttackSpec(eps=0.1, steps=2))
    assert f"of {N} samples" in str(e.value)


def test_attacks_refuse_nan_logits_where_asked_and_leave_training_to_its_own_check(arch, data):
    x, y = data
    model = build(arch, "nan")
    with pytest.raises(NonFiniteOutputError) as e:
        adversarial_examples(model, x, y, 0.1, steps=2)
    says_count(e, N)
    with pytest.raises(NonFiniteOutputError):
        pgd(model, x, y, 0.1, steps=2, check_finite=True)
    with pytest.raises(NonFiniteOutputError):
        pgd(model, x, y, 0.1, steps=2, restarts=2, check_finite=True)
    with pytest.raises(NonFiniteOutputError):
        pgd_trace(model, x, y, 0.1, steps=2)
    with pytest.raises(NonFiniteOutputError):
        AttackSpec(eps=0.1, steps=2).examples(model, x, y)
    # Training's objectives call pgd unchecked (the trainer's loss check names the last good checkpoint);
    # a NaN gradient then takes no step instead of making the input NaN.
    x_adv = pgd(model, x, y, 0.1, steps=2)
    assert torch.isfinite(x_adv).all() and (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_attacks_refuse_a_model_finite_on_the_data_but_not_at_the_iterates(arch, data):
    x, y = data
    with pytest.raises(NonFiniteOutputError, match="at PGD's iterates"):
        adversarial_examples(build(arch, "offdata"), x, y, 0.1, steps=2, batch_size=32)


@pytest.mark.parametrize("mode", ["nan", "some"])
def test_audit_refuses_before_blaming_randomness_or_a_collapse(arch, data, mode):
    """It called a NaN model 'randomized' or 'collapsed'."""
    x, y = data
    with pytest.raises(NonFiniteOutputError) as e:
        ls.audit(build(arch, mode), x, y, AttackSpec(eps=0.1, steps=2), autoattack=False, noise_draws=1,
                 effort_restarts=1, eot=1, square_queries=10)
    says_count(e, expected_bad(mode, x))


def test_audit_names_a_nonfinite_surrogate_as_the_surrogate(arch, data):
    x, y = data
    with pytest.raises(NonFiniteOutputError, match="surrogate"):
        ls.audit(build(arch, "ok"), x[:16], y[:16], AttackSpec(eps=0.1, steps=2), autoattack=False, noise_draws=1,
                 effort_restarts=1, eot=1, square_queries=10, surrogate=build(arch, "offdata"))


def test_autoattack_refuses_nonfinite_outputs(arch, data):
    pytest.importorskip("pyautoattack")
    from landscape.autoattack import run_autoattack
    x, y = data
    with pytest.raises(NonFiniteOutputError) as e:
        run_autoattack(build(arch, "posinf"), x, y, 0.1)
    says_count(e, N)
    with pytest.raises(NonFiniteOutputError) as e:
        ls.evaluate(build(arch, "nan"), x, y, attack=AttackSpec(eps=0.1), autoattack=True)
    says_count(e, N)


def _gate_direction(model):
    """Moves only ``gate``: theta + a d has gate = 1 - a, so the outputs are -inf at a = 1 and NaN beyond."""
    return {n: (torch.full_like(p, -1.0) if n == "gate" else torch.zeros_like(p))
            for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", BAD_MODES)
def test_weight_surface_refuses_a_nonfinite_centre_before_any_file(arch, data, mode, tmp_path):
    x, y = data
    model = build(arch, mode)
    with pytest.raises(NonFiniteOutputError, match="centre") as e:
        loss_surface(model, (x, y), _gate_direction(model), "-0.5:0.5:3", out=tmp_path / "s")
    says_count(e, expected_bad(mode, x))
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


@pytest.mark.parametrize("loss", ["clean", "reattack"])
def test_weight_surface_points_where_the_moved_model_diverges_are_nan_and_masked(arch, data, loss, tmp_path):
    x, y = data
    model = build(arch, "ok")
    kw = {} if loss == "clean" else {"loss": "adversarial", "adv_mode": "reattack",
                                     "attack": AttackSpec(eps=0.1, steps=1)}
    res = loss_surface(model, (x[:16], y[:16]), _gate_direction(model), "-0.5:2:6", out=tmp_path / "s", **kw)
    a = res.x
    bad = a >= 1 - 1e-9                            # gate = 1 - a <= 0: -inf or NaN logits for every sample
    assert res.mask.all() and np.isnan(res.loss[bad]).all() and np.isnan(res.accuracy[bad]).all()
    assert np.isfinite(res.loss[~bad]).all() and np.isfinite(res.accuracy[~bad]).all()
    d = json.loads((tmp_path / "s" / "surface.json").read_text())
    assert [v is None for v in d["loss"]] == bad.tolist() and d["mask"] == [1] * len(a)
    assert d["center"]["loss"] == pytest.approx(res.loss[1]) and d["min_loss"]["x"] in a[~bad].tolist()
    again = loss_surface(model, (x[:16], y[:16]), _gate_direction(model), "-0.5:2:6", out=tmp_path / "s",
                         resume=True, **kw)                       # computed: nothing is redone on resume
    assert np.array_equal(np.isnan(again.loss), bad)


@pytest.mark.parametrize("mode", BAD_MODES)
def test_input_space_tools_refuse_nonfinite_outputs(arch, data, mode):
    """The curvature ended in linalg.eigh's error."""
    x, y = data
    model = build(arch, mode)
    with pytest.raises(NonFiniteOutputError) as e:
        input_surface(model, x, y, AttackSpec(eps=0.1), "-1:1:3", "-1:1:3")
    says_count(e, expected_bad(mode, x))
    with pytest.raises(NonFiniteOutputError) as e:
        input_curvature(model, x, y, iters=3)
    says_count(e, expected_bad(mode, x))


def test_input_surface_refuses_a_grid_point_where_the_outputs_are_not_finite(arch, data):
    x, y = data
    with pytest.raises(NonFiniteOutputError, match="at the grid point") as e:
        input_surface(build(arch, "offdata"), x, y, AttackSpec(eps=0.1), "-1:1:9", "0:0:1", clip=True)
    assert "surface point" in str(e.value)


@pytest.mark.parametrize("mode", ["nan", "some"])
def test_flatness_refuses_nonfinite_outputs_at_theta(arch, data, mode):
    x, y = data
    for fn in (average_loss_increase, worst_case_loss_increase):
        with pytest.raises(NonFiniteOutputError) as e:
            fn(build(arch, mode), (x, y), radii=[0.1])
        says_count(e, expected_bad(mode, x))


def test_flatness_names_the_perturbed_point_where_outputs_stop_being_finite(arch, data):
    x, y = data
    model = build(arch, "ok")   # the gate row (norm 1) moves by the radius: at r = 2 one side has gate <= -1
    with pytest.raises(NonFiniteOutputError, match=r"at theta [+-] 2 d_0"):
        average_loss_increase(model, (x, y), radii=[2.0], directions=1)
    with pytest.raises(NonFiniteOutputError, match="ascent step 0 within radius 2"):   # the 3rd start: gate -1
        worst_case_loss_increase(model, (x, y), radii=[2.0], steps=2, restarts=3)


# --- class 2 through the console scripts ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(arch, tmp_path_factory):
    """One saved checkpoint per mode (finite weights: the outputs go wrong in forward), and the --arch
    arguments that load it."""
    from landscape.checkpoint import save_checkpoint
    from landscape.data import dataset_info
    folder = tmp_path_factory.mktemp("ckpts")
    out = {}
    for mode in [*BAD_MODES, "ok", "offdata", "quantize", "detach"]:
        cfg = {"model": arch, "dataset": "digits", "dataset_info": dataset_info("digits").to_dict(),
               "arch_kwargs": {"mode": mode}}
        path = save_checkpoint(folder / f"{mode}.pt", build(arch, mode), cfg, epoch=1)
        out[mode] = [path, "--arch", arch, "--arch-kwargs", json.dumps({"mode": mode}), "--dataset", "digits"]
    return out


def no_accuracy_printed(proc) -> None:
    estimate = [ln for ln in proc.stdout.splitlines() if ln.startswith("landscape-eval: estimated")]
    text = "\n".join(ln for ln in proc.stdout.splitlines() if ln not in estimate) + proc.stderr
    assert "clean " not in text.replace("clean accuracy", "") and "PGD-" not in text, text
    assert all(ln.startswith("landscape-eval: estimated") for ln in proc.stdout.splitlines()), proc.stdout


@pytest.mark.parametrize("mode", BAD_MODES)
@pytest.mark.parametrize("extra", [[], ["--audit", "--no-autoattack", "--steps", "2", "--square-queries", "10"]],
                         ids=["eval", "audit"])
def test_eval_cli_refuses_nonfinite_outputs_in_one_line(checkpoints, data, mode, extra, capsys):
    x, _ = data
    proc = run_main(eval_main, [*checkpoints[mode], "--eps", "0.1", "--samples", str(N), *extra], capsys)
    assert_one_line_error(proc, contains=f"not finite for {expected_bad(mode, x)} of {N} samples")
    no_accuracy_printed(proc)
    assert "randomized" not in proc.stderr and "collapsed" not in proc.stderr


def test_eval_cli_refuses_outputs_nonfinite_at_pgds_iterates(checkpoints, capsys):
    proc = run_main(eval_main, [*checkpoints["offdata"], "--eps", "0.1", "--steps", "2", "--samples", str(N)], capsys)
    assert_one_line_error(proc, contains="at PGD's iterates")
    no_accuracy_printed(proc)


@pytest.mark.parametrize("mode", ["nan", "some"])
@pytest.mark.parametrize("space", ["weights", "input"])
def test_surface_cli_refuses_nonfinite_outputs_in_one_line(checkpoints, data, mode, space, tmp_path, capsys):
    x, _ = data
    args = ["--space", space, "--eps", "0.1", "--samples", str(N), "--x=-1:1:3", "--out", tmp_path / "s"]
    args += ["--y=-1:1:3", "--curvature-iters", "2"] if space == "input" else ["--dim", "1"]
    proc = run_main(surface_main, [*checkpoints[mode], *args], capsys)
    assert_one_line_error(proc, contains=f"not finite for {expected_bad(mode, x)} of {N} samples")
    assert not proc.stdout.strip()
    assert not (tmp_path / "s" / "surface.json").exists() and not (tmp_path / "s" / "input_surface.json").exists()


def test_surface_cli_masks_points_where_the_moved_model_diverges(checkpoints, tmp_path, capsys):
    """A random direction moves the gate (1 x 1, filter norm 1) by +-1 per unit: one side of +-1.5 diverges."""
    proc = run_main(surface_main, [*checkpoints["ok"], "--dim", "1", "--x=-1.5:1.5:7", "--samples", "16",
                                   "--out", tmp_path / "s"], capsys)
    assert proc.returncode == 0, proc.stderr
    d = json.loads((tmp_path / "s" / "surface.json").read_text())
    nulls = [i for i, v in enumerate(d["loss"]) if v is None]
    assert nulls and set(nulls) <= {0, 1, 5, 6} and d["mask"] == [1] * 7 and d["loss"][3] is not None
    assert all(d["accuracy"][i] is None for i in nulls)
    assert "nan" not in proc.stdout.lower()


# --- class 3: broken models in the input-space tools --------------------------------------------------------------

@pytest.mark.parametrize("mode", ["quantize", "detach"])
def test_a_model_without_an_input_gradient_gives_a_flat_surface_and_zero_curvature(arch, data, mode):
    """It ended in 'element 0 of tensors does not require grad'."""
    x, y = data
    res = input_surface(build(arch, mode), x, y, AttackSpec(eps=0.1), "-1:1:5", "-1:1:3", curvature_iters=4)
    assert res.zero_gradient.all()
    assert np.array_equal(res.curvature, np.zeros(N))
    assert np.allclose(res.rise_along_gradient(), 0) and np.allclose(res.rise_along_gradient(1.0), 0)
    d = res.to_dict()
    assert d["zero_gradient_share"] == 1.0 and d["zero_gradient_samples"] == N
    assert d["rise_within_eps_median"] == 0 and d["rise"]["within_eps"]["mean_without_zero_gradients"] is None
    assert d["curvature"]["median"] == 0 and d["curvature"]["max"] == 0 and d["curvature"]["nonfinite_samples"] == 0
    assert f"{N} of {N} samples (100%) with a zero or non-finite input gradient" in d["summary"]
    json.dumps(d, allow_nan=False)
    assert np.array_equal(input_curvature(build(arch, mode), x, y, iters=3), np.zeros(N))


@pytest.mark.parametrize("mode", ["quantize", "detach"])
def test_pgd_and_evaluate_on_a_model_without_an_input_gradient(arch, data, mode):
    x, y = data
    model = build(arch, mode)
    res = ls.evaluate(model, x, y, attack=AttackSpec(eps=0.1, steps=2))
    assert 0 <= res.pgd_acc <= 1
    from landscape.attacks import input_gradient
    grad, _, dead = input_gradient(model, x, y)
    assert dead.all() and not grad.any()


def test_the_rise_of_a_masked_model_is_not_one_samples_mean():
    """63 zero gradients and one steep sample: a mean of 388.5 said the loss rises; the median and the share say
    that 63 of 64 samples are flat."""
    a, b = np.linspace(-2, 2, 5), np.linspace(-1, 1, 3)
    loss = np.ones((64, 5, 3))
    loss[0, :, :] = 1 + np.abs(a)[:, None] * 388.5 * 64 / 2   # rises by 388.5 * 64 at a = 2, half that at 1
    zero = np.ones(64, dtype=bool)
    zero[0] = False
    res = InputSurfaceResult(a, b, loss, np.ones((64, 5, 3), dtype=bool), AttackSpec(eps=0.1), 0, zero,
                             np.zeros(64))
    d = res.to_dict()
    assert d["rise_along_gradient"] == pytest.approx(388.5) and d["rise_along_gradient_median"] == 0
    assert d["rise_within_eps"] == pytest.approx(388.5 / 2) and d["rise_within_eps_median"] == 0
    assert d["zero_gradient_share"] == pytest.approx(63 / 64)
    assert d["rise"]["within_eps"]["mean_without_zero_gradients"] == pytest.approx(388.5 * 32)
    assert "median 0," in d["summary"] and "63 of 64 samples (98%)" in d["summary"]


def test_surface_cli_draws_the_input_space_of_a_quantizing_model(checkpoints, tmp_path, capsys):
    proc = run_main(surface_main, [*checkpoints["quantize"], "--space", "input", "--eps", "0.1", "--samples", "16",
                                   "--x=-1:1:5", "--y=-1:1:3", "--curvature-iters", "3", "--out", tmp_path / "i"],
                    capsys)
    assert proc.returncode == 0, proc.stderr
    d = json.loads((tmp_path / "i" / "input_surface.json").read_text())
    assert d["zero_gradient_share"] == 1.0 and d["curvature"]["max"] == 0 and d["rise_within_eps_median"] == 0
    assert "16 zero gradients" in proc.stdout or "16 of 16" in proc.stdout


def test_input_curvature_refuses_a_nonfinite_hessian_with_finite_logits(data):
    """Finite logits but NaN second derivatives (sqrt at the zero pixels): one line counting the samples, never
    eigh's error or a NaN eigenvalue; the surface without curvature still works."""
    x, y = data

    class Sqrt(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(torch.sqrt(x.flatten(1)))
    with pytest.raises(NonFiniteOutputError, match="input Hessian is not finite for 8 of 8 samples"):
        input_curvature(Sqrt(), x[:8], y[:8], iters=3)
    with pytest.raises(NonFiniteOutputError, match="curvature-iters 0"):
        input_surface(Sqrt(), x[:8], y[:8], AttackSpec(eps=0.1), "-1:1:3", "0:0:1", curvature_iters=2)
    res = input_surface(Sqrt(), x[:8], y[:8], AttackSpec(eps=0.1), "-1:1:3", "0:0:1")
    assert res.zero_gradient.all() and res.to_dict()["zero_gradient_share"] == 1.0   # NaN gradients: dead


def test_a_hand_made_result_with_nan_curvature_counts_it():
    c = np.array([1.0, np.nan, 3.0])
    res = InputSurfaceResult(np.array([0.0]), np.array([0.0]), np.zeros((3, 1, 1)), np.ones((3, 1, 1), dtype=bool),
                             AttackSpec(eps=0.1), 0, np.zeros(3, dtype=bool), c)
    d = res.to_dict()
    assert d["curvature"]["nonfinite_samples"] == 1 and d["curvature"]["median"] == 2.0
    json.dumps(d, allow_nan=False)
