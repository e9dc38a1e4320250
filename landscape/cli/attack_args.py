"""The attack flags every analysis CLI shares (eval, spectrum, surface), and the ``AttackSpec`` they make.

The one eps rule: a flag wins, else the checkpoint's training attack; no eps from either, where an attack
is needed, is a one-line error asking for --eps (``attack_spec.MissingEpsError``, exit 2).
"""
from __future__ import annotations

import argparse
from typing import Callable, Mapping, Sequence

from ..attack_spec import ATTACK_BN, DEFAULT_BATCH_SIZE, AttackSpec, resolve_attack
from ..attacks import NORMS
from ..errors import ConfigError, ResourceError


def add_attack_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, steps: int | None = None) -> None:
    """--eps, --steps (default ``steps``, else the checkpoint's, else 10), --step-size, --restarts,
    --attack-norm, --attack-batch-size, --attack-bn, --no-random-start."""
    p.add_argument("--eps", type=float, help="attack budget (default: the checkpoint's training eps; a "
                                             "checkpoint without one needs --eps)")
    p.add_argument("--steps", type=int, default=steps,
                   help=f"PGD steps (default {steps})" if steps is not None
                   else "PGD steps (default: the checkpoint's, else 10)")
    p.add_argument("--step-size", type=float,
                   help="PGD step size (default: the checkpoint's when eps and steps are its own, else 2.5*eps/steps)")
    p.add_argument("--restarts", type=int, help="PGD random restarts, each sample keeps its worst (default 1)")
    p.add_argument("--attack-norm", choices=NORMS, help="attack norm (default: the checkpoint's, else linf)")
    p.add_argument("--attack-batch-size", type=int,
                   help=f"samples per attack batch; each is seeded by its position (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--attack-bn", choices=ATTACK_BN,
                   help="BatchNorm during the attack: eval (running statistics, default) or batch statistics")
    p.add_argument("--no-random-start", dest="random_start", action="store_false", default=None,
                   help="start PGD at the input instead of a random point of the eps-ball")


def attack_from_args(args: argparse.Namespace, config: Mapping | None) -> AttackSpec:
    """The ``AttackSpec`` the flags ask for on a checkpoint with ``config`` (``resolve_attack``). Restarts
    without a random start are refused: each would be the same attack, labelled as several."""
    spec = resolve_attack(config, eps=args.eps, steps=args.steps, step_size=args.step_size,
                          norm=args.attack_norm, random_start=args.random_start, restarts=args.restarts,
                          batch_size=args.attack_batch_size, bn=args.attack_bn)
    if spec.restarts > 1 and not spec.random_start:
        raise ConfigError(f"--restarts {spec.restarts} repeats PGD from new random starts; with --no-random-start "
                          "every restart is the same attack: drop one of them")
    return spec


def describe_attack(a: AttackSpec) -> str:
    """A short human description, e.g. ``eps 0.1, 20 PGD steps of 0.0125``."""
    extra = "" if a.norm == "linf" else f" {a.norm}"
    extra += "" if a.restarts == 1 else f", {a.restarts} restarts"
    return f"eps {a.eps:g}{extra}, {a.steps} PGD steps of {a.alpha:.3g}"


def given_options(build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> set[str]:
    """The destinations of the options given on the command line ``argv`` (None: ``sys.argv``), not those
    left at their defaults: the options a mode that ignores them may refuse (a default is never refused)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


#: the destinations of the attack's flags (``add_attack_arguments``)
ATTACK_DESTS = ("eps", "steps", "step_size", "restarts", "attack_norm", "attack_batch_size", "attack_bn",
                "random_start")


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h``, ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def _num(p: float) -> str:
    return f"{p:,.3g}" if p < 10 else f"{p:,.0f}"


def check_estimate(prog: str, parts: Sequence[tuple[str, float]], samples: int, pass_seconds: float,
                   max_hours: float | None, advice: str, extra: Sequence[tuple[str, float]] = ()) -> str:
    """The estimate line of a command's work (``prog: estimated ~12 min: N samples x ~P forward+backward
    passes each (PART P1, ...) at T ms per sample-pass (timed here)``), or a ``ResourceError`` in one line
    when it exceeds ``max_hours`` (None: no limit). ``parts``: (label, passes per sample); ``extra``: (label,
    sample-passes in all) of work on other samples (validation, probe sets); ``advice``: what to reduce."""
    per = sum(p for _, p in parts)
    more = sum(p for _, p in extra)
    seconds = (per * samples + more) * pass_seconds
    what = (f"{samples:,} samples x ~{_num(per)} forward+backward passes each ("
            + ", ".join(f"{label} {_num(p)}" for label, p in parts) + ")")
    if more:
        what += f" + {_num(more)} sample-passes (" + ", ".join(f"{label} {_num(p)}" for label, p in extra) + ")"
    what += f" at {pass_seconds * 1e3:.2g} ms per sample-pass (timed here)"
    if max_hours is not None and seconds / 3600 > max_hours:
        raise ResourceError(f"{what} is ~{seconds / 3600:,.1f} hours, more than --max-hours {max_hours:g}; "
                            f"{advice}, or raise --max-hours")
    return f"{prog}: estimated ~{duration(seconds)}: {what}"
