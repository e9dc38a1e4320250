"""The house rules that keep one owner for each thing (issue 21), checked on the source: result files are
read by the results owner (``landscape.results``, ``landscape.runs`` for run folders, and a surface's own
storage), run names are parsed in one place, and the report and the results load no plotting library."""
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "landscape"
READERS = {"results.py", "runs.py", "io.py", "analysis/surface_result.py"}


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
