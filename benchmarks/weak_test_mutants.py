"""Issue 21, item 5: each test that was made to bite fails on a mutant that its old version let pass.

For every mutant: a pytest plugin applies it (a monkeypatch at configure time), then the OLD test (its file
as of commit ``--base``, copied beside today's tests) and the NEW test run under it. The table says which
passed. Without a mutant both versions must pass (the control row).

    python benchmarks/weak_test_mutants.py            # ~5 min on 2 cores
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (test file, old test id, new test id(s), what the mutant does, plugin code applying it)
MUTANTS = {
    "hsat-0-or-full": (
        "test_trainer.py", "test_hsat_and_sharpness_tracking_complete_and_log",
        ["test_hsat_bisection_finds_the_largest_admissible_eps", "test_hsat_and_sharpness_tracking_complete_and_log"],
        "H-SAT's calibration returns 0 below lambda 1 instead of the bisection's answer",
        """
        from landscape.training import hsat
        real = hsat.HSatCalibrator.calibrate
        def calibrate(self, model, lam, v0=None):
            out = real(self, model, lam, v0)
            if lam < 1.0:
                out["eps_t"] = 0.0
            return out
        hsat.HSatCalibrator.calibrate = calibrate
        """),
    "val-leaks-5": (
        "test_data.py", "test_digits_splits_are_disjoint_deterministic_and_cover_the_training_set",
        ["test_digits_splits_are_disjoint_deterministic_and_cover_the_training_set"],
        "5 validation images also in the training split (sizes unchanged: 5 training images replaced)",
        """
        import torch
        from landscape import data
        def _partition(n, fraction, seed, held_out):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            k = int(round(fraction * n))
            rest = perm[k:].clone()
            rest[:5] = perm[:5]
            return (perm[:k] if held_out else rest).sort().values
        data._partition = _partition
        """),
    "autoattack-weaker": (
        "test_autoattack.py", "test_autoattack_standard_runs_and_is_sane",
        ["test_autoattack_standard_runs_and_is_sane", "test_autoattack_apgd_is_at_least_as_strong_as_pgd"],
        "AutoAttack attacks at half the eps (a radius/diameter mix-up): weaker, yet never above clean accuracy",
        """
        from landscape import autoattack as aa
        real = aa._member
        def _member(model, x, y, attack, eps, *a, **k):
            return real(model, x, y, attack, 0.5 * eps, *a, **k)
        aa._member = _member
        """),
    "replan-after-estimate": (
        "test_lanczos.py", "test_cli_prints_the_estimate_and_records_the_memory_choice",
        ["test_cli_prints_the_estimate_and_records_the_memory_choice"],
        "landscape-spectrum prints one plan and runs another (the estimators plan again with a larger HVP peak)",
        """
        import dataclasses
        from landscape.cli import spectrum
        real = spectrum._run_landscape
        def _run_landscape(op, args, plan, show=True):
            bump = lambda p: None if p is None else dataclasses.replace(   # noqa: E731
                p, hvp_peak=p.hvp_peak + 10 ** 6, estimated_peak=p.estimated_peak + 10 ** 6)
            plan = dataclasses.replace(plan, top_k=bump(plan.top_k), density=bump(plan.density))
            return real(op, args, plan, show)
        spectrum._run_landscape = _run_landscape
        """),
}


def run(tests: Path, plugin: str | None, file: str, test_id: str) -> str:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"{file}::{test_id}"]
    if plugin:
        (tests / "mutant_plugin.py").write_text(plugin)
        cmd[3:3] = ["-p", "mutant_plugin"]
    p = subprocess.run(cmd, cwd=tests, capture_output=True, text=True, env={
        **__import__("os").environ, "PYTHONPATH": str(tests), "OMP_NUM_THREADS": "1"})
    return "passes" if p.returncode == 0 else "FAILS" if p.returncode == 1 else f"error {p.returncode}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="b15da07", help="the commit holding the old tests")
    ap.add_argument("--only", help="comma-separated mutant names")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(MUTANTS)
    print("| mutant | what it does | old test | new test(s) | control (no mutant): old, new |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tests = Path(tmp) / "tests"
        shutil.copytree(ROOT / "tests", tests)
        for name in names:
            file, old_id, new_ids, what, code = MUTANTS[name]
            old_file = "old_" + file
            old = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.base}:tests/{file}"], capture_output=True,
                                 text=True, check=True).stdout
            # the old files' helpers now live in tests/cases.py
            old = old.replace("from test_spectrum import MatrixOp, exact_case, spd_with_decay",
                              "from cases import MatrixOp, exact_case, decaying_spd as spd_with_decay")
            (tests / old_file).write_text(old)
            plugin = "def pytest_configure(config):\n" + textwrap.indent(textwrap.dedent(code), "    ")
            row_old = run(tests, plugin, old_file, old_id)
            row_new = ", ".join(run(tests, plugin, file, t) for t in new_ids)
            control = f"{run(tests, None, old_file, old_id)}, " + ", ".join(run(tests, None, file, t) for t in new_ids)
            print(f"| {name} | {what} | {row_old} | {row_new} | {control} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
