"""Issue 32, item 1: one constraint table per settings object, and the command line and the API refuse the
same values with the same words.

The walk: every option of every console parser that a table constrains is given values its constraint
refuses (below the low end, above the high end, NaN, infinity, a non-number, a choice that is none) on the
command line (argparse exits 2, one line) and to the API object that owns the setting (``TrainConfig``,
``AttackSpec``, the analysis settings' ``validate``); both must say ``{value!r} {reason}`` in the same words.
Then every number option of every parser must have a table constraint, and each drift the issue named is
checked by name.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from cases import MatrixOp
from landscape.analysis import settings as analysis_settings
from landscape.analysis.spectrum import spectral_density, top_eigenvalues
from landscape.analysis.trace import hessian_trace
from landscape.attack_spec import CONSTRAINTS as ATTACK, FLAGS as ATTACK_FLAGS, AttackSpec
from landscape.cli import eval as eval_cli
from landscape.cli import plot as plot_cli
from landscape.cli import spectrum as spectrum_cli
from landscape.cli import surface as surface_cli
from landscape.cli import train as train_cli
from landscape.constraints import (MAX_HOURS, SEED, Interval, NoneOr, OneOf, argparse_type, check_value, flag,
                                   message, validate)
from landscape.errors import ConfigError
from landscape.training.config import CONSTRAINTS as TRAIN, MAX_LR, TrainConfig
from landscape.training.ema import ema_model

ANALYSIS = analysis_settings.CONSTRAINTS


def _train_api(field, value):
    TrainConfig(**{field: value}).resolved()


def _attack_api(field, value):
    AttackSpec(**{"eps": 0.1, field: value})


def _analysis_api(field, value):
    validate({field: value}, ANALYSIS)


def _hours_api(field, value):
    validate({field: value}, {"max_hours": MAX_HOURS})


#: each console script: its parser, and the tables (field -> constraint, flags, the API that refuses)
SCRIPTS = {
    "train": (train_cli.build_parser, [(TRAIN, None, _train_api), ({"max_hours": MAX_HOURS}, None, _hours_api)]),
    "eval": (eval_cli.build_parser, [(ATTACK, ATTACK_FLAGS, _attack_api), (ANALYSIS, None, _analysis_api)]),
    "spectrum": (spectrum_cli.build_parser, [(ATTACK, ATTACK_FLAGS, _attack_api), (ANALYSIS, None, _analysis_api)]),
    "surface": (surface_cli.build_parser, [(ATTACK, ATTACK_FLAGS, _attack_api), (ANALYSIS, None, _analysis_api)]),
}
POSITIONAL = {"train": [], "eval": ["ck.pt"], "spectrum": ["ck.pt"], "surface": ["ck.pt"]}
#: number options with no settings object behind them (presentation only)
NO_API = {"plot": {"--dpi"}}


def refused_texts(c) -> list[str]:
    """Command-line texts that ``c`` refuses: past each end, NaN and infinity for floats, a fraction for
    ints, a word for numbers, a choice that is none."""
    c = c.inner if isinstance(c, NoneOr) else c
    if isinstance(c, OneOf):
        return ["no-such-choice"]
    out = ["many"]
    if c.lo is not None:
        out.append(repr(c.lo if c.lo_open else c.lo - 1))
    if c.hi is not None:
        out.append(repr(c.hi if c.hi_open else c.hi + 1))
    out += ["nan", "inf", "-inf"] if c.kind is float else ["1.5"]
    return out


def _value(c, text: str):
    """What argparse's type, and so the API, is handed for ``text``: the parsed value, or the text."""
    try:
        return c.parse(text)
    except ValueError:
        return text


def _cases():
    for script, (build, tables) in SCRIPTS.items():
        opts = {o: a for a in build()._actions for o in a.option_strings}
        for table, flags, api in tables:
            for field, c in table.items():
                opt = flag(field, flags)
                if opt in opts:
                    for text in refused_texts(c):
                        yield pytest.param(script, opt, field, c, text, api, id=f"{script}{opt}={text}")


CASES = list(_cases())


