"""landscape-report: a page built from small results renders its figures in a real headless browser.

The browser is Debian's ``chromium`` (``make test`` installs it as root when missing); without it the
browser test skips. ``LANDSCAPE_REPORT_SCREENSHOT=PATH`` keeps the screenshot (docs/report_screenshot.png).
"""
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from landscape.analysis.surface import SurfaceResult
from landscape.io import write_json

pytest.importorskip("plotly")

from landscape import report  # noqa: E402
from landscape.cli.report import main  # noqa: E402


def _run(root, name, method, eps, sharp, shift, curriculum):
    """A run folder as the trainer and the analysis CLIs leave it (small, made up numbers)."""
    run = root / name
    (run / "surfaces" / "best-eigen-adversarial-2d").mkdir(parents=True)
    write_json(run / "config.json", {"model": "cnn-small", "dataset": "digits", "method": method, "eps": eps})
    epochs = np.arange(1, 7)
    lam = np.minimum(1.0, 0.3 + 0.2 * epochs) if curriculum else np.ones(6)
    pd.DataFrame({"epoch": epochs, "lr": 0.05, "lam": lam, "eps_t": eps * lam, "train_loss": 2.0 / epochs + shift,
                  "train_acc": 0.5 + 0.05 * epochs, "val_clean": 0.6 - shift + 0.04 * epochs - 0.1 * (epochs == 6),
                  "val_pgd": 0.2 + 0.03 * epochs, "sharpness": sharp * (1 + 0.1 * epochs)}).to_csv(
        run / "metrics.csv", index=False)
    x = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(x, x)
    loss = 0.3 + shift + sharp * X ** 2 + 0.5 * sharp * Y ** 2
    settings = {"loss": "adversarial", "attack": {"eps": eps, "mode": "fixed"}, "samples": 64,
                "directions": {"kind": "eigen", "eigenvalues": [sharp * 2, sharp]},
                "info": {"checkpoint": str(run / "best.pt"), "method": method}}
    sr = SurfaceResult(x, x, loss, np.clip(1 - loss / loss.max(), 0, 1), np.ones_like(loss, bool), settings)
    write_json(run / "surfaces" / "best-eigen-adversarial-2d" / "surface.json", sr.to_dict())
    grid = np.linspace(-1, sharp * 2.5, 300)
    dens = np.exp(-grid ** 2 / 0.02) + 1e-4 * np.exp(-(grid - sharp * 2) ** 2 / 0.05)
    write_json(run / "spectrum.json", {
        "kind": "spectrum", "checkpoint": str(run / "best.pt"), "dataset": "digits", "num_samples": 64,
        "settings": {"loss": "adversarial", "eps": eps, "samples": 64},
        "eigenvalues": {"values": [sharp * 2, sharp, sharp / 2], "converged": [True, True, False]},
        "trace": {"estimate": 10 * sharp, "stderr": 0.4, "half_width_95": 0.9},
        "density": {"grid": grid.tolist(), "density": (dens / np.trapezoid(dens, grid)).tolist()}})
    write_json(run / "eval.json", {"kind": "evaluation", "n": 200, "clean_acc": 0.81 - shift, "pgd_acc": 0.42,
                                   "autoattack_acc": 0.39, "eps": eps, "checkpoint": str(run / "best.pt")})
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [_run(root, "at-digits-eps0.1-s0", "at", 0.1, 3.0, 0.2, False),
            _run(root, "p-sat-digits-eps0.1-s0", "p-sat", 0.1, 1.5, 0.0, True)]


def test_collect_groups_each_runs_results(runs):
    entries = report.collect(runs)
    assert [e.label for e in entries] == ["AT", "P-SAT"]          # from the settings, not the folder names
    at = entries[0]
    assert len(at.surfaces) == 1 and len(at.metrics) == 1
    assert at.evaluation == {"clean": pytest.approx(0.61), "pgd": 0.42, "autoattack": 0.39, "n": 200,
                             "clean_n": 200, "pgd_n": 200, "autoattack_n": 200}   # each with its sample count
    assert at.eigen["converged"] == [True, True, False] and at.trace["half_width_95"] == 0.9
    assert at.info["best_epoch"] == 5                             # highest val_clean + val_pgd (epoch 6 dips)
    html = report.table_html(entries)
    assert "61.0%" in html and "39.0%" in html and "30 ± 0.9 (95%)" in html and "method p-sat" in html


def test_cli_refuses_a_non_html_name_and_missing_paths(runs, tmp_path, capsys):
    assert main([str(runs[0]), "--out", str(tmp_path / "r.png")]) == 2
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("landscape-report: error:") for line in err)


class _Tags(HTMLParser):
    """Counts the page's real <script> elements (their contents are not parsed as tags) and external ones."""
    def __init__(self):
        super().__init__()
        self.scripts, self.external = 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if (tag == "script" and attrs.get("src")) or (tag == "link" and attrs.get("href")):
            self.external.append(attrs)


