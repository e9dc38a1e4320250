"""The ranges of the analysis settings: the options of landscape-spectrum, landscape-surface and
landscape-eval that are not the attack's (those are ``attack_spec.CONSTRAINTS``), in one table.

The console scripts take their argparse types from ``CONSTRAINTS`` (``cli.common.cli_types``); the public
analysis functions check the same values against it (``top_eigenvalues``' k, tol, atol, max_hvps and seed;
``spectral_density``'s probes, steps and sigma; ``hessian_trace``'s tol and budget), so that the API and the
command line refuse the same values with the same words (``constraints.validate``).
"""
from __future__ import annotations

from ..constraints import MAX_HOURS, SEED, Interval, NoneOr, check_value, flag
from ..errors import ConfigError

MIN_DENSITY_STEPS = 5  # SLQ with m steps gives m nodes per probe: fewer than 5 is a few spikes, not a density
MAX_CURVATURE_ITERS = 10_000   # Lanczos steps of one sample's input curvature: more is a typo, not a setting

#: field -> constraint (its flag: ``--top-k`` for ``top_k``)
CONSTRAINTS = {
    # top-k eigenvalues (0: none, on the command line; ``top_eigenvalues`` needs at least one)
    "top_k": Interval(int, 0),
    "tol": Interval(float, 0.0, lo_open=True),
    "atol": Interval(float, 0.0),
    "max_hvps": NoneOr(Interval(int, 1)),
    # trace
    "trace_tol": Interval(float, 0.0),
    "trace_max_hvps": NoneOr(Interval(int, 1)),
    # density (SLQ)
    "density_probes": Interval(int, 1),
    "density_steps": Interval(int, MIN_DENSITY_STEPS),
    "sigma": NoneOr(Interval(float, 0.0, lo_open=True)),
    # surfaces
    "eigen_tol": Interval(float, 0.0, lo_open=True),
    "curvature_iters": Interval(int, 0, MAX_CURVATURE_ITERS),
    # evaluation
    "square_queries": Interval(int, 1),
    # every analysis
    "samples": NoneOr(Interval(int, 1)),
    "batch_size": NoneOr(Interval(int, 1)),
    "seed": SEED,
    "max_hours": MAX_HOURS,
}


def check_top_k(k: int, num_params: int) -> None:
    """The one rule for how many eigenvalues a model has: ``k`` in the table's range and at most the number
    of weights (``ConfigError`` in the one message format). Cost: none."""
    check_value(flag("top_k"), k, CONSTRAINTS["top_k"])
    if k > num_params:
        raise ConfigError(f"{flag('top_k')}: {k!r} exceeds the number of weights ({num_params:,}); ask for fewer "
                          "eigenvalues")


__all__ = ["CONSTRAINTS", "MIN_DENSITY_STEPS", "MAX_CURVATURE_ITERS", "check_top_k"]
