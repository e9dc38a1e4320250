"""landscape-study: a grid of models (methods x eps x seeds) trained, evaluated and measured by the console
scripts, on this machine or on SLURM, then aggregated into tables with seed spreads and verdicts."""
from __future__ import annotations

import shlex
import sys
from typing import Sequence

from ..errors import ConfigError
from .common import Parser, cli, positive_int, set_types

DESCRIPTION = """\
A study file (TOML; docs/study.md) names the grid (method x eps x seed, or a list of given checkpoints), the
training settings and the analyses of each cell (eval, spectrum, surface: any option of those console
scripts). Each (cell, step) is one console command, run in the study's folder with its log beside its
results (cells/CELL/logs/STEP.log).

  plan       every cell and step, the exact command of each (copy one and run it alone, from the study's
             folder), and the estimated time per step and in all; runs nothing
  run        run what is not done: --executor local (N workers on this machine) or slurm (one job per step,
             with dependencies, requeued when preempted, failed once when it fails); a rerun continues:
             finished steps are skipped, an interrupted training resumes, a changed step reruns
  status     cells x steps: done / running / queued / failed (with the failed step's last log line), job ids
  aggregate  per_model.csv, mean ± s.d. tables, the claims' verdicts, figures, report.html, model_info JSON
"""

EPILOG = """examples:
  landscape-study plan studies/tiny.toml
  landscape-study run studies/tiny.toml --executor local --workers 2
  landscape-study run studies/sat-cifar10-wrn.toml --executor slurm --partition gpu --account me
  landscape-study status studies/sat-cifar10-wrn.toml
  landscape-study aggregate studies/sat-fashion-mnist.toml
"""


def build_parser() -> Parser:
    p = Parser(prog="landscape-study", description=DESCRIPTION, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", metavar="plan|run|status|aggregate", required=True)

    def common(sp):
        sp.add_argument("study", metavar="STUDY.toml", help="the study file")
        sp.add_argument("--out", metavar="DIR", help="the study's folder (default: [study] out, else ./NAME)")
        return sp
    pl = common(sub.add_parser("plan", help="the cells, steps, commands and estimated times; runs nothing"))
    pl.add_argument("--workers", type=positive_int, default=1, help="workers the estimate of the total assumes")
    pl.add_argument("--json", metavar="PATH", help="the plan as JSON")
    r = common(sub.add_parser("run", help="run what is not done"))
    r.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: subprocesses on this machine; slurm: sbatch jobs")
    r.add_argument("--workers", type=positive_int,
                   help="local: steps at once (default 1, or one per --gpus entry)")
    r.add_argument("--gpus", metavar="LIST", help="local: GPU ids, one per worker (e.g. 0,1,2,3)")
    r.add_argument("--threads", type=positive_int, help="local: threads per worker (default: cores / workers)")
    for flag, what in (("--partition", "SLURM partition"), ("--account", "SLURM account"),
                       ("--time", "time limit of each job (minutes, or D-HH:MM:SS); default: [resources] time, else the "
                                  "partition's"),
                       ("--qos", "SLURM quality of service")):
        r.add_argument(flag, help=f"slurm: {what} (overrides [resources])")
    r.add_argument("--sbatch", action="append", default=[], metavar="LINE",
                   help="slurm: one more #SBATCH option for every job (repeatable), e.g. --sbatch=--exclusive")
    r.add_argument("--dry-run", action="store_true", help="slurm: write the job scripts, submit nothing")
    st = common(sub.add_parser("status", help="cells x steps and where each stands"))
    st.add_argument("--json", metavar="PATH", help="the status as JSON")
    ag = common(sub.add_parser("aggregate", help="tables, verdicts, figures and the report"))
    ag.add_argument("--no-figures", dest="figures", action="store_false", help="tables only")
    ag.add_argument("--no-report", dest="report", action="store_false", help="no report.html")
    s = common(sub.add_parser("step", help="(used by SLURM jobs) run one step of one cell"))
    s.add_argument("cell")
    s.add_argument("step_name", metavar="STEP")
    return set_types(p, {})


@cli("landscape-study")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..study import load_study
    study = load_study(args.study, args.out)
    try:
        return _COMMANDS[args.command](study, args)
    except BrokenPipeError:        # `landscape-study plan FILE | head`: the reader has gone, not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0



def _plan(study, args) -> int:
    from ..io import write_json
    from ..study.estimate import estimate, fmt_seconds
    from .common import check_output
    if args.json:
        check_output(args.json, "--json")
    import os
    est = {(e.cell, e.step): e for e in estimate(study, threads=max(1, (os.cpu_count() or 1) // args.workers))}
    print(f"study {study.name}: {len(study.cells)} cells x {len(study.steps)} steps = {len(study.pairs())} "
          f"commands; folder {study.out}; every command runs there (cd {shlex.quote(str(study.out))})")
    rows = []
    wc = max([len(c.name) for c in study.cells] + [4])
    ws = max([len(s.name) for s in study.steps] + [4])
    for cell, step in study.pairs():
        e = est[(cell.name, step.name)]
        cmd = shlex.join(study.command(cell, step))
        print(f"{cell.name:<{wc}}  {step.name:<{ws}}  ~{fmt_seconds(e.seconds):>9}  {cmd}")
        rows.append({"cell": cell.name, "step": step.name, "command": cmd, "estimated_seconds": e.seconds,
                     "reference": cell.reference})
    total = sum(e.seconds for e in est.values())
    per_step: dict[str, float] = {}
    for e in est.values():
        per_step[e.step] = per_step.get(e.step, 0.0) + e.seconds
    src = next(iter(est.values())).source if est else ""
    print("estimated: " + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in per_step.items())
          + f"; {fmt_seconds(total)} in all ({fmt_seconds(total / args.workers)} with {args.workers} worker(s)); "
          f"one sample-pass {next(iter(est.values())).pass_ms:.3g} ms, {src}" if est else "nothing to run")
    if args.json:
        write_json(args.json, {"kind": "study_plan", "study": study.name, "out": str(study.out), "steps": rows,
                               "estimated_seconds": total})
    return 0


def _run(study, args) -> int:
    if args.executor == "local":
        from ..study.estimate import estimate
        from ..study.local import run_local
        gpus = [g for g in (args.gpus or "").split(",") if g.strip()]
        workers = args.workers or max(1, len(gpus))
        out = run_local(study, workers=workers, gpus=gpus, threads=args.threads,
                        estimates=estimate(study, threads=args.threads))
        return out.code
    from ..study.slurm import submit
    if args.gpus or args.workers or args.threads:
        raise ConfigError("--workers, --gpus and --threads are for --executor local; SLURM takes resources from "
                          "[resources] (gpus, cpus) in the study file")
    return submit(study, partition=args.partition, account=args.account, time_limit=args.time, qos=args.qos,
                  extra=args.sbatch, dry_run=args.dry_run)


def _status(study, args) -> int:
    from ..study.status import print_status
    from .common import check_output
    if args.json:
        check_output(args.json, "--json")
    return print_status(study, args.json)


def _aggregate(study, args) -> int:
    from ..study.aggregate import aggregate
    written = aggregate(study, figures=args.figures, report=args.report)
    for name in written:
        print(f"wrote {name}")
    return 0


def _step(study, args) -> int:
    from ..study.slurm import run_job_step
    return run_job_step(study, args.cell, args.step_name)


_COMMANDS = {"plan": _plan, "run": _run, "status": _status, "aggregate": _aggregate, "step": _step}


if __name__ == "__main__":
    sys.exit(main())
