"""Execute the notebooks and write them back with their outputs, in a form fit to commit.

    python notebooks/execute.py                      # both notebooks, reader's (full) mode, rewritten in place
    python notebooks/execute.py 02_sat_smoothness.ipynb --out /tmp/nb   # one notebook, written elsewhere
    python notebooks/execute.py --fast --out /tmp/nb # LANDSCAPE_FAST=1 (tiny scale; what the tests run)

`make notebooks` runs the first line. The kernel runs in notebooks/ (so notebook 02 finds ../results/sat-study) unless
--cwd says otherwise. The outputs are cleaned so that a rerun on the same results gives the same file up to
the figures' pixels: no execution timestamps, carriage-return progress bars collapsed to their last state,
consecutive stream outputs merged, and absolute paths of the machine (repository, home, temporary folders)
replaced by placeholders. Cost: one full execution of each notebook (minutes on a CPU).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NOTEBOOKS = ("01_quickstart.ipynb", "02_sat_smoothness.ipynb")
#: absolute paths a committed output must not contain (checked by tests/test_notebooks.py too)
MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/tmp/|/var/folders/|[A-Za-z]:\\Users\\)")


def _collapse_cr(text: str) -> str:
    r"""What a terminal shows of ``text``: on each line only what follows its last carriage return (\r)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n"))


def _scrub_paths(text: str) -> str:
    """Replace this machine's absolute paths (repository, Python prefix, temporary folder, home) by placeholders."""
    paths = {str(REPO): "<repo>", sys.prefix: "<python>", tempfile.gettempdir(): "<tmp>", str(Path.home()): "~"}
    for path in sorted(paths, key=len, reverse=True):  # the longest first: a venv inside the repository
        text = text.replace(path, paths[path])
    return text


def clean(nb: Any) -> Any:
    """Strip what changes from run to run or names this machine; returns ``nb`` (changed in place)."""
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # iopub/shell timestamps
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                text = _scrub_paths(_collapse_cr(out.text))
                if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == out.name:
                    outputs[-1].text += text
                    continue
                out.text = text
            elif out.output_type in ("execute_result", "display_data"):
                out.get("metadata", {}).pop("execution", None)
                for mime, value in out.get("data", {}).items():
                    if mime.startswith("text/") and isinstance(value, str):
                        out.data[mime] = _scrub_paths(value)
            elif out.output_type == "error":
                out.traceback = [_scrub_paths(t) for t in out.traceback]
            outputs.append(out)
        for out in outputs:
            if out.output_type == "stream":
                out.text = re.sub(r"\n{3,}", "\n\n", out.text)
        cell.outputs = [o for o in outputs if o.output_type != "stream" or o.text.strip()]
    return nb


def problems(nb: Any) -> list[str]:
    """Why ``nb`` is not fit to commit as a notebook a reader opens with its figures (empty when it is): a code
    cell not run or run out of order, an error output, no PNG figure, a machine path, a carriage return, an
    execution timestamp. A notebook stripped of its outputs fails here."""
    found = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    if counts != list(range(1, len(code) + 1)):
        found.append(f"code cells not all run once in order: execution counts {counts}")
    outputs = [o for c in code for o in c.get("outputs", [])]
    if not outputs:
        found.append("no outputs")
    if not any("image/png" in o.get("data", {}) for o in outputs):
        found.append("no PNG figure")
    found += [f"error output: {o.get('ename')}: {o.get('evalue')}" for o in outputs if o.output_type == "error"]
    for o in outputs:
        texts = [o.get("text", "")] + [v for k, v in o.get("data", {}).items() if k.startswith("text/")]
        texts += o.get("traceback", [])
        for text in texts:
            text = "".join(text) if isinstance(text, list) else str(text)
            if m := MACHINE_PATH.search(text):
                found.append(f"machine path in an output: ...{text[max(0, m.start() - 30):m.end() + 30]!r}...")
            if "\r" in text:
                found.append(f"carriage return in an output: {text[:60]!r}...")
    if any("execution" in c.metadata or any("execution" in o.get("metadata", {}) for o in c.get("outputs", []))
           for c in code):
        found.append("execution timestamps in the metadata")
    return found


def execute(path: Path, out: Path, *, fast: bool = False, cwd: Path | None = None, timeout: int = 1800,
            env: dict[str, str] | None = None) -> float:
    """Execute notebook ``path`` (full mode, or LANDSCAPE_FAST=1 when ``fast``) and write the cleaned result to
    ``out`` (atomically). The kernel runs in ``cwd`` (default: the notebook's folder). Returns the seconds taken.
    A failing cell raises ``nbclient.exceptions.CellExecutionError`` and nothing is written."""
    nb = nbformat.read(path, as_version=4)
    kernel_env = dict(os.environ if env is None else env)
    kernel_env.pop("LANDSCAPE_FAST", None)
    if fast:
        kernel_env["LANDSCAPE_FAST"] = "1"
    kernel_env.setdefault("MPLBACKEND", "Agg")
    kernel_env.setdefault("TQDM_DISABLE", "1")  # progress bars and lines are noise in a committed output
    kernel_env.setdefault("LANDSCAPE_PROGRESS_SECONDS", "1e9")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    start = time.perf_counter()
    client.execute(env=kernel_env)  # passed on to the kernel manager's start_kernel: the kernel's environment
    seconds = time.perf_counter() - start
    clean(nb)
    nbformat.validate(nb)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=list(NOTEBOOKS), help="notebooks in notebooks/ (default: all)")
    p.add_argument("--out", type=Path, help="folder to write them to (default: rewrite them in place)")
    p.add_argument("--fast", action="store_true", help="LANDSCAPE_FAST=1: tiny scale (not for committing)")
    p.add_argument("--cwd", type=Path, help="the kernel's working folder (default: notebooks/)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = p.parse_args(argv)
    status = 0
    for name in args.names:
        src = HERE / Path(name).name
        dst = (args.out or HERE) / src.name
        seconds = execute(src, dst, fast=args.fast, cwd=args.cwd, timeout=args.timeout)
        print(f"{src.name}: executed in {seconds:.0f} s, {dst.stat().st_size / 1e3:.0f} kB -> {dst}")
        for problem in problems(nbformat.read(dst, as_version=4)):
            print(f"{src.name}: {problem}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
