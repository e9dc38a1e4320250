"""landscape.precision, the one owner of TF32 and autocast: every analysis runs with TF32 off whatever the
caller set (a ~1e-3 relative floor under each product on a GPU otherwise), and records it; autocast's modes.
On the CPU the flags change no number, so the tests read them from inside the model's forward pass."""
import pytest
import torch
from torch import nn

from landscape import AttackSpec
from landscape.errors import ConfigError
from landscape.precision import autocast, full_float32, grad_scaler, resolve_amp


def _flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


class Spy(nn.Module):
    """A small smooth classifier that records the TF32 flags in force at each forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))
        self.seen: set[tuple[bool, bool]] = set()

    def forward(self, x):
        self.seen.add(_flags())
        return self.net(x)


@pytest.fixture
def tf32_on():
    saved = _flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _data(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_full_float32_sets_and_restores_the_flags(tf32_on):
    with full_float32():
        assert _flags() == (False, False)
        with full_float32(True):
            assert _flags() == (True, True)
        assert _flags() == (False, False)
    assert _flags() == (True, True)
    with pytest.raises(RuntimeError):
        with full_float32():
            raise RuntimeError("boom")
    assert _flags() == (True, True)        # restored after an error too


@pytest.mark.parametrize("analysis", ["input_curvature", "input_surface", "average_loss_increase",
                                      "worst_case_loss_increase", "hvp", "loss_surface"])
def test_every_analysis_runs_with_tf32_off(tf32_on, analysis):
    from landscape.analysis import (HessianOperator, average_loss_increase, input_curvature, input_surface,
                                    loss_surface, random_directions, worst_case_loss_increase)
    m, (x, y) = Spy(), _data()
    if analysis == "input_curvature":
        input_curvature(m, x, y, iters=3)
    elif analysis == "input_surface":
        r = input_surface(m, x, y, AttackSpec(eps=0.1), a="-1:1:3", b="-1:1:3", curvature_iters=2)
        assert r.to_dict()["settings"]["tf32"] is False
    elif analysis == "average_loss_increase":
        assert average_loss_increase(m, (x, y), [0.05], directions=2).settings["tf32"] is False
    elif analysis == "worst_case_loss_increase":
        assert worst_case_loss_increase(m, (x, y), [0.05], steps=1).settings["tf32"] is False
    elif analysis == "hvp":
        op = HessianOperator(m, (x, y), device="cpu")
        op.matvec(torch.ones(op.num_params))
        assert op.describe()["tf32"] is False
    else:
        loss_surface(m, (x, y), random_directions(m, 1, seed=0), "-1:1:3")
    assert m.seen == {(False, False)}, m.seen
    assert _flags() == (True, True)        # the caller's flags are back


def test_resolve_amp_and_autocast():
    assert resolve_amp("auto", "cpu") == "off"
    assert resolve_amp("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="unknown --amp 'fp8'"):
        resolve_amp("fp8", "cpu")
    with autocast("cpu", "off"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not grad_scaler("cpu", "bf16").is_enabled() and grad_scaler("cpu", "fp16").is_enabled()


def test_device_auto_works_in_the_api_as_on_the_command_line(tmp_path):
    """``device="auto"`` is one rule (landscape.devices) for the CLI and the API: the Trainer, the Hessian
    operator and load_checkpoint take it (the Trainer passed it to torch, which refused it)."""
    from landscape import build_model, load_dataset
    from landscape.training import TrainConfig
    from landscape.analysis import HessianOperator
    from landscape.devices import resolve_device
    from landscape.errors import LandscapeError
    from landscape.training.trainer import Trainer
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None) == auto
    with pytest.raises(LandscapeError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(LandscapeError, match="no CUDA device is available"):
            resolve_device("cuda:0")
    t = Trainer(TrainConfig(method="standard", epochs=1, train_samples=32, val_samples=16), out=tmp_path,
                device="auto", progress=False)
    assert t.device == auto
    m = build_model("mlp", "digits", seed=0)
    data = load_dataset("digits", "test").tensors(8)
    assert HessianOperator(m.to(auto), data, device="auto").device == auto
