"""The house rules that keep one owner for each thing (issue 21), checked on the source: result files are
read by the results owner (``landscape.results``, ``landscape.runs`` for run folders, and a surface's own
storage and AutoAttack's per-chunk state), run names are parsed in one place, and the report and the results load no plotting library."""
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "landscape"
READERS = {"results.py", "runs.py", "io.py", "analysis/surface_result.py", "autoattack.py"}


def _sources():
    for p in sorted(PKG.rglob("*.py")):
        yield p.relative_to(PKG).as_posix(), p.read_text()


def test_only_the_results_owner_reads_result_files():
    offenders = [name for name, text in _sources() if name not in READERS
                 and re.search(r"\bread_json\(|\bread_csv\(|\bjson\.load\(", text)]
    assert offenders == [], f"these modules read result files themselves: {offenders}"


def test_run_names_are_parsed_in_one_place():
    offenders = [name for name, text in _sources() if name != "runs.py" and "-eps[" in text]
    assert offenders == [], f"these modules parse run names: {offenders}"


def test_results_and_report_load_no_plotting_library():
    code = ("import sys, landscape.report, landscape.results, landscape.runs; "
            "bad = [m for m in ('matplotlib', 'plotly', 'landscape.analysis.plots') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_progress_line_is_never_printed_twice(capsys):
    """A bar that reaches its total writes its last line once (the density's was written again at close)."""
    import io
    from landscape.progress import LogBar
    out = io.StringIO()
    bar = LogBar(total=3, desc="density", unit="HVP", file=out, interval=0.0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [l.split(",")[0] for l in lines] == ["density: 1/3 HVP (33%)", "density: 2/3 HVP (67%)",
                                               "density: 3/3 HVP (100%)"]
    bar2 = LogBar(total=2, desc="train", file=out, interval=0.0)
    bar2.update(2)
    bar2.set_postfix(loss=0.5)
    bar2.close()                                   # the postfix changed: the last line says so
    assert out.getvalue().splitlines()[-1].endswith("[loss=0.5]")