@pytest.mark.parametrize("script,opt,field,constraint,text,api", CASES)
def test_cli_and_api_refuse_alike(script, opt, field, constraint, text, api, capsys):
    value = _value(constraint, text)
    reason = constraint.check(value)
    assert reason is not None, (opt, text)
    said = f"{value!r} {reason}"
    with pytest.raises(ConfigError) as err:
        api(field, value)
    assert str(err.value) == f"{opt}: {said}"            # the one format: "--flag: VALUE REASON"
    with pytest.raises(SystemExit) as ex:
        SCRIPTS[script][0]().parse_args([*POSITIONAL[script], f"{opt}={text}"])
    assert ex.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f": {said} (see --help)" in lines[0] and "argument " + opt in lines[0], lines


def test_the_walk_covers_every_table_and_script():
    assert {c.values[0] for c in CASES} == set(SCRIPTS)
    walked = {(c.values[0], c.values[2]) for c in CASES}
    assert all(("train", f) in walked for f in TRAIN), "a TrainConfig field without its flag"
    for field in ATTACK:
        assert all((s, field) in walked for s in ("eval", "spectrum", "surface")), field
    for field in ANALYSIS:
        assert any((s, field) in walked for s in ("eval", "spectrum", "surface")), f"{field}: no option"
    assert len(CASES) >= 150


@pytest.mark.parametrize("script", [*SCRIPTS, "plot"])
def test_every_number_option_has_a_table_constraint(script):
    """Each int/float option takes its type from a table (argparse_type names it int/float); the few
    presentation-only options in NO_API excepted. No bare int/float is left (nan, -1, 1e300 would pass)."""
    build = SCRIPTS[script][0] if script in SCRIPTS else plot_cli.build_parser
    tables = SCRIPTS[script][1] if script in SCRIPTS else []
    constrained = {flag(f, flags) for table, flags, _ in tables for f in table} | NO_API.get(script, set())
    for a in build()._actions:
        if not a.option_strings or a.choices or a.type is None:
            continue
        assert a.type not in (int, float), f"landscape-{script} {a.option_strings[0]}: a bare {a.type.__name__}"
        if getattr(a.type, "__name__", "") in ("int", "float"):
            assert set(a.option_strings) & constrained, f"landscape-{script} {a.option_strings}: in no table"


# --- the constraints themselves ---------------------------------------------------------------------------

