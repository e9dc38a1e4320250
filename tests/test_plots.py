"""Every plot kind returns a Figure (no pyplot state) and writes a non-empty, non-blank PNG."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from landscape.analysis import plots  # noqa: E402
from landscape.analysis.surface import SurfaceResult  # noqa: E402
from landscape.errors import LandscapeError  # noqa: E402
from landscape.io import write_json  # noqa: E402


def _surface(dim, shift=0.0, loss="clean", partial=False):
    x = np.linspace(-1, 1, 9)
    y = np.linspace(-1, 1, 7) if dim == 2 else None
    if dim == 2:
        X, Y = np.meshgrid(x, y)
        loss_v = 0.05 + shift + X ** 2 + 3 * Y ** 2
    else:
        loss_v = 0.05 + shift + x ** 2
    acc = np.clip(1 - loss_v / loss_v.max(), 0, 1)
    mask = np.ones(loss_v.shape, dtype=bool)
    if partial:
        mask.reshape(-1)[-5:] = False
        loss_v, acc = np.where(mask, loss_v, np.nan), np.where(mask, acc, np.nan)
    settings = {"loss": loss, "attack": {"eps": 0.1, "mode": "fixed"} if loss != "clean" else None,
                "directions": {"kind": "random"}}
    return SurfaceResult(x, y, loss_v, acc, mask, settings, "h")


class _DiagOp:
    """A diagonal matrix as an operator for the spectrum engine: real spectrum results, cheaply."""
    def __init__(self, d):
        self.d = torch.as_tensor(d, dtype=torch.float64)
        self.num_params, self.device = len(d), torch.device("cpu")

    def matvec(self, v):
        return self.d * v


@pytest.fixture(scope="module")
def spectrum_json(tmp_path_factory):
    from landscape.analysis.spectrum import hessian_trace, spectral_density, top_eigenvalues
    op = _DiagOp(np.r_[np.linspace(-1, 1, 60), [5.0, 8.0, 12.0]])
    d = {"kind": "spectrum", "top_eigenvalues": top_eigenvalues(op, k=3, seed=0).to_dict(),
         "trace": hessian_trace(op, seed=0, max_hvps=30).to_dict(),
         "density": spectral_density(op, n_probes=2, lanczos_steps=20, seed=0).to_dict()}
    p = tmp_path_factory.mktemp("spec") / "spectrum.json"
    write_json(p, d)
    return p


@pytest.fixture
def metrics_csv(tmp_path):
    df = pd.DataFrame({"epoch": [1, 2, 3, 4], "train_loss": [2.0, 1.2, 0.9, 0.7], "val_clean": [0.4, 0.6, 0.7, 0.75],
                       "val_pgd": [0.1, 0.2, 0.3, 0.32], "sharpness": [3.0, np.nan, 8.0, 9.5]})
    p = tmp_path / "metrics.csv"
    df.to_csv(p, index=False)
    return p


def _png_ok(fig, path):
    assert isinstance(fig, Figure)
    fig.savefig(path, dpi=60)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    img = matplotlib.image.imread(path)
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10   # not a blank canvas


def test_every_kind_writes_a_png(tmp_path, spectrum_json, metrics_csv):
    before = plt.get_fignums()
    s1, s2 = _surface(1), _surface(2)
    adv1, adv2 = _surface(1, 0.5, "adversarial"), _surface(2, 0.8, "adversarial")
    figs = {
        "curve": plots.plot_curve([s1, adv1]),
        "contour": plots.plot_contour(s2),
        "contourf": plots.plot_contourf(s2),
        "contourf_acc": plots.plot_contourf(s2, field="accuracy", log=False),
        "surface3d": plots.plot_surface3d(s2),
        "compare": plots.plot_compare([s2, adv2]),
        "compare1d": plots.plot_compare([s1, adv1]),
        "partial": plots.plot_contourf(_surface(2, partial=True)),
        "eigenvalues": plots.plot_eigenvalues([spectrum_json, spectrum_json], labels=["AT", "SAT"]),
        "density": plots.plot_density(spectrum_json),
        "spectrum": plots.plot_spectrum(spectrum_json),
        "sharpness": plots.plot_sharpness(metrics_csv),
        "sharpness_df": plots.plot_sharpness(pd.read_csv(metrics_csv)),
        "training": plots.plot_training(metrics_csv),
    }
    for name, fig in figs.items():
        _png_ok(fig, tmp_path / f"{name}.png")
    assert plt.get_fignums() == before          # nothing registered with pyplot, so nothing to show()


def test_compare_uses_one_colour_scale():
    fig = plots.plot_compare([_surface(2), _surface(2, 5.0, "adversarial")])
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"][:2]
    norms = [a.collections[0].norm for a in axes]
    assert norms[0].vmin == norms[1].vmin and norms[0].vmax == norms[1].vmax
    assert norms[0].vmax >= 5.0 + 4 and norms[0].vmin <= 0.06      # spans both surfaces
    assert sum(1 for a in fig.axes if a.get_label() == "<colorbar>") == 1


def test_plot_result_dispatch(tmp_path, spectrum_json, metrics_csv):
    s2 = _surface(2)
    write_json(tmp_path / "s2.json", s2.to_dict())
    write_json(tmp_path / "s1.json", _surface(1).to_dict())
    assert len(plots.plot_result(tmp_path / "s2.json").axes) == 2            # contourf + colour bar
    assert len(plots.plot_result(tmp_path / "s1.json").axes) == 2            # loss + accuracy axes
    assert plots.plot_result(tmp_path / "s2.json", kind="surface3d").axes[0].name == "3d"
    assert len(plots.plot_result([tmp_path / "s2.json", s2]).axes) == 3      # compare: 2 panels + bar
    assert plots.plot_result(spectrum_json).axes[0].get_title() == "top eigenvalues"
    assert "sharpness" in plots.plot_result(metrics_csv).axes[0].get_title()
    assert plots.plot_result(metrics_csv, kind="training").axes[0].get_title() == "loss"
    with pytest.raises(LandscapeError, match="1D"):
        plots.plot_result(tmp_path / "s1.json", kind="contour")
    with pytest.raises(LandscapeError, match="kind"):
        plots.plot_result(spectrum_json, kind="contour")
    with pytest.raises(LandscapeError, match="not found"):
        plots.plot_result(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(LandscapeError, match="cannot tell"):
        plots.plot_result(tmp_path / "other.json")


def test_assigned_figures_display_once_in_jupyter():
    """Under the inline backend ``fig = plot_x(...)`` shows (once) and is closed after the cell."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    cells = ["%matplotlib inline\nimport numpy as np\nfrom landscape.analysis import plot_curve, SurfaceResult\n"
             "x = np.linspace(-1, 1, 5)\nr = SurfaceResult(x, None, x ** 2, 1 - x ** 2, np.ones(5, bool))",
             "fig = plot_curve(r)", "plot_curve(r);",
             "import matplotlib.pyplot as plt\nprint(plt.get_fignums())"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    for cell in nb.cells[1:3]:
        assert len([o for o in cell.outputs if "image/png" in o.get("data", {})]) == 1
    assert nb.cells[3].outputs[0]["text"].strip() == "[]"
