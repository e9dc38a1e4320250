"""The documentation's relative links and figures point at files that are in the repository (a renamed
result or figure would otherwise leave a broken page), and the study's report quotes its committed tables."""
import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    missing = [t for t in LINK.findall(page.read_text()) if "://" not in t and not t.startswith("mailto:")
               and not (page.parent / t).exists()]
    assert missing == [], f"{page.name} links to missing files: {missing}"


def test_the_report_quotes_the_committed_study():
    """A few headline numbers of docs/reproduction.md, recomputed from results/sat-study/per_model.csv."""
    text = (REPO / "docs" / "reproduction.md").read_text()
    df = pd.read_csv(REPO / "results" / "sat-study" / "per_model.csv")
    assert len(df) == 45 and sorted(set(df.seed)) == [0, 1, 2]
    g = df.groupby(["method", "eps"])
    for method, eps, col, fmt in (("at", 0.3, "eig1", "{:.1f} ± {:.1f}"), ("sat-eps", 0.3, "eig1", "{:.1f} ± {:.1f}"),
                                  ("sat-eps", 0.4, "test_clean", None), ("at", 0.4, "test_clean", None)):
        m, s = g[col].mean()[(method, eps)], g[col].std(ddof=1)[(method, eps)]
        quoted = fmt.format(m, s) if fmt else f"{100 * m:.1f} ± {100 * s:.1f}"
        assert quoted in text, f"{method} eps {eps} {col}: {quoted} not in docs/reproduction.md"


@pytest.mark.slow   # ~45 s: it trains the run it analyzes
def test_the_readme_python_example_runs_as_written(tmp_path):
    """The README's Python block, run verbatim in a fresh folder and process: it makes the run it analyzes
    (it used to load one that nothing before it created) and prints as it goes (it ran two minutes without a
    word)."""
    import subprocess
    import sys
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Python API"):]
    code = block[block.index("```python\n") + 10:block.index("```\n", block.index("```python\n") + 10)]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout.splitlines()
    assert [l.split(" ")[0] for l in out] == ["clean", "top-5", "trace", "density:"], proc.stdout
    assert (tmp_path / "runs" / "at-digits-eps0.1-s0" / "best.pt").is_file()
