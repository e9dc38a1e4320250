"""landscape-plot: a PNG (or PDF/SVG) from any result file of the toolkit."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError
from ..io import save_figure, write_json
from .common import Parser, check_output, cli, dpi, image_formats, set_types

DESCRIPTION = """\
Draw any result of the toolkit: a loss surface (its folder, surface.json or surface.npz), a spectrum JSON
(top eigenvalues, density) or a training run's metrics.csv (sharpness, training curves). Several results
of the same sort are drawn together on shared scales (e.g. clean vs adversarial surfaces side by side).

kinds: curve (1D surface: loss and accuracy), contour, contourf (filled, log-spaced levels), surface3d,
compare (side by side, one colour scale), spectrum, eigenvalues, density, sharpness, training.
Default: curve for a 1D surface, contourf for a 2D one, compare for several surfaces, spectrum for a
spectrum (density for several), sharpness for metrics with a sharpness column, else training."""

EPILOG = """\
examples:
  landscape-plot runs/at/surfaces/best-eigen-adversarial-2d --kind surface3d
  landscape-plot clean/surface.json adversarial/surface.json --out compare.png
  landscape-plot runs/h-sat/metrics.csv --kind sharpness"""


def build_parser() -> Parser:
    from ..analysis.plots import KINDS
    p = Parser(prog="landscape-plot", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("results", nargs="+", metavar="RESULT", help="result file(s) or surface folder(s)")
    p.add_argument("--kind", choices=KINDS, help="what to draw (default: chosen from the result)")
    p.add_argument("--out", metavar="PATH",
                   help="image file; .png, .pdf or .svg (default: next to the first result, NAME-KIND.png)")
    p.add_argument("--field", choices=("loss", "accuracy"), help="surface field to draw (default loss)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log", dest="log", action="store_const", const=True,
                       help="log scale / log-spaced levels (default for contours and densities)")
    scale.add_argument("--linear", dest="log", action="store_const", const=False, help="linear scale")
    p.add_argument("--labels", help="comma-separated labels, one per result")
    p.add_argument("--dpi", type=int, default=150)
    p.add_argument("--json", metavar="PATH", help="write {kind, out, results} as JSON")
    return set_types(p, {"--dpi": dpi})


def _default_out(first: str, kind: str) -> Path:
    p = Path(first)
    if p.is_dir():
        return p / f"{p.name}-{kind}.png"
    return p.with_name(f"{p.stem}-{kind}.png")


@cli("landscape-plot")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        check_output(args.json, "--json")
    if args.out:
        check_output(args.out, "--out", image_formats())
    from ..analysis.plots import draw, resolve_plot
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.results):
        raise ConfigError(f"--labels gives {len(labels)} labels for {len(args.results)} results")
    obj = args.results if len(args.results) > 1 else args.results[0]
    kind, fn, arg = resolve_plot(obj, args.kind)
    out = Path(args.out) if args.out else _default_out(args.results[0], kind)
    check_output(out, "--out", image_formats())
    fig = draw(fn, arg, field=args.field, log=args.log, labels=labels)
    save_figure(fig, out, dpi=args.dpi)
    print(f"wrote {out} ({kind})")
    if args.json:
        write_json(args.json, {"kind": kind, "out": str(out), "results": list(args.results)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
