"""Every plot kind returns a Figure (no pyplot state) and writes a non-empty, non-blank PNG."""
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cases import DiagOp  # noqa: E402
from landscape import plots, results  # noqa: E402
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


@pytest.fixture(scope="module")
def spectrum_json(tmp_path_factory):
    from landscape.analysis.spectrum import hessian_trace, spectral_density, top_eigenvalues
    op = DiagOp(np.r_[np.linspace(-1, 1, 60), [5.0, 8.0, 12.0]])
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
    cells = ["%matplotlib inline\nimport numpy as np\nfrom landscape.analysis import SurfaceResult\n"
             "from landscape.plots import plot_curve\n"
             "x = np.linspace(-1, 1, 5)\nr = SurfaceResult(x, None, x ** 2, 1 - x ** 2, np.ones(5, bool))",
             "fig = plot_curve(r)", "plot_curve(r);",
             "import matplotlib.pyplot as plt\nprint(plt.get_fignums())"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    for cell in nb.cells[1:3]:
        assert len([o for o in cell.outputs if "image/png" in o.get("data", {})]) == 1
    assert nb.cells[3].outputs[0]["text"].strip() == "[]"


# --- paper-ready figures (issue 13) -------------------------------------------------------------------------

def _texts(fig):
    """Every piece of text in a figure: titles, axis labels, legend entries, tick labels after a draw."""
    fig.canvas.draw()
    return " | ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()).replace("\u00a0", " ")


def _spec(path, loss="adversarial", eps=0.1, checkpoint="runs/at-digits-eps0.1-s0/best.pt", converged=None):
    grid = np.linspace(-1, 12, 400)
    dens = np.exp(-grid ** 2 / 0.02) + 1e-9
    write_json(path, {"kind": "spectrum", "checkpoint": checkpoint, "dataset": "digits", "num_samples": 256,
                      "settings": {"loss": loss, "eps": eps, "samples": 256},
                      "top_eigenvalues": {"values": [11.0, 7.0, 4.0], "converged": converged or [True] * 3},
                      "trace": {"estimate": 40.0, "stderr": 1.0, "half_width_95": 2.2},
                      "density": {"grid": grid.tolist(), "density": dens.tolist()}})
    return path


def test_labels_come_from_settings_not_file_names(tmp_path, monkeypatch):
    """A spectrum JSON in the working folder was labelled '/spec_adv' (its parent's empty name + its stem)."""
    monkeypatch.chdir(tmp_path)
    _spec(tmp_path / "spec_adv.json")
    _spec(tmp_path / "spec_sat.json", checkpoint="runs/p-sat-digits-eps0.1-s0/best.pt")
    text = _texts(plots.plot_density(["spec_adv.json", "spec_sat.json"]))
    assert "spec_adv" not in text and "AT" in text and "P-SAT" in text
    assert "adversarial loss (ε = 0.1), n = 256, digits" in text
    text = _texts(plots.plot_spectrum("spec_adv.json"))
    assert "trace = 40 ± 2.2 (95%)" in text                       # the CLI's convention: 95% half-width
    s = _surface(2)
    assert results.axis_names(s) == ("filter-normalized random dir. 1", "filter-normalized random dir. 2")
    s.settings["directions"] = {"kind": "eigen", "eigenvalues": [13.31, 5.0]}
    assert results.axis_names(s)[0] == "eigvec 1 (λ = 13.3)"
    assert results.describe(_spec(tmp_path / "x.json", checkpoint="runs/h-sat-x/best.pt"))["name"] == "H-SAT-x"


def test_density_floor_and_rug_and_unconverged_markers(tmp_path):
    p = _spec(tmp_path / "s.json", converged=[True, True, False])
    fig = plots.plot_density(p)
    ax = fig.axes[0]
    peak = max(float(np.max(line.get_ydata())) for line in ax.lines)
    assert ax.get_ylim()[0] == pytest.approx(peak * results.DENSITY_FLOOR, rel=0.05)   # not 1e-9 x the peak
    rug = [line for line in ax.lines if line.get_marker() == "|"]
    assert len(rug) == 1 and list(rug[0].get_xdata()) == [11.0, 7.0, 4.0]
    assert "top-k eigenvalues" in _texts(fig)
    fig = plots.plot_eigenvalues(p)
    open_markers = [line for line in fig.axes[0].lines if line.get_markerfacecolor() == "none"]
    assert len(open_markers) == 1 and list(open_markers[0].get_ydata()) == [4.0]
    assert "not converged" in _texts(fig)
    assert all(line.get_linestyle() == "None" for line in fig.axes[0].lines)            # markers, no lines


def test_colour_scale_is_linear_for_a_narrow_range_and_ticks_are_round():
    lv, norm, ticks, is_log = plots.colour_scale(1.0, 2.5, True, 30)
    assert not is_log and type(norm).__name__ == "Normalize"
    lv, norm, ticks, is_log = plots.colour_scale(1.56, 32.7, True, 30)
    assert is_log and list(ticks) == [2, 5, 10, 20]                 # was 1.56, 2.87, 5.28, 9.7, 17.8, 32.7
    fig = plots.plot_contourf(_surface(2, shift=1.0))              # loss in [1.05, 5.05]: log, round ticks
    cb = [a for a in fig.axes if a.get_label() == "<colorbar>"][0]
    labels = [t.get_text() for t in cb.get_yticklabels()]
    assert len(labels) >= 3 and all(float(f"{float(x):.2g}") == float(x) for x in labels), labels   # round


def test_compare_refuses_mismatched_surfaces_and_warns_when_allowed():
    a, b = _surface(2), _surface(2, 0.5)
    b.settings = {**b.settings, "directions": {"kind": "eigen", "eigenvalues": [3.0, 1.0]}}
    with pytest.raises(LandscapeError, match="different direction kinds"):
        plots.plot_compare([a, b])
    with pytest.warns(UserWarning, match="not comparable"):
        plots.plot_compare([a, b], mismatch="warn")
    c = _surface(2)
    c.x = c.x * 2
    with pytest.raises(LandscapeError, match="different grids"):
        plots.plot_compare([a, c])


def test_pca_surface_shows_the_trajectory_and_explained_variance():
    s = _surface(2)
    s.settings["directions"] = {"kind": "pca", "explained_variance_ratio": [0.62, 0.21],
                                "coords": [[0.8, 0.5], [0.5, 0.3], [0.2, 0.1]]}
    fig = plots.plot_contourf(s)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PC 1 (62% of variance)" and ax.get_ylabel() == "PC 2 (21% of variance)"
    path = [line for line in ax.lines if len(line.get_xdata()) == 4]
    assert path and list(path[0].get_xdata()) == [0.8, 0.5, 0.2, 0.0]
    assert "training trajectory" in _texts(fig)


def test_training_curves_have_curriculum_best_epoch_and_integer_ticks(tmp_path):
    df = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "lam": [0.3, 0.6, 0.9, 1.0, 1.0], "eps_t": [0.0, 0.1, 0.2, 0.3, 0.3],
                       "train_loss": [2.0, 1.5, 1.2, 1.1, 1.0], "val_clean": [0.5, 0.6, 0.7, 0.65, 0.66],
                       "val_pgd": [0.1, 0.2, 0.3, 0.25, 0.26]})
    fig = plots.plot_training(df)
    titles = [a.get_title() for a in fig.axes]
    assert titles == ["loss", "accuracy", "curriculum: λ and ε_t"]
    best = [line for line in fig.axes[0].lines if line.get_linestyle() == ":"]
    assert best and best[0].get_xdata()[0] == 3                    # highest val_clean + val_pgd
    text = _texts(fig)
    assert "PGD accuracy (val.)" in text and "val_pgd" not in text and "best epoch" in text
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks and all(re.fullmatch(r"\d+", t.replace("−", "-")) for t in ticks), ticks


