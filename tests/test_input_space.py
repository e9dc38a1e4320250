"""The input-space landscape (landscape/analysis/input_space.py) against closed forms: a linear model's loss
along its gradient sign, exact input Hessians (a linear softmax model's W^T (diag p - p p^T) W, and a tanh MLP's
through torch.autograd.functional.hessian), and a masked (quantized) model's flat gradient axis."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_one_line_error, run_main
from landscape import AttackSpec
from landscape.analysis.input_space import input_curvature, input_hvp, input_surface
from landscape.attacks import batch_generator
from landscape.errors import ConfigError


def test_linear_model_surface_is_the_closed_form():
    """Two classes, logits (0, w.x + c), label 1: the loss is softplus(-(w.x + c)); the gradient's sign is
    -sign(w), so at x + a eps g + b eps r the margin is m0 - a eps |w|_1 + b eps w.r (no clipping: x in
    [0.4, 0.6], |moves| <= 0.1)."""
    torch.manual_seed(0)
    d = 12
    lin = nn.Linear(d, 1).double()
    model = nn.Sequential(nn.Flatten(), lin)
    two = nn.Sequential(model, _Pad())
    x = (0.4 + 0.2 * torch.rand(5, 1, 3, 4, dtype=torch.float64))
    y = torch.ones(5, dtype=torch.long)
    eps = 0.025
    res = input_surface(two, x, y, AttackSpec(eps=eps), a="-2:2:5", b="-2:2:3", seed=7)
    w, c = lin.weight.detach().flatten(), lin.bias.detach()
    m0 = x.flatten(1) @ w + c
    r = torch.randint(0, 2, x.shape, generator=batch_generator(7, 0)).double() * 2 - 1   # the documented seed
    wr = r.flatten(1) @ w
    for i, a in enumerate(res.a):
        for j, b in enumerate(res.b):
            expect = F.softplus(-(m0 - a * eps * w.abs().sum() + b * eps * wr)).numpy()
            np.testing.assert_allclose(res.loss[:, i, j], expect, rtol=1e-10)
    assert (np.diff(res.mean_loss[:, 1]) > 0).all()          # the loss rises along the gradient
    assert res.zero_gradient.sum() == 0
    at = {a: F.softplus(-(m0 - a * eps * w.abs().sum())).numpy() for a in (0, 1, 2)}
    np.testing.assert_allclose(res.rise_along_gradient(1.0), at[1] - at[0], rtol=1e-10)   # at the budget's edge
    np.testing.assert_allclose(res.rise_along_gradient(), at[2] - at[0], rtol=1e-10)      # at the grid's end
    assert res.to_dict()["rise_within_eps"] == pytest.approx(float(np.mean(at[1] - at[0])), rel=1e-10)


class _Pad(nn.Module):
    def forward(self, z):
        return torch.cat([torch.zeros_like(z), z], 1)


def test_input_curvature_of_a_linear_softmax_model_is_exact():
    torch.manual_seed(1)
    W = torch.randn(4, 10, dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 4, bias=False).double())
    model[1].weight.data.copy_(W)
    x = torch.rand(6, 10, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    top = input_curvature(model, x, y, iters=8)
    for i in range(6):
        p = (W @ x[i]).softmax(0)
        H = W.T @ (torch.diag(p) - torch.outer(p, p)) @ W
        assert top[i] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-9)


def test_input_curvature_and_hvp_of_a_tanh_mlp_match_autograd_hessians():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    v = torch.randn_like(x)
    hv = input_hvp(net, x, y, v)
    top = input_curvature(net, x, y, iters=16)
    for i in range(5):
        H = torch.autograd.functional.hessian(
            lambda xi: F.cross_entropy(net(xi.view(1, 1, 4, 4)), y[i:i + 1]), x[i].flatten())
        torch.testing.assert_close(hv[i].flatten(), H @ v[i].flatten())
        assert top[i] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-7)


def test_a_masked_model_is_flat_along_its_gradient(tiny_cnn):
    """Input quantization (round) has a zero gradient: g = 0 and the a-axis is exactly flat."""
    from landscape import load_dataset

    class Quantized(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(torch.round(x * 4) / 4)
    x, y = load_dataset("digits", "test").tensors(8)
    res = input_surface(Quantized(tiny_cnn).eval(), x, y, AttackSpec(eps=0.1), a="-2:2:5", b="-1:1:3")
    assert res.zero_gradient.all()
    assert np.ptp(res.loss[:, :, 1], axis=1).max() == 0        # flat along a (b = 0)
    assert res.rise_along_gradient().max() == 0
    smooth = input_surface(tiny_cnn, x, y, AttackSpec(eps=0.1), a="-2:2:5", b="-1:1:3")
    assert smooth.zero_gradient.sum() == 0 and smooth.rise_along_gradient().mean() > 0


def test_input_surface_refuses_bad_arguments(tiny_cnn):
    from landscape import load_dataset
    x, y = load_dataset("digits", "test").tensors(4)
    with pytest.raises(ConfigError, match="AttackSpec"):
        input_surface(tiny_cnn, x, y, 0.1)
    with pytest.raises(ConfigError, match="eps > 0"):
        input_surface(tiny_cnn, x, y, AttackSpec(eps=0.0))
    with pytest.raises(ConfigError, match=r"^--curvature-iters: -1 must be in \[0, 10000\]$"):
        input_surface(tiny_cnn, x, y, AttackSpec(eps=0.1), curvature_iters=-1)
    with pytest.raises(ConfigError, match=r"^--curvature-iters: 20000 must be in \[0, 10000\]$"):   # as the CLI
        input_surface(tiny_cnn, x, y, AttackSpec(eps=0.1), curvature_iters=20000)


def test_cli_space_input_writes_json_npz_and_plot(trained_digits, tmp_path, capsys):
    from landscape.cli.plot import main as plot_main
    from landscape.cli.surface import main
    out = tmp_path / "inp"
    proc = run_main(main, [str(trained_digits / "best.pt"), "--space", "input", "--samples", "12", "--x",
                           "-1:1:5", "--y", "-1:1:3", "--curvature-iters", "4", "--out", str(out), "--plot"], capsys)
    assert proc.returncode == 0, proc.stderr
    d = json.loads((out / "input_surface.json").read_text())
    assert d["kind"] == "input_surface" and d["n"] == 12 and len(d["curvature"]["per_sample"]) == 12
    assert np.asarray(d["mean_loss"]).shape == (5, 3) and (out / "input_surface.png").stat().st_size > 0
    with np.load(out / "input_surface.npz") as z:
        assert z["loss"].shape == (12, 5, 3)
    png = tmp_path / "again.png"
    assert run_main(plot_main, [str(out), "--out", str(png)], capsys).returncode == 0 and png.stat().st_size > 0
    # refused: a weight-space option, an existing result without --overwrite
    assert_one_line_error(run_main(main, [str(trained_digits / "best.pt"), "--space", "input", "--directions",
                                          "eigen"], capsys), contains="--directions")
    assert_one_line_error(run_main(main, [str(trained_digits / "best.pt"), "--space", "input", "--samples", "4",
                                          "--out", str(out)], capsys), contains="--overwrite")