def test_reasons_are_uniform():
    assert Interval(int, 1).check(0) == "must be >= 1"
    assert Interval(float, 0.0, lo_open=True).check(0.0) == "must be > 0"
    assert Interval(float, 0.0, 1.0, hi_open=True).check(1.0) == "must be in [0, 1)"
    assert Interval(float, 0.0, MAX_LR, lo_open=True).check(11.0) == "must be in (0, 10]"
    assert Interval(float, hi=2.0).check(3.0) == "must be <= 2"
    assert Interval(float).check(math.nan) == "must be a finite number"
    assert Interval(float).check("x") == "must be a number"
    assert Interval(int).check(True) == "must be an integer" and Interval(int).check(2.0) == "must be an integer"
    assert Interval(float, 0.0).check(10 ** 400) is None and Interval(int, 0).check(np.int64(3)) is None
    assert OneOf(("a", "b")).check("c") == "must be one of a, b"
    assert NoneOr(Interval(int, 1)).check(None) is None and NoneOr(Interval(int, 1)).check(0) == "must be >= 1"
    assert SEED.check(2 ** 63) == "must be in [0, 9223372036854775807]" and SEED.check(2 ** 63 - 1) is None
    with pytest.raises(ConfigError, match=r"^--batch-size: 0 must be >= 1$"):
        validate({"batch_size": 0, "other": object()}, {"batch_size": Interval(int, 1)})
    assert message("--x", 1.5, "must be an integer") == "--x: 1.5 must be an integer"
    with pytest.raises(ConfigError, match=r"^grid_points: 1 must be >= 2$"):
        check_value("grid_points", 1, Interval(int, 2))
    parse = argparse_type(Interval(float, 0.0))
    assert parse("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match=r"^-0\.5 must be >= 0$"):
        parse("-0.5")
    with pytest.raises(argparse.ArgumentTypeError, match=r"^'x' must be a number$"):
        parse("x")


def test_tables_hold_only_constraints_and_the_seed_is_one():
    for table in (TRAIN, ATTACK, ANALYSIS):
        assert all(isinstance(c, (Interval, OneOf, NoneOr)) for c in table.values())
    assert TRAIN["seed"] is SEED and TRAIN["split_seed"] is SEED and ANALYSIS["seed"] is SEED
    assert TRAIN["steps"] is ATTACK["steps"] and TRAIN["step_size"] is ATTACK["step_size"]


# --- the drift the issue found, each refused alike now ------------------------------------------------------

def _cli_error(build, argv, capsys) -> str:
    with pytest.raises(SystemExit) as ex:
        build().parse_args(argv)
    assert ex.value.code == 2
    return capsys.readouterr().err


def _api_error(call) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    return str(err.value)


def test_spectrum_refuses_a_negative_eps_as_every_script_does(capsys):
    api = _api_error(lambda: AttackSpec(eps=-0.1))
    assert api == "--eps: -0.1 must be >= 0"
    for build in (spectrum_cli.build_parser, eval_cli.build_parser, surface_cli.build_parser):
        assert "argument --eps: -0.1 must be >= 0" in _cli_error(build, ["ck.pt", "--eps", "-0.1"], capsys)
    assert "argument --eps: -0.1 must be in [0, 1]" in _cli_error(train_cli.build_parser, ["--eps", "-0.1"], capsys)
    assert _api_error(lambda: TrainConfig(eps=-0.1).resolved()) == "--eps: -0.1 must be in [0, 1]"


def test_the_learning_rate_cap_holds_in_the_api_too(capsys):
    assert _api_error(lambda: TrainConfig(lr=1e300).resolved()) == "--lr: 1e+300 must be in (0, 10]"
    assert "argument --lr: 1e+300 must be in (0, 10]" in _cli_error(train_cli.build_parser, ["--lr", "1e300"], capsys)
    assert TrainConfig(lr=MAX_LR).resolved().lr == MAX_LR


def test_momentum_is_checked(capsys):
    assert _api_error(lambda: TrainConfig(momentum=-1.0).resolved()) == "--momentum: -1.0 must be in [0, 1)"
    assert _api_error(lambda: TrainConfig(momentum=1.0).resolved()) == "--momentum: 1.0 must be in [0, 1)"
    assert "argument --momentum: 1.0 must be in [0, 1)" in _cli_error(train_cli.build_parser, ["--momentum", "1"],
                                                                      capsys)
    assert TrainConfig(momentum=0.0).resolved().momentum == 0.0


def test_ema_one_is_refused_alike(capsys):
    assert _api_error(lambda: TrainConfig(ema=1.0).resolved()) == "--ema: 1.0 must be in [0, 1)"
    assert "argument --ema: 1.0 must be in [0, 1)" in _cli_error(train_cli.build_parser, ["--ema", "1"], capsys)
    assert TrainConfig(ema=0.0).resolved().ema == 0.0 and TrainConfig(ema=0.995).resolved().ema == 0.995
    with pytest.raises(ConfigError, match=r"^--ema: 1\.0 must be in \(0, 1\)$"):   # the EMA itself needs a decay
        ema_model(torch.nn.Linear(2, 2), 1.0)


def test_top_k_has_one_range(capsys):
    op = MatrixOp(torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)))
    assert _api_error(lambda: top_eigenvalues(op, k=-1)) == "--top-k: -1 must be >= 0"
    assert "argument --top-k: -1 must be >= 0" in _cli_error(spectrum_cli.build_parser, ["ck.pt", "--top-k", "-1"],
                                                             capsys)
    too_many = "--top-k: 7 exceeds the number of weights (6); ask for fewer eigenvalues"
    assert _api_error(lambda: top_eigenvalues(op, k=7)) == too_many
    assert _api_error(lambda: spectrum_cli._check_top_k(7, 6)) == too_many     # the CLI's check is the same
    spectrum_cli._check_top_k(6, 6)                                            # k = n: both accept it
    assert np.allclose(top_eigenvalues(op, k=6).values, np.arange(6.0, 0.0, -1.0))
    assert "ask for at least 1" in _api_error(lambda: top_eigenvalues(op, k=0))