def test_paper_style_is_single_column():
    with plots.paper_style():
        fig = plots.plot_eigenvalues([{"top_eigenvalues": {"values": [3.0, 2.0]}}])
    assert fig.get_size_inches()[0] == pytest.approx(3.3 * 6.0 / 6.4, rel=0.01)
    with pytest.raises(LandscapeError, match="style"):
        with plots.paper_style("poster"):
            pass


def test_older_files_without_kind_are_recognised():
    from pathlib import Path
    sat = Path(__file__).resolve().parents[1] / "results" / "sat"
    if not sat.is_dir():
        pytest.skip("results/sat not in this checkout")
    assert results.result_kind(sat / "analysis_at-eps0.3.json") == "spectrum"
    assert results.result_kind(sat / "training_curves.csv") == "training"
    assert results.result_kind(sat / "surface_at-eps0.3") == "surface"
    info = results.describe(sat / "analysis_h-sat-affine-eps0.3.json")
    assert (info["name"], info["eps"], info["loss"], info["n"]) == ("H-SAT-affine", 0.3, "adversarial", 512)
    assert plots.resolve_plot(sat / "training_curves.csv")[0] == "sharpness"


def test_cli_field_accuracy_does_not_overwrite_the_loss_figure(tmp_path, capsys):
    from landscape.cli.plot import main
    folder = tmp_path / "surf"
    folder.mkdir()
    write_json(folder / "surface.json", _surface(2).to_dict())
    assert main([str(folder)]) == 0
    assert main([str(folder), "--field", "accuracy", "--style", "paper", "--dpi", "40"]) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == ["surf-contourf-accuracy.png", "surf-contourf.png"]
    other = tmp_path / "other.json"
    s = _surface(2)
    s.settings["directions"] = {"kind": "pca"}
    write_json(other, s.to_dict())
    capsys.readouterr()
    assert main([str(folder), str(other), "--out", str(tmp_path / "c.pdf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not comparable" in err[0]
    assert main([str(folder), str(other), "--out", str(tmp_path / "c.pdf"), "--allow-mismatch"]) == 0
    assert "warning: the surfaces are not comparable" in capsys.readouterr().err
    assert (tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"


def _legend_labels(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_the_lowest_loss_marker_is_in_the_legend_only_when_drawn():
    at_model = _surface(2)                          # its minimum is the model (the origin)
    assert not any("lowest loss" in t for t in _legend_labels(plots.plot_contour(at_model)))
    assert not any("lowest loss" in t for t in _legend_labels(plots.plot_compare([at_model, _surface(2, 1.0)])))
    off = _surface(2)
    off.loss[0, 0] = -1.0                           # a lower point at a corner of the grid
    assert any("lowest loss" in t for t in _legend_labels(plots.plot_contour(off)))
    assert any("lowest loss" in t for t in _legend_labels(plots.plot_compare([at_model, off])))
