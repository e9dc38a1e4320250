"""The console scripts a study runs, as the study sees them: which script a step kind is, which of its options
the study sets itself, which take paths, and how a table of options becomes an argv that the script's own
parser accepts (``options_argv``, checked by ``check_argv`` with that parser, so a study file is validated by
the very constraint tables of the console scripts).

The study sits above the single-model console scripts it drives: it imports their parsers (lazily, one
function), never the other way round."""
from __future__ import annotations

import argparse
import functools
import importlib
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

#: step kind -> (console script, module of its parser)
SCRIPTS: dict[str, tuple[str, str]] = {
    "train": ("landscape-train", "landscape.cli.train"),
    "eval": ("landscape-eval", "landscape.cli.eval"),
    "spectrum": ("landscape-spectrum", "landscape.cli.spectrum"),
    "surface": ("landscape-surface", "landscape.cli.surface"),
}
ANALYSES = tuple(k for k in SCRIPTS if k != "train")

#: options each kind's command gets from the study (where its files go, how it resumes): not the user's
RESERVED: dict[str, tuple[str, ...]] = {
    "train": ("runs-dir", "out", "name", "resume", "overwrite", "json", "method", "eps", "seed"),
    "eval": ("json", "autoattack-state"),
    "spectrum": ("json",),
    "surface": ("out", "json", "resume", "overwrite"),
}
#: options whose value is a path (relative ones are taken from the study file's folder)
PATH_OPTIONS = frozenset({"data-dir", "model-dir", "surrogate", "to", "trajectory"})


def parser(kind: str) -> argparse.ArgumentParser:
    """A fresh copy of the console script's own parser (``build_parser`` of its module)."""
    return importlib.import_module(SCRIPTS[kind][1]).build_parser()


@functools.lru_cache(maxsize=None)
def _options(kind: str) -> dict[str, argparse.Action]:
    """The script's options by flag, read once per process: every command of a study is built from them
    (``options_argv`` only reads them; a parser that parses is made fresh by ``parser``)."""
    return dict(parser(kind)._option_string_actions)


def format_value(v: Any) -> str:
    """A TOML value as a command-line word: floats keep every digit (8/255 stays exact), ints as written."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def options_argv(kind: str, options: Mapping[str, Any], where: str) -> list[str]:
    """``--key value`` words for ``options`` of a ``kind`` step, in the table's order. ``true`` gives a flag,
    ``false`` leaves a flag out (``--no-KEY`` for a two-way flag), a list gives several values. An unknown
    option, a reserved one or a value of the wrong shape is a ``ConfigError`` naming ``where`` and the key."""
    actions = _options(kind)
    out: list[str] = []
    for key, value in options.items():
        a = actions.get(f"--{key}")
        if a is None or key in ("help",):
            known = sorted(o[2:] for o in actions if o.startswith("--")
                           and o[2:] not in RESERVED[kind] and o != "--help")
            raise ConfigError(f"{where}: unknown option {key!r} of {SCRIPTS[kind][0]}; its options: "
                              f"{', '.join(known)}")
        if key in RESERVED[kind]:
            raise ConfigError(f"{where}: {key!r} is set by the study itself (where files go, the grid's "
                              "axes, resuming); leave it out")
        flag = f"--{key}"
        if isinstance(a, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key!r} is true or false, got {value!r}")
            out.append(flag if value else f"--no-{key}")
        elif a.nargs == 0:      # store_true / store_false / store_const
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key!r} is a flag: write {key} = true (or leave it out), got "
                                  f"{value!r}")
            if value:
                out.append(flag)
        elif a.nargs == "?" and isinstance(value, bool):
            if value:
                out.append(flag)
        elif isinstance(value, (list, tuple)):
            if a.nargs not in ("+", "*") and not isinstance(a.nargs, int):
                raise ConfigError(f"{where}: {key!r} takes one value, got the list {value!r}")
            out += [flag, *(format_value(v) for v in value)]
        elif isinstance(value, dict):
            raise ConfigError(f"{where}: {key!r} takes a value, got a table")
        elif isinstance(value, bool):
            raise ConfigError(f"{where}: {key!r} takes a value, not true/false")
        else:
            out += [flag, format_value(value)]
    return out


class _Refused(Exception):
    pass


def check_argv(kind: str, argv: Sequence[str], where: str) -> argparse.Namespace:
    """Parse ``argv`` with the console script's parser (its types and ranges): a refusal is a ``ConfigError``
    naming ``where`` with the parser's own words."""
    p = parser(kind)

    def error(message: str):
        raise _Refused(message)
    p.error = error          # type: ignore[method-assign]   (one parser object, made for this call)
    try:
        ns = p.parse_args(list(argv))
    except _Refused as e:
        raise ConfigError(f"{where}: {SCRIPTS[kind][0]} refuses it: {e}") from None
    except SystemExit:     # --help or --version in a study file
        raise ConfigError(f"{where}: {SCRIPTS[kind][0]} would print and exit; remove that option") from None
    combos = getattr(importlib.import_module(SCRIPTS[kind][1]), "check_args", None)
    try:
        if combos is not None:      # flags that parse but cannot run together
            combos(ns)
    except ConfigError as e:
        raise ConfigError(f"{where}: {SCRIPTS[kind][0]} refuses it: {e}") from None
    return ns


def given_options(kind: str, argv: Sequence[str]) -> set[str]:
    """The destinations of the options ``argv`` gives (not those left at their defaults), by the console
    script's own rule (``cli.attack_args.given_options``)."""
    from ..cli.attack_args import given_options as given
    return given(lambda: parser(kind), list(argv))