def test_the_seed_range_is_written_once(capsys):
    said = f"{2 ** 63!r} must be in [0, {2 ** 63 - 1}]"
    for build, pos in ((train_cli.build_parser, []), (eval_cli.build_parser, ["ck.pt"]),
                       (spectrum_cli.build_parser, ["ck.pt"]), (surface_cli.build_parser, ["ck.pt"])):
        assert f"argument --seed: {said}" in _cli_error(build, [*pos, "--seed", str(2 ** 63)], capsys)
    assert _api_error(lambda: TrainConfig(seed=2 ** 63).resolved()) == f"--seed: {said}"
    assert _api_error(lambda: TrainConfig(split_seed=-1).resolved()) == "--split-seed: -1 must be in [0, " \
                                                                        f"{2 ** 63 - 1}]"
    op = MatrixOp(torch.eye(4, dtype=torch.float64))
    assert _api_error(lambda: top_eigenvalues(op, k=1, seed=-1)) == f"--seed: -1 must be in [0, {2 ** 63 - 1}]"


def test_the_analysis_functions_use_the_table():
    op = MatrixOp(torch.eye(8, dtype=torch.float64))
    assert _api_error(lambda: top_eigenvalues(op, k=1, tol=0.0)) == "--tol: 0.0 must be > 0"
    assert _api_error(lambda: top_eigenvalues(op, k=1, atol=-1.0)) == "--atol: -1.0 must be >= 0"
    assert _api_error(lambda: top_eigenvalues(op, k=1, max_hvps=0)) == "--max-hvps: 0 must be >= 1"
    assert _api_error(lambda: top_eigenvalues(op, k=2.5)) == "--top-k: 2.5 must be an integer"
    steps = analysis_settings.MIN_DENSITY_STEPS
    assert _api_error(lambda: spectral_density(op, lanczos_steps=steps - 1)) == \
        f"--density-steps: {steps - 1} must be >= {steps}"
    assert _api_error(lambda: spectral_density(op, n_probes=0)) == "--density-probes: 0 must be >= 1"
    assert _api_error(lambda: spectral_density(op, sigma=-1.0)) == "--sigma: -1.0 must be > 0"
    assert _api_error(lambda: hessian_trace(op, tol=-1.0)) == "--trace-tol: -1.0 must be >= 0"
    assert _api_error(lambda: hessian_trace(op, max_hvps=0)) == "--trace-max-hvps: 0 must be >= 1"
    assert op.hvp_count == 0


@pytest.mark.parametrize("field,flag,value", [("square_queries", "--square-queries", 0), ("batch_size", "--batch-size", 0),
                                              ("seed", "--seed", -3)])
def test_the_audit_refuses_landscape_evals_options_in_its_words(field, flag, value, capsys):
    """The audit's own loop checked its ranges with other words: its settings are a table now, and the
    keywords that are landscape-eval's options are refused as the command line refuses them."""
    from landscape.audit.context import AuditSettings
    api = _api_error(lambda: AuditSettings(**{field: value}))
    assert f"argument {api}" in _cli_error(eval_cli.build_parser, ["ck.pt", "--audit", flag, str(value)], capsys)


@pytest.mark.parametrize("kw,words", [(dict(effort_restarts=0), "effort_restarts: 0 must be >= 1"),
                                      (dict(eot=1.5), "eot: 1.5 must be an integer"),
                                      (dict(noise_draws=True), "noise_draws: True must be an integer"),
                                      (dict(sweep=(2.0, -1.0)), "sweep: -1.0 must be > 0")])
def test_the_audits_own_settings_are_one_table(kw, words):
    from landscape.audit.context import AuditSettings
    assert _api_error(lambda: AuditSettings(**kw)) == words
