"""Declarative ranges of settings: one table per settings object, one check, one message.

A table maps a field name to a constraint: ``Interval`` (an int or a finite float between bounds), ``OneOf``
(one of some choices) or ``NoneOr`` (None, meaning "the default", or what another constraint allows). Each
constraint's ``check(value)`` gives the reason a value is refused, in the same words everywhere ("must be
>= 1", "must be in (0, 10]", "must be a finite number", "must be one of a, b"), or None.

One message format, for the API and the command line alike: ``"{flag}: {value!r} {reason}"``, the flag of a
field being ``--batch-size`` for ``batch_size`` unless the table's owner names another (``AttackSpec``'s
``batch_size`` is ``--attack-batch-size``). ``validate`` raises it as a ``ConfigError``; ``argparse_type``
makes the argparse type of a constraint, whose refusal argparse prints as ``argument {flag}: {value!r}
{reason}``: the same words.

The tables live beside their owners: ``training.config.CONSTRAINTS`` (TrainConfig),
``attack_spec.CONSTRAINTS`` (AttackSpec), ``analysis.settings.CONSTRAINTS`` (spectrum, surface and
evaluation settings); the console scripts' argparse types are made from them (``cli.common.cli_types``).
"""
from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from .errors import ConfigError


class Constraint(Protocol):
    """What a table holds: a check giving the reason a value is refused (None: accepted), and the parse of
    a command-line text into the value to check (``ValueError`` when it is no such value)."""

    def check(self, value: Any) -> str | None: ...

    def parse(self, text: str) -> Any: ...


def _num(v: float) -> str:
    """A bound as written in a reason: ints in full, floats as ``%g``."""
    return str(v) if isinstance(v, int) else f"{v:g}"


@dataclass(frozen=True)
class Interval:
    """An int (``kind=int``, bools refused) or a finite float (``kind=float``, ints accepted) between ``lo``
    and ``hi`` (None: unbounded), each end closed unless ``lo_open`` / ``hi_open``."""
    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        """The range in words: ``>= 1``, ``> 0``, ``<= 10``, ``in [0, 1)``, or ``a finite number``."""
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(lo)}, {_num(hi)}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(lo)}"
        if hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(hi)}"
        return "an integer" if self.kind is int else "a finite number"

    def check(self, value: Any) -> str | None:
        """The reason ``value`` is refused: not an integer / not a number / not finite / out of range."""
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                return "must be an integer"
        else:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                return "must be a number"
            if not isinstance(value, numbers.Integral) and not math.isfinite(value):   # (an int always is)
                return "must be a finite number"
        below = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        above = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        return f"must be {self.describe()}" if below or above else None

    def parse(self, text: str) -> Any:
        """``int(text)`` or ``float(text)``."""
        return self.kind(text)


@dataclass(frozen=True)
class OneOf:
    """One of ``choices`` (compared with ``==``)."""
    choices: tuple

    def check(self, value: Any) -> str | None:
        """The reason ``value`` is refused: not one of the choices."""
        return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))}"

    def parse(self, text: str) -> Any:
        """The text itself."""
        return text


@dataclass(frozen=True)
class NoneOr:
    """None (the default, filled in by the owner), or a value ``inner`` accepts."""
    inner: Any

    def check(self, value: Any) -> str | None:
        """None for None, else ``inner``'s reason."""
        return None if value is None else self.inner.check(value)

    def parse(self, text: str) -> Any:
        """``inner``'s parse (a command line cannot give None)."""
        return self.inner.parse(text)


#: a random seed: what ``torch.Generator.manual_seed`` and numpy take alike
SEED = Interval(int, 0, 2 ** 63 - 1)
#: a time limit in hours (``--max-hours``)
MAX_HOURS = Interval(float, 0.0, lo_open=True)


def flag(field: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag of a field: ``flags[field]``, else ``--batch-size`` for ``batch_size``."""
    return (flags or {}).get(field) or "--" + field.replace("_", "-")


def message(name: str, value: Any, reason: str) -> str:
    """The one refusal format: ``--eps: -0.1 must be >= 0``."""
    return f"{name}: {value!r} {reason}"


def check_value(name: str, value: Any, constraint: Constraint) -> None:
    """Raise ``ConfigError`` (``message``) when ``constraint`` refuses ``value``; ``name`` as printed."""
    reason = constraint.check(value)
    if reason is not None:
        raise ConfigError(message(name, value, reason))


def validate(values: Mapping[str, Any], table: Mapping[str, Constraint],
             flags: Mapping[str, str] | None = None) -> None:
    """Check every field of ``values`` that ``table`` constrains, in the table's order; the first refusal
    is a ``ConfigError`` naming the field's flag (``flag``). Fields the table lacks are not checked."""
    for field, constraint in table.items():
        if field in values:
            check_value(flag(field, flags), values[field], constraint)


def argparse_type(constraint: Constraint) -> Callable[[str], Any]:
    """An argparse ``type=`` for ``constraint``: the parsed value, or ``argparse.ArgumentTypeError`` with
    ``{value!r} {reason}`` (argparse prefixes ``argument --flag:``), the words ``validate`` uses. A text
    that is no number is refused as "'x' must be a number" (or "an integer")."""
    def parse(text: str) -> Any:
        try:
            value = constraint.parse(text)
        except ValueError:
            value = text
        reason = constraint.check(value)
        if reason is not None:
            raise argparse.ArgumentTypeError(f"{value!r} {reason}")
        return value
    kind = getattr(getattr(constraint, "inner", constraint), "kind", str)
    parse.__name__ = kind.__name__   # argparse's name of the type in its own messages
    return parse


__all__ = ["Constraint", "Interval", "OneOf", "NoneOr", "SEED", "MAX_HOURS", "flag", "message", "check_value",
           "validate", "argparse_type"]
