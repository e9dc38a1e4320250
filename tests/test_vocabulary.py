"""One vocabulary in the five CLIs (issue 13): one meaning per word, old spellings kept as aliases, every shared
option documented in the README's table, and optional values (``--plot [PATH]``, ``--resume [DIR]``) that do
not swallow the checkpoint argument."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from landscape.cli import eval as eval_cli
from landscape.cli import plot as plot_cli
from landscape.cli import report as report_cli
from landscape.cli import spectrum as spectrum_cli
from landscape.cli import surface as surface_cli
from landscape.cli import train as train_cli
from landscape.cli.common import glue_optional_values, is_figure_path, is_folder_token

PARSERS = {"train": train_cli.build_parser, "eval": eval_cli.build_parser, "spectrum": spectrum_cli.build_parser,
           "surface": surface_cli.build_parser, "plot": plot_cli.build_parser, "report": report_cli.build_parser}
README = Path(__file__).resolve().parents[1] / "README.md"

# (script, old spelling, new spelling, a value, positional arguments)
ALIASES = [
    ("eval", "--n-samples", "--samples", "8", ["ck.pt"]),
    ("spectrum", "--n-samples", "--samples", "8", ["ck.pt"]),
    ("surface", "--n-samples", "--samples", "8", ["ck.pt"]),
    ("spectrum", "--trace-rtol", "--trace-tol", "0.05", ["ck.pt"]),
    ("surface", "--norm", "--normalization", "layer", ["ck.pt"]),
    ("train", "--out", "--runs-dir", "elsewhere", []),
    ("train", "--model", "--arch", "mlp", []),
]


@pytest.mark.parametrize("script,old,new,value,pos", ALIASES, ids=[f"{a[0]}{a[1]}" for a in ALIASES])
def test_old_spelling_means_the_new_one(script, old, new, value, pos):
    parse = lambda *a: vars(PARSERS[script]().parse_args([*pos, *a]))
    assert parse(old, value) == parse(new, value) != parse()


def _sections():
    text = README.read_text()
    start = text.index("### One vocabulary")
    return text[start:text.index("\n### ", start + 1)]


def test_every_shared_option_is_in_the_readme_table():
    """An option that two scripts share is a word of the vocabulary: it must be in the README's table, with
    one meaning. (A new shared option that nobody documented fails here.)"""
    seen: dict[str, set[str]] = {}
    for name, build in PARSERS.items():
        for action in build()._actions:
            for opt in action.option_strings:
                seen.setdefault(opt, set()).add(name)
    shared = sorted(o for o, names in seen.items() if len(names) > 1 and o not in ("-h", "--help"))
    table = _sections()
    documented = set(re.findall(r"--[a-z][a-z0-9-]*", table))
    assert len(shared) >= 25
    assert not [o for o in shared if o not in documented], "shared options missing from README's vocabulary"


def test_no_word_keeps_two_meanings():
    """``norm`` is the attack's norm only; ``rtol``/``n-samples`` survive only as aliases; ``--plot`` takes an
    optional path in both scripts that draw; ``--resume`` takes an optional folder in both that resume."""
    for name, build in PARSERS.items():
        for action in build()._actions:
            opts = action.option_strings
            if "--norm" in opts:
                assert opts[0] == "--normalization", name
            if "--trace-rtol" in opts or "--n-samples" in opts or ("--out" in opts and name == "train"):
                assert opts.index("--trace-rtol" if "--trace-rtol" in opts else
                                  "--n-samples" if "--n-samples" in opts else "--out") > 0, (name, opts)
            if "--plot" in opts or "--resume" in opts:
                assert action.nargs == "?" and action.const == "", (name, opts)


def test_every_option_is_documented():
    undocumented = [(name, a.option_strings) for name, build in PARSERS.items() for a in build()._actions
                    if a.option_strings and not a.help]
    assert not undocumented


def test_optional_values_do_not_swallow_the_checkpoint(tmp_path):
    p = spectrum_cli.build_parser()
    glue = lambda argv: glue_optional_values(argv, {"--plot": is_figure_path})
    a = p.parse_args(glue(["--plot", "runs/at/best.pt", "--top-k", "3"]))
    assert a.checkpoint == "runs/at/best.pt" and a.plot == ""
    a = p.parse_args(glue(["--plot", "robustbench:Sitawarin2020Improving"]))
    assert a.checkpoint == "robustbench:Sitawarin2020Improving" and a.plot == ""
    a = p.parse_args(glue(["ck.pt", "--plot", "fig.pdf"]))
    assert a.checkpoint == "ck.pt" and a.plot == "fig.pdf"
    a = p.parse_args(glue(["ck.pt", "--plot"]))
    assert a.plot == "" and p.parse_args(["ck.pt"]).plot is None
    (tmp_path / "surf").mkdir()
    s = surface_cli.build_parser()
    glue = lambda argv: glue_optional_values(argv, {"--resume": is_folder_token})
    a = s.parse_args(glue(["--resume", "ck.pt"]))
    assert a.checkpoint == "ck.pt" and a.resume == ""
    a = s.parse_args(glue(["ck.pt", "--resume", str(tmp_path / "surf")]))
    assert a.resume == str(tmp_path / "surf")


def test_spectrum_plot_without_a_path_lands_beside_the_json(trained_digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck = str(trained_digits / "best.pt")
    assert spectrum_cli.main([ck, "--top-k", "1", "--samples", "32", "--json", "s.json", "--plot"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert spectrum_cli.main(["--plot", ck, "--top-k", "1", "--samples", "32"]) == 0
    assert (tmp_path / "best-spectrum.png").exists()


def test_surface_plot_path_and_resume_dir(trained_digits, tmp_path):
    ck = str(trained_digits / "best.pt")
    common = [ck, "--dim", "2", "--x", "-1:1:3", "--y", "-1:1:3", "--samples", "32", "--out", str(tmp_path / "s")]
    assert surface_cli.main([*common, "--plot", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").exists() and (tmp_path / "fig_3d.png").exists()
    first = (tmp_path / "s" / "surface.json").read_text()
    # --resume DIR names the run by its folder (a finished run resumes to the same numbers)
    assert surface_cli.main([ck, "--dim", "2", "--x", "-1:1:3", "--y", "-1:1:3", "--samples", "32",
                             "--resume", str(tmp_path / "s")]) == 0
    import json
    assert json.loads((tmp_path / "s" / "surface.json").read_text())["loss"] == json.loads(first)["loss"]


def test_train_resume_without_a_folder_finds_the_run_its_flags_name(tmp_path, capsys):
    args = ["--method", "standard", "--train-samples", "64", "--val-samples", "16", "--batch-size", "32",
            "--epochs", "1", "--quiet", "--runs-dir", str(tmp_path)]
    assert train_cli.main(args) == 0
    first = capsys.readouterr().out
    assert train_cli.main([*args, "--resume"]) == 0
    again = capsys.readouterr().out
    assert str(tmp_path / "standard-digits-s0") in again and again == first


def test_sharpness_means_the_top_eigenvalue_only():
    """Issue 21: the analysis' loss increases under weight perturbation are not called 'sharpness' (the old
    names' deprecated aliases went with issue 32: 0.1.0 had no outside users)."""
    import landscape.analysis as analysis
    assert hasattr(analysis, "average_loss_increase") and hasattr(analysis, "worst_case_loss_increase")
    assert not hasattr(analysis, "average_sharpness") and not hasattr(analysis, "worst_case_sharpness")


def test_one_switch_for_batchnorm_modes():
    """The attack's and the Hessian's BatchNorm modes go through one function (attacks.eval_mode)."""
    import inspect
    from landscape.analysis import hessian
    assert "eval_mode(" in inspect.getsource(hessian.HessianOperator._mode)
    assert "track_running_stats = False" not in inspect.getsource(hessian)
