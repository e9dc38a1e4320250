"""The house rules (issues 21 and 32), checked on the source with ``ast`` (imports and calls, not text): no
import circle, lazy imports included; no module imports one that stands above it in the layering
core <- analysis/training <- results/plots/report <- cli/study; presentation outside the compute packages;
result files read by their owners only; run names parsed in one place; one seed rule; no deprecation shims."""
from __future__ import annotations

import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "landscape"
#: the modules that read stored result files (JSON, CSV, arrays, checkpoints): each format has one owner
READERS = {"landscape.io", "landscape.results", "landscape.runs", "landscape.checkpoint",
           "landscape.analysis.surface_result", "landscape.autoattack",   # a surface's storage; AutoAttack's chunks
           "landscape.study.state", "landscape.study.layout"}              # the study's records; the committed layout
READ_CALLS = {("json", "load"), ("np", "load"), ("numpy", "load"), ("torch", "load"), ("pd", "read_csv"),
              ("pandas", "read_csv"), ("", "read_json"), ("", "read_csv"), ("", "load_npz")}
PLOTTING = ("matplotlib", "plotly", "landscape.plots")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, at any depth of its code (a lazy import inside a function counts):
    ``from .x import y`` names ``landscape...x.y`` when that is a module, else ``landscape...x``."""
    path, tree = _sources()[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                out.add(full if full in _sources() else mod)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _sources()
    return {m: {d for d in _imports(m) if d in mods and d != "landscape"} for m in mods}


def layer(module: str) -> int:
    """1 core, 2 compute (analysis, training, evaluation, audit), 3 results and presentation, 4 the edges,
    5 the package's face (``landscape/__init__.py``, which hands the public names on)."""
    if module == "landscape":
        return 5
    if module.startswith(("landscape.cli", "landscape.study")):
        return 4
    if module in ("landscape.results", "landscape.runs", "landscape.report") or module.startswith("landscape.plots"):
        return 3
    if module.startswith(("landscape.analysis", "landscape.training", "landscape.audit")) or module in (
            "landscape.evaluate", "landscape.autoattack"):
        return 2
    return 1


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_lazy_imports_included():
    assert _cycles(_graph()) == []


def test_no_module_imports_one_above_it():
    up = [f"{m} -> {d}" for m, deps in _graph().items() for d in sorted(deps) if layer(d) > layer(m)]
    assert up == [], "imports that run back up the layering:\n" + "\n".join(up)


def test_presentation_lives_outside_the_compute_packages():
    """matplotlib and plotly (and our plots) are loaded by layers 3 and 4 only."""
    bad = [f"{m} -> {d}" for m in _sources() if layer(m) < 3
           for d in _imports(m) if d.startswith(PLOTTING)]
    assert bad == []
    assert not (PKG / "analysis" / "plots.py").exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute):
                yield (ast.unparse(f.value), f.attr), node.lineno
            elif isinstance(f, ast.Name):
                yield ("", f.id), node.lineno


def test_only_the_owners_read_result_files():
    """json.load, np.load, torch.load, pandas' read_csv and our read_json / load_npz are called by the owners
    of the formats only (benchmarks included: they read through the owners)."""
    offenders = [f"{m}:{line} {'.'.join(filter(None, call))}" for m, (_, tree) in _sources().items()
                 if m not in READERS for call, line in _calls(tree) if call in READ_CALLS]
    for p in sorted((ROOT / "benchmarks").glob("*.py")):
        offenders += [f"{p.name}:{line} {'.'.join(filter(None, call))}"
                      for call, line in _calls(ast.parse(p.read_text())) if call in READ_CALLS]
    assert offenders == [], offenders


def _string_constants(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_run_names_are_parsed_in_one_place():
    owners = {m for m, (_, tree) in _sources().items() if any("-eps[" in s for s in _string_constants(tree))}
    assert len(owners) == 1, owners


def test_one_seed_rule():
    """Derived seeds come from ``seeding.derive`` alone: its constants appear nowhere else."""
    owners = {m for m, (_, tree) in _sources().items()
              for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in (1_000_003, 10_007)}
    assert owners == {"landscape.seeding"}, owners


def test_no_deprecation_shims():
    """0.1.0 has no outside users (CHANGELOG.md): no deprecated aliases, keywords or modules."""
    bad = [m for m, (_, tree) in _sources().items()
           if any(isinstance(n, ast.Name) and n.id == "DeprecationWarning" for n in ast.walk(tree))]
    assert bad == [] and "landscape.deprecation" not in _sources()


def test_results_and_report_load_no_plotting_library():
    code = ("import sys, landscape.report, landscape.results, landscape.runs; "
            f"bad = [m for m in {PLOTTING!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_house_rules_can_fail():
    """The checks above see what they look for: a made-up circle, an import up and a lazy import."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert layer("landscape.io") < layer("landscape.analysis.hessian") < layer("landscape.results") \
        < layer("landscape.cli.train")
    assert "landscape.errors" in _imports("landscape.io")
    lazy = [m for m, (_, tree) in _sources().items() for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in ast.walk(n))]
    assert lazy, "no lazy import found: the walk would miss them"


def test_no_function_takes_loose_attack_arguments_beside_a_spec():
    """Issue 21: the attack is one object; every function that attacks takes ``attack: AttackSpec`` and no
    loose attack keyword (eps=, steps=, ...)."""
    import inspect
    import landscape as ls
    from landscape.analysis import HessianOperator, eigen_directions, loss_surface
    from landscape.analysis.input_space import input_surface
    from landscape.training.sharpness import adversarial_sharpness
    loose = {"eps", "steps", "step_size", "norm", "attack_norm", "restarts", "attack_batch_size"}
    fns = [ls.evaluate, ls.audit, HessianOperator.__init__, HessianOperator.from_checkpoint, loss_surface,
           eigen_directions, input_surface, adversarial_sharpness]
    for fn in fns:
        params = set(inspect.signature(fn).parameters)
        assert "attack" in params and not params & loose, (fn.__qualname__, params & loose)
