"""landscape-plot: a PNG (or PDF/SVG) from any result file of the toolkit."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from ..io import write_json
from ..plots.save import save_figure
from .common import Parser, check_output, cli, dpi, image_formats, set_types

DESCRIPTION = """\
Draw any result of the toolkit: a loss surface (its folder, surface.json or surface.npz), a spectrum JSON
(top eigenvalues, density), a training run (its folder or metrics.csv: sharpness, training curves with the
curriculum). The result's `kind` picks the figure (older files without one are recognised by their
content). Several results of the same sort are drawn together on shared scales (e.g. clean vs adversarial
surfaces side by side, one colour bar); surfaces with different direction kinds or grids are refused
unless --allow-mismatch. Titles, legends and axis names come from each result's settings (method, eps,
loss, dataset, samples, direction kind), not from file names.

kinds: curve (1D surface: loss and accuracy), contour, contourf (filled, log-spaced levels when the
values span a factor 3 or more; a PCA plane shows the training trajectory), surface3d (with colour bar),
compare (side by side, one colour scale), spectrum (eigenvalues + density, trace ± 95% half-width),
eigenvalues, density (log axis from 1e-6 of the peak, top-k eigenvalues as rug ticks), sharpness,
training (loss, accuracy, curriculum λ and ε_t; best epoch marked).
Default: curve for a 1D surface, contourf for a 2D one, compare for several surfaces, spectrum for a
spectrum (density for several), sharpness for metrics with a sharpness column, else training.

Output: --out NAME.png, .pdf (vector, fonts embedded) or .svg. --style paper makes single-column
figures (3.3 in wide, 8 pt text, 300 dpi) for a paper; wide comparisons keep one panel per 3.3 in."""

EPILOG = """\
examples:
  landscape-plot runs/at/surfaces/best-eigen-adversarial-2d --kind surface3d
  landscape-plot clean/surface.json adversarial/surface.json --out compare.png
  landscape-plot runs/at/surfaces/best-eigen-adversarial-2d --field accuracy   # -> ...-contourf-accuracy.png
  landscape-plot spec_at.json spec_sat.json --kind density --style paper --out density.pdf
  landscape-plot runs/h-sat/metrics.csv --kind training"""


def build_parser() -> Parser:
    from ..plots import KINDS, STYLES
    p = Parser(prog="landscape-plot", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("results", nargs="+", metavar="RESULT", help="result file(s), surface folder(s) or run folder(s)")
    p.add_argument("--kind", choices=KINDS, help="what to draw (default: chosen from the result)")
    p.add_argument("--out", metavar="PATH",
                   help="image file; .png, .pdf or .svg (default: next to the first result, NAME-KIND[-FIELD].png)")
    p.add_argument("--field", choices=("loss", "accuracy"), help="surface field to draw (default loss)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log", dest="log", action="store_const", const=True,
                       help="log scale / log-spaced levels (default for contours and densities)")
    scale.add_argument("--linear", dest="log", action="store_const", const=False, help="linear scale")
    p.add_argument("--labels", help="comma-separated legend labels, one per result (default: from settings)")
    p.add_argument("--style", choices=tuple(STYLES), default="default",
                   help="'paper': single-column width (3.3 in), 8 pt fonts, 300 dpi")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="draw surfaces of different direction kinds or grids together (with a warning)")
    p.add_argument("--dpi", type=int, help="resolution of a PNG (default 150; 300 with --style paper)")
    p.add_argument("--json", metavar="PATH", help="write {kind, out, results} as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out or --json file that landscape did not write (its own earlier "
                        "figures are replaced without it)")
    return set_types(p, {"--dpi": dpi})


def default_out(first: str, kind: str, field: str | None = None) -> Path:
    """NAME-KIND.png next to the first result (a folder: inside it); a field other than the loss is added to
    the name (NAME-KIND-accuracy.png), so it never overwrites the loss figure."""
    p = Path(first)
    tag = kind + (f"-{field}" if field and field != "loss" else "")
    if p.is_dir():
        return p / f"{p.name}-{tag}.png"
    return p.with_name(f"{p.stem}-{tag}.png")


@cli("landscape-plot")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        check_output(args.json, "--json", inputs=args.results)
    if args.out:
        check_output(args.out, "--out", image_formats(), inputs=args.results)
    from ..plots import SURFACE_KINDS, draw, paper_style, resolve_plot
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.results):
        raise ConfigError(f"--labels gives {len(labels)} labels for {len(args.results)} results")
    if args.dpi is not None and args.dpi < 10:
        raise ConfigError(f"--dpi must be at least 10, got {args.dpi}")
    obj = args.results if len(args.results) > 1 else args.results[0]
    kind, fn, arg = resolve_plot(obj, args.kind)
    if args.field and kind not in SURFACE_KINDS:
        raise ConfigError(f"--field applies to surfaces; this is a {kind} figure")
    out = Path(args.out) if args.out else default_out(args.results[0], kind, args.field)
    check_output(out, "--out", image_formats(), inputs=args.results)
    with paper_style(args.style), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = draw(fn, arg, field=args.field, log=args.log, labels=labels,
                   mismatch="warn" if args.allow_mismatch else "refuse")
        dpi = args.dpi or (300 if args.style == "paper" else 150)
        save_figure(fig, out, dpi=dpi)
    for w in caught:
        if issubclass(w.category, UserWarning) and "not comparable" in str(w.message):
            print(f"landscape-plot: warning: {w.message}", file=sys.stderr)
    print(f"wrote {out} ({kind})")
    if args.json:
        write_json(args.json, {"kind": kind, "out": str(out), "results": list(args.results)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
