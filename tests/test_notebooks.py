"""The notebooks: committed with their outputs (checked without running anything), and executable — in fast mode
(LANDSCAPE_FAST=1, tiny scale) both, and notebook 02 in full mode on the committed results/sat-study/. Executions go
through notebooks/execute.py (what `make notebooks` runs) and write into tmp_path, never over the committed
files."""
import copy
import hashlib
import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_sat_smoothness.ipynb"]
MAX_BYTES = 1_500_000


def _load_execute():
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = _load_execute()


def _digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(NOTEBOOKS.iterdir()) if p.is_file()}


def _run(name, tmp_path, fast):
    """Execute notebook ``name`` into tmp_path (kernel working there too); the committed folder is unchanged."""
    before = _digests()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LANDSCAPE_RESULTS": str(REPO / "results" / "sat-study")}
    out = tmp_path / name
    execute.execute(NOTEBOOKS / name, out, fast=fast, cwd=tmp_path, timeout=600, env=env)
    assert _digests() == before, "executing a notebook changed the files in notebooks/"
    return nbformat.read(out, as_version=4)


def _text_outputs(nb) -> list[str]:
    """The printed text and tables of ``nb`` (not the figures' reprs): what a change of the results changes."""
    texts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if o.output_type == "stream":
                texts.append(o.text)
            elif "text/plain" in o.get("data", {}) and "image/png" not in o.data:
                texts.append(o.data["text/plain"])
    return texts


# --- the committed notebooks (fast: nothing runs) -------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_its_outputs(name):
    """Every code cell ran, in order; figures as PNG; no errors, machine paths, \\r noise or timestamps."""
    path = NOTEBOOKS / name
    assert path.stat().st_size < MAX_BYTES, f"{name}: {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert execute.problems(nb) == [], f"{name}: run `make notebooks` and commit the notebooks"
    cleaned = execute.clean(copy.deepcopy(nb))
    assert cleaned == nb, f"{name} was not written by notebooks/execute.py (`make notebooks`)"


@pytest.mark.parametrize("name", NAMES)
def test_a_notebook_stripped_of_its_outputs_is_refused(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    stripped = copy.deepcopy(nb)
    for cell in stripped.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    found = execute.problems(stripped)
    assert any("not all run" in p for p in found) and "no outputs" in found and "no PNG figure" in found
    half = copy.deepcopy(nb)  # outputs kept, but one cell re-run by hand out of order
    code = [c for c in half.cells if c.cell_type == "code"]
    code[0].execution_count = len(code) + 1
    assert execute.problems(half)


def test_problems_sees_paths_errors_and_progress_noise():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    cell = nb.cells[0]
    cell.execution_count = 1
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"}),
                    nbformat.v4.new_output("stream", name="stderr", text="run in /work/main/runs/x\n")]
    assert [p for p in execute.problems(nb) if "machine path" in p]
    cell.outputs[1] = nbformat.v4.new_output("stream", name="stderr", text="10%|#\r20%|##\r")
    assert [p for p in execute.problems(nb) if "carriage return" in p]
    cell.outputs[1] = nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[])
    assert [p for p in execute.problems(nb) if "error output" in p]
    cell.outputs = cell.outputs[:1]
    assert execute.problems(nb) == []


def test_clean_collapses_progress_and_scrubs_paths():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    cell = nb.cells[0]
    cell.metadata["execution"] = {"iopub.status.busy": "2026-11-25T17:00:00Z"}
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="10%|#\r"),
                    nbformat.v4.new_output("stream", name="stderr", text="\r100%|##########\n"),
                    nbformat.v4.new_output("stream", name="stdout", text=f"saved in {REPO}/runs/a\n")]
    execute.clean(nb)
    assert [o.text for o in cell.outputs] == ["100%|##########\n", "saved in <repo>/runs/a\n"]
    assert "execution" not in cell.metadata


# --- executions (into tmp_path) -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path):
    """Fast mode: any failing cell fails the test; the result is fit to commit (it would be in full mode)."""
    nb = _run(name, tmp_path, fast=True)
    assert execute.problems(nb) == []


def test_smoothness_notebook_reads_the_committed_results(tmp_path):
    """Full mode: notebook 02 draws every figure from results/sat-study/, computing nothing, and its committed
    outputs are those of the committed results (after results/sat-study/ changes: `make notebooks`)."""
    nb = _run("02_sat_smoothness.ipynb", tmp_path, fast=False)
    assert execute.problems(nb) == []
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
    text = "".join(_text_outputs(nb))
    assert "p-sat" in text and "h-sat" in text  # the methods table came from the results
    committed = nbformat.read(NOTEBOOKS / "02_sat_smoothness.ipynb", as_version=4)
    assert _text_outputs(committed) == _text_outputs(nb), \
        "notebooks/02_sat_smoothness.ipynb shows stale results: run `make notebooks` and commit it"


def test_notebooks_use_only_the_public_api():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "import landscape" in code
        assert "sys.path" not in code and "benchmarks" not in code and "def _" not in code
