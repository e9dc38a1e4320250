"""landscape-report: one self-contained HTML page comparing runs side by side."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ..io import mark_html, write_bytes, write_json
from .common import Parser, check_output, cli

DESCRIPTION = """\
One HTML page that compares runs side by side: a table (clean / PGD / AutoAttack accuracy, top Hessian
eigenvalue, trace ± 95% half-width, best epoch, settings) and interactive figures: 3D loss surfaces that
rotate, top eigenvalues and eigenvalue densities, training curves with the curriculum (λ, ε_t) and
sharpness over training. plotly's JavaScript is embedded, so the page works offline and can be mailed
as one file (about 5 MB). Needs plotly: pip install 'landscape[report]'.

Each argument is a run folder (metrics.csv, config.json, surfaces/*, result JSONs in it), a result file
of any kind (surface, spectrum, evaluation, training; older files without a `kind` are recognised by
content), a folder of results (e.g. results/sat) or a folder of run folders (read one level down). A row
is one model under one setting (eps, attack, split, samples, loss, --arch wrapper, checkpoint file); rows
of one name are labelled with what differs."""

EPILOG = """\
examples:
  landscape-report runs/at-digits-eps0.1-s0 runs/p-sat-digits-eps0.1-s0 --out report.html
  landscape-report results/sat --out sat.html --title "SAT on Fashion-MNIST"
  landscape-report at/spec.json at/eval.json at/surfaces/best-eigen-adversarial-2d --out at.html"""


def build_parser() -> Parser:
    p = Parser(prog="landscape-report", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_RESULT", help="run folders, result files or folders")
    p.add_argument("--out", metavar="FILE.html", default="report.html", help="the page to write")
    p.add_argument("--title", default="landscape report", help="the page's title")
    p.add_argument("--json", metavar="PATH", help="write {out, runs: [{name, sources}]} as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out or --json file that landscape did not write (its own earlier "
                        "pages are replaced without it)")
    return p


@cli("landscape-report")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_output(out, "--out", ("html", "htm"), inputs=args.paths)
    if args.json:
        check_output(args.json, "--json", inputs=[*args.paths, out])
    from ..report import build_report, collect
    entries = collect(args.paths)
    # the page carries landscape's mark (io.mark_html): a re-run may replace it, a user's page is left alone;
    # UTF-8 whatever the locale (the page says so), as report.write_report writes it
    write_bytes(out, mark_html(build_report(entries, args.title)).encode("utf-8"))
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({len(entries)} runs: {', '.join(e.label for e in entries)}; {size:.1f} MB)")
    for note in getattr(entries, "notes", []):       # e.g. a stray JSON skipped in a scanned folder, named
        print(f"landscape-report: {note}", file=sys.stderr)
    if args.json:
        write_json(args.json, {"out": str(out), "runs": [{"name": e.label, "sources": e.sources} for e in entries]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
