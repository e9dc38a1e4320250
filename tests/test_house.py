"""The house rules that keep one owner for each thing (issue 21), checked on the source: result files are
read by the results owner (``landscape.results``, ``landscape.runs`` for run folders, and a surface's own
storage and AutoAttack's per-chunk state), run names are parsed in one place, and the report and the results load no plotting library."""
import re
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "landscape"
READERS = {"results.py", "runs.py", "io.py", "analysis/surface_result.py", "autoattack.py",
           "study/state.py", "study/legacy.py"}   # the study folder's own records; the committed study's layout


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


def test_no_function_takes_loose_attack_arguments_beside_a_spec():
    """Issue 21: the attack is one object. Every function that attacks takes ``attack: AttackSpec``; the old
    loose keywords reach it only through ``takes_attack_spec`` (deprecated aliases, one rule)."""
    import inspect
    import landscape as ls
    from landscape.analysis import HessianOperator, eigen_directions, loss_surface
    from landscape.analysis.input_space import input_surface
    from landscape.attack_spec import LOOSE_KEYWORDS
    from landscape.training.sharpness import adversarial_sharpness
    fns = [ls.evaluate, ls.audit, HessianOperator.__init__, HessianOperator.from_checkpoint, loss_surface,
           eigen_directions, input_surface, adversarial_sharpness]
    for fn in fns:
        params = set(inspect.signature(inspect.unwrap(fn)).parameters)
        assert "attack" in params and not params & set(LOOSE_KEYWORDS), (fn.__qualname__, params & set(LOOSE_KEYWORDS))


def test_old_loose_attack_keywords_are_one_deprecated_rule():
    import warnings
    import pytest
    import torch
    from landscape import AttackSpec, build_model, evaluate, load_dataset
    from landscape.analysis import HessianOperator
    from landscape.errors import ConfigError
    m = build_model("mlp", "digits", seed=0)
    x, y = load_dataset("digits", "test").tensors(8)
    with pytest.warns(DeprecationWarning, match="loose attack keywords"):
        old = evaluate(m, x, y, 0.1, steps=3, batch_size=4)        # eps positional, as the old signature took it
    new = evaluate(m, x, y, AttackSpec(eps=0.1, steps=3, batch_size=4), batch_size=4)
    assert old.attack == new.attack and old.pgd_acc == new.pgd_acc
    with pytest.raises(ConfigError, match="not both"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        HessianOperator(m, (x, y), loss="adversarial", attack=AttackSpec(eps=0.1), eps=0.2)
    with pytest.warns(DeprecationWarning):       # loose keywords with the clean loss make no attack, as before
        assert HessianOperator(m, (x, y), eps=0.1).attack is None
    assert torch.equal(x, load_dataset("digits", "test").tensors(8)[0])