def _render(page, shot):
    """Open ``page`` in headless chromium, let its scripts run (5 s of virtual time), save a screenshot to
    ``shot`` and return the DOM as it then is (script bodies removed). One browser start: ~5 s idle, more
    on a loaded machine."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (make test installs it as root)")
    cmd = [exe, "--headless", "--no-sandbox", "--hide-scrollbars", "--mute-audio", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-extensions",
           "--disable-sync", "--no-default-browser-check", "--window-size=1300,2600",
           "--virtual-time-budget=5000", f"--screenshot={shot}", "--dump-dom", page.as_uri()]
    for attempt in range(2):   # a rare stall of the browser itself: try once more
        try:
            dom = subprocess.run(cmd, capture_output=True, text=True, timeout=150).stdout
            break
        except subprocess.TimeoutExpired:
            if attempt:
                raise
    return re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)


def test_report_renders_in_a_headless_browser(runs, tmp_path):
    out = tmp_path / "report.html"
    assert main([*map(str, runs), "--out", str(out), "--title", "AT vs P-SAT"]) == 0
    page = out.read_text(encoding="utf-8")
    tags = _Tags()
    tags.feed(page)
    assert tags.scripts >= 2 and tags.external == []                 # self-contained: works offline
    assert len(page) > 3_000_000                                      # plotly.js is embedded

    shot = tmp_path / "shot.png"
    dom = _render(out, shot)
    keep = os.environ.get("LANDSCAPE_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    assert "AT vs P-SAT" in dom and "P-SAT" in dom
    # figures that plotly drew (not merely the divs in the file): its SVG layers, one main-svg per figure
    # and per 3D scene, and the 3D scenes became WebGL canvases
    assert dom.count('class="main-svg"') >= 3, dom[-2000:]
    assert len(re.findall(r'<div[^>]*class="gl-container"', dom)) >= 2
    assert len(re.findall(r"<canvas", dom)) >= 2
    assert "WebGL is not supported" not in dom
    for title in ("top Hessian eigenvalues", "eigenvalue density", "curriculum", "sharpness"):
        assert title in dom

    import matplotlib.image
    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[0] == 2600 and img.shape[1] == 1300
    colours = np.unique((img.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    not_white = (img < 0.95).any(axis=-1).mean()
    assert len(colours) > 500 and not_white > 0.02, (len(colours), not_white)   # figures, not a blank page
    # the surface panels (first figure) hold viridis colours: a 3D scene was painted, not just its axes
    viridis_purple = ((img[..., 0] < 0.35) & (img[..., 1] < 0.25) & (img[..., 2] > 0.3)).sum()
    assert viridis_purple > 2000, viridis_purple


def test_report_shows_audit_verdict_input_curvature_and_every_n(tmp_path):
    """An audit (AutoAttack on 40 samples), an evaluation (PGD on 359) and an input-space surface of one run:
    one row with the verdict and the flagged check, every accuracy with its own n, and the curvature."""
    run = tmp_path / "at-digits-eps0.1-s0"
    (run / "surfaces" / "best-input-2d").mkdir(parents=True)
    write_json(run / "config.json", {"model": "cnn-small", "dataset": "digits", "method": "at", "eps": 0.1})
    ck = str(run / "best.pt")
    write_json(run / "eval_audit.json", {   # read after eval.json
        "kind": "audit", "settings": {"samples": 40, "attack": {"eps": 0.1}}, "checkpoint": ck, "n": 40,
        "clean_acc": 0.9, "pgd_acc": 0.6, "autoattack_acc": 0.45, "robust_acc": 0.45,
        "audit": {"verdict": "suspect", "checks": [
            {"name": "black_box", "passed": False, "evidence": {}, "advice": "x"},
            {"name": "gradients", "passed": True, "evidence": {}, "advice": "y"}]}})
    write_json(run / "eval.json", {"kind": "evaluation", "settings": {"samples": 359, "attack": {"eps": 0.1}},
                                   "checkpoint": ck, "n": 359, "clean_acc": 0.95, "pgd_acc": 0.7})
    a = [-1.0, 0.0, 1.0]
    write_json(run / "surfaces" / "best-input-2d" / "input_surface.json", {
        "kind": "input_surface", "settings": {"samples": 8, "attack": {"eps": 0.1}}, "checkpoint": ck, "n": 8,
        "a": a, "b": a, "mean_loss": [[1, 1, 1], [0.5, 0.4, 0.5], [2, 2, 2]], "accuracy": [[1] * 3] * 3,
        "curvature": {"per_sample": [0.1] * 8, "mean": 0.1, "median": 0.125, "max": 0.5}, "examples": []})
    entries = report.collect([run])
    assert len(entries) == 1
    page = report.table_html(entries)
    assert "suspect: black_box" in page and "gradients" not in page
    assert "(n = 359)" in page and "(n = 40)" in page      # PGD from the evaluation, AutoAttack from the audit
    assert "median 0.125, max 0.5" in page
    assert report.input_figure(entries) is not None


def test_report_draws_each_surface_once_and_the_1d_ones_too(tmp_path):
    """A run folder and one of its surfaces given together: the surface is collected once (it was drawn
    twice); a 1D surface is drawn as a curve (it was dropped)."""
    from landscape import build_model, load_dataset
    from landscape.analysis import loss_surface, random_directions
    run = tmp_path / "at-digits-eps0.1-s0"
    m = build_model("mlp", "digits", seed=0)
    xy = load_dataset("digits", "test").tensors(8)
    d = random_directions(m, 2, seed=0)
    loss_surface(m, xy, d, "-1:1:3", "-1:1:3", out=run / "surfaces" / "two")
    loss_surface(m, xy, d[0], "-1:1:5", out=run / "surfaces" / "one")
    write_json(run / "config.json", {"model": "mlp", "dataset": "digits", "method": "at", "eps": 0.1})
    entries = report.collect([run, run / "surfaces" / "two"])
    surfaces = [r for e in entries for r in e.surfaces]
    assert sorted(r.dim for r in surfaces) == [1, 2]
    assert report.curves_figure(entries) is not None and report.undrawn_surfaces(entries) == []
