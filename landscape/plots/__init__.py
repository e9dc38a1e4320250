"""Figures for every result file of the toolkit. Each function returns a ``matplotlib.figure.Figure`` and never
calls ``plt.show()``. Save with ``fig.savefig("x.png")`` (or ``.pdf``).

Where figures live: in scripts, tests and the CLIs they are bare ``Figure`` objects (no pyplot registry,
nothing to close, nothing leaks in loops). Under Jupyter's inline or widget backends they are made through
pyplot, so that ``fig = plot_contourf(surf)`` shows at the end of the cell like any matplotlib figure (as
the cell's last expression it then shows twice, as ``plt.gcf()`` would: end the line with ``;``).

One module a job: ``surfaces`` (curve, contour, contourf, surface3d, compare), ``spectra`` (eigenvalues,
density, spectrum), ``training`` (sharpness, training), ``inputs`` (the input-space surface), ``dispatch``
(``plot_result(path_or_obj, kind=None)`` picks one from the result's ``kind``, inferred for older files),
``style`` (``paper_style``, colour scales), ``labels`` (legend labels and titles).

Titles, legends and axis names come from the results' settings (method, eps, loss, dataset, number of
samples, direction kind), never from file names. ``with paper_style(): fig = ...`` (or ``landscape-plot
--style paper``) makes single-column figures (3.3 in wide) with matching font sizes.
"""
from .dispatch import KINDS, SURFACE_KINDS, detect_kind, draw, plot_result, resolve_plot
from .inputs import plot_input_surface
from .spectra import plot_density, plot_eigenvalues, plot_spectrum
from .style import STYLES, colour_scale, paper_style
from .surfaces import plot_compare, plot_contour, plot_contourf, plot_curve, plot_surface3d
from .training import plot_sharpness, plot_training

__all__ = ["plot_curve", "plot_contour", "plot_contourf", "plot_surface3d", "plot_compare", "plot_eigenvalues",
           "plot_density", "plot_spectrum", "plot_sharpness", "plot_training", "plot_input_surface", "plot_result",
           "resolve_plot", "draw", "detect_kind", "paper_style", "colour_scale", "KINDS", "SURFACE_KINDS", "STYLES"]
