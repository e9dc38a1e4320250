"""landscape-spectrum: top-k Hessian eigenvalues, trace and spectral density of a checkpoint's loss."""
from __future__ import annotations

import sys
import time
from typing import Sequence

import torch

from ..analysis.settings import CONSTRAINTS, check_top_k
from ..attack_spec import CONSTRAINTS as ATTACK, FLAGS as ATTACK_FLAGS
from ..attacks import check_eps
from ..checkpoint import load_checkpoint
from ..analysis.hessian import HVP_CHOICES
from ..analysis.memory import MemoryBudget, SpectrumJob, SpectrumPlan, plan_spectrum
from ..data import dataset_info, load_dataset
from ..errors import ConfigError, ResourceError
from ..io import write_json
from ..progress import bar_callback
from .attack_args import ATTACK_DESTS, add_attack_arguments, attack_from_args
from .common import (TORCHRUN_HELP, Parser, add_checkpoint_source, add_device, check_compatible, check_output, cli,
                     cli_types, default_plot_path, glue_optional_values, image_formats, is_figure_path,
                     resolve_world, set_types, source_options)

DEFAULT_SAMPLES = 512
#: the flags' types: the attack's from AttackSpec's table, the rest from the analysis settings' table
TYPES = {**cli_types(CONSTRAINTS), **cli_types(ATTACK, ATTACK_FLAGS)}

DESCRIPTION = """\
Curvature of a checkpoint's loss over the first N samples of a split: the Hessian with respect to the
weights of the mean cross-entropy, clean or adversarial (PGD examples made once at the checkpoint's weights,
eps/steps/step size from its training config unless given). Top-k eigenvalues by Lanczos until every pair's
residual is within --tol, the trace by XTrace, Hutch++ or Hutchinson (--trace,
--trace-method), the eigenvalue density by stochastic Lanczos
quadrature (--density). --backend pyhessian runs PyHessian 0.1 on the same model and samples instead.

Memory: the Lanczos bases live under --max-memory (default 35% of the machine's memory, or of the GPU's).
Before the work starts, two HVPs are timed and measured, and the estimated HVPs, seconds and peak memory
are printed; a request that cannot fit is refused (exit 2) with its estimate. Top-k keeps its
whole basis when it fits, else thick-restarts within what fits, in float64 when enough float64 vectors fit
(the HVPs stay in the model's dtype; a float32 basis stalls large models' residuals), else in the model's;
the density keeps each probe's basis (full reorthogonalization) when it fits, else three vectors (local
reorthogonalization). The choice is recorded in the JSON ("memory").

Under torchrun each process holds a contiguous shard of the samples (and attacks only its shard); one
Hessian-vector product is each process's share plus one all-reduce, and the results equal a single
process's to float round-off."""

EPILOG = """examples:
  landscape-spectrum runs/at/best.pt --top-k 5
  landscape-spectrum runs/at/best.pt --loss adversarial --trace --density --json spec.json --plot spec.png
  landscape-spectrum runs/at/best.pt --density --json spec.json --plot   # figure: spec.png

""" + TORCHRUN_HELP.format(prog="landscape-spectrum")


def build_parser() -> Parser:
    p = Parser(prog="landscape-spectrum", description=DESCRIPTION, epilog=EPILOG)
    add_checkpoint_source(p)
    p.add_argument("--top-k", type=int, default=5, help="number of extreme eigenvalues (0: none)")
    p.add_argument("--which", choices=("LA", "SA", "LM"), default="LA",
                   help="largest algebraic, smallest algebraic or largest magnitude eigenvalues")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="relative residual ||Hv - lam v|| / |lam| per pair (the true residual, one HVP per pair)")
    p.add_argument("--atol", type=float, default=0.0,
                   help="absolute residual that also counts as converged (for eigenvalues near zero)")
    p.add_argument("--max-hvps", type=int, help="HVP budget of the eigenvalue search (default min(n, max(100, 30k)))")
    p.add_argument("--trace", action="store_true", help="also estimate the trace")
    p.add_argument("--trace-method", choices=("auto", "xtrace", "hutch++", "hutchinson"), default="auto",
                   help="trace estimator: auto picks the most accurate at the HVP budget (XTrace from 20 HVPs, "
                        "Hutchinson below; measured in benchmarks/trace_estimators.py)")
    p.add_argument("--trace-tol", "--trace-rtol", dest="trace_tol", type=float, default=1e-2,
                   help="relative: stop when the 95%% half-width is within this fraction of the estimate "
                        "(--trace-rtol is the old spelling)")
    p.add_argument("--trace-max-hvps", type=int, default=300, help="HVP budget of the trace")
    p.add_argument("--density", action="store_true", help="also estimate the spectral density (SLQ)")
    p.add_argument("--density-probes", type=int, default=3,
                   help="random start vectors of the density (each --density-steps HVPs)")
    p.add_argument("--density-steps", type=int, default=80, help="Lanczos steps (HVPs) per probe")
    p.add_argument("--sigma", type=float, help="Gaussian broadening of the density (default 1%% of the range)")
    p.add_argument("--reorth", choices=("auto", "full", "local"), default="auto",
                   help="density: keep each probe's basis (full), three vectors (local), or full when it fits")
    p.add_argument("--max-hours", type=float, default=24.0,
                   help="refuse, after the estimate and before the work, a run whose estimated time (HVPs at "
                        "most x the time of one) exceeds this many hours")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget, e.g. 8GB or 512MB (default: 35%% of the device's memory)")
    p.add_argument("--loss", choices=("clean", "adversarial"), default="clean",
                   help="the Hessian of the clean loss, or of the loss at PGD examples made once at the weights")
    add_attack_arguments(p)
    p.add_argument("--hvp", choices=HVP_CHOICES, default="auto",
                   help="how a Hessian-vector product is computed: double-backward, fwd-over-rev (forward-over-"
                        "reverse), or auto (the faster one measured for this device type: double backward on CPUs "
                        "and, until a GPU measurement says otherwise, on CUDA); recorded in the JSON's operator")
    p.add_argument("--bn", choices=("running", "batch"), default="running",
                   help="BatchNorm statistics: running (eval mode, never updated) or per batch")
    p.add_argument("--split", default="test", help="train, val, train-full or test")
    p.add_argument("--samples", "--n-samples", dest="samples", type=int,
                   help=f"the first N samples of the split (default {DEFAULT_SAMPLES}, or the whole split if smaller)")
    p.add_argument("--batch-size", type=int, help="samples per HVP batch (default: all in one batch)")
    p.add_argument("--seed", type=int, default=0, help="seeds the attack and every random probe")
    p.add_argument("--backend", choices=("landscape", "pyhessian"), default="landscape",
                   help="pyhessian: PyHessian 0.1 on the same model and samples, for comparison")
    add_device(p)
    p.add_argument("--json", metavar="PATH", help="write settings, results, HVP counts and seconds as JSON")
    p.add_argument("--plot", metavar="PATH", nargs="?", const="",
                   help="also draw the eigenvalues and density: to PATH, or with no PATH next to --json "
                        "(same name, .png), else to CKPT-spectrum.png in the working folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --json or --plot file that landscape did not write (its own earlier "
                        "results are replaced without it)")
    return set_types(p, TYPES)


def _check_top_k(k: int, num_params: int) -> None:
    """k at most the number of weights (``analysis.settings.check_top_k``, the API's rule too; whether the
    Lanczos basis fits is ``SpectrumJob.check``'s and ``plan_spectrum``'s). Cost: none."""
    check_top_k(k, num_params)


#: the settings of each part of a spectrum run: recorded only for the parts that ran (``recorded_settings``)
PART_SETTINGS = {"top_k": ("which", "tol", "atol", "max_hvps"),
                 "trace": ("trace_method", "trace_tol", "trace_max_hvps"),
                 "density": ("density_probes", "density_steps", "sigma")}


def recorded_settings(args) -> dict:
    """The flags' values as the result records them: those of the parts that ran (top-k, trace, density),
    and the attack's only for the adversarial loss (issue 33: a number is labelled only with the settings it
    was computed with; a shared set of flags may carry the others, so they are left out, not refused)."""
    ran = {"top_k": bool(args.top_k), "trace": bool(args.trace), "density": bool(args.density)}
    skip = {k for part, keys in PART_SETTINGS.items() if not ran[part] for k in keys}
    if args.loss == "clean":
        skip |= set(ATTACK_DESTS)
    return {k: v for k, v in vars(args).items() if k not in skip}


def check_args(args) -> None:
    """The combinations of flags that parse but cannot run (also what a study file is checked with; each
    flag's own range is its argparse type's, from the tables). Cost: none."""
    if args.top_k == 0 and not args.trace and not args.density:
        raise ConfigError("nothing to compute: --top-k 0 without --trace or --density")
    if args.eps is not None and args.attack_norm:   # the norm's bound (Linf: at most 1); without --attack-norm
        # the checkpoint's norm decides, and the attack's spec checks eps against it once that is known
        check_eps(args.eps, args.attack_norm)
    if args.backend == "pyhessian":
        if args.density:
            raise ConfigError("PyHessian 0.1's density() calls torch.eig, which PyTorch removed; "
                              "use --backend landscape for --density")
        if args.bn != "running" or args.which != "LA":
            raise ConfigError("--backend pyhessian supports only --bn running and --which LA")


def _plot_function():
    """``landscape.plots.plot_spectrum``, or a one-line error when it is not available."""
    try:
        from .. import plots
    except ImportError as e:
        raise ConfigError(f"--plot needs landscape.plots (matplotlib): {e}") from e
    fn = getattr(plots, "plot_spectrum", None)
    if fn is None:
        raise ConfigError("--plot needs landscape.plots.plot_spectrum, which this version lacks")
    return fn


def _run_landscape(op, args, plan: SpectrumPlan, show: bool = True) -> dict:
    """The requested estimators, each running its part of ``plan`` (the one printed before) as it is."""
    from ..analysis import hessian_trace, spectral_density, top_eigenvalues
    out: dict = {}
    if args.top_k:
        with bar_callback(f"top-{args.top_k} eigenvalues", "HVP", show, leave=False) as cb:
            eig = top_eigenvalues(op, k=args.top_k, tol=args.tol, which=args.which, max_hvps=args.max_hvps,
                                  seed=args.seed, atol=args.atol, callback=cb, plan=plan.top_k)
        out["top_eigenvalues"] = eig.to_dict()
    if args.trace:
        with bar_callback("trace", "HVP", show, leave=False) as cb:
            tr = hessian_trace(op, method=args.trace_method, tol=args.trace_tol, max_hvps=args.trace_max_hvps,
                               seed=args.seed, callback=cb, plan=plan.trace)
        out["trace"] = tr.to_dict()
    if args.density:
        with bar_callback("density", "HVP", show, leave=False) as cb:
            rho = spectral_density(op, n_probes=args.density_probes, lanczos_steps=args.density_steps,
                                   sigma=args.sigma, seed=args.seed, reorth=args.reorth, callback=cb,
                                   plan=plan.density)
        out["density"] = rho.to_dict()
    return out


def _run_pyhessian(op, model, args) -> dict:
    from ..analysis.pyhessian_backend import pyhessian_spectrum
    ph = pyhessian_spectrum(model, op.batches, top_n=max(args.top_k, 1), trace=args.trace, seed=args.seed,
                            device=op.device)
    out: dict = {"pyhessian": ph}
    if args.top_k:
        out["top_eigenvalues"] = {"values": sorted(ph["eigenvalues"], reverse=True),
                                  "values_in_pyhessian_order": ph["eigenvalues"], "hvps": ph["eigenvalue_hvps"],
                                  "seconds": ph["eigenvalue_seconds"],
                                  "settings": {"method": "pyhessian power iteration", "maxIter": 100, "tol": 1e-3,
                                               "top_n": args.top_k, "seed": args.seed}}
    if args.trace:
        out["trace"] = {"estimate": ph["trace"], "hvps": ph["trace_hvps"], "seconds": ph["trace_seconds"],
                        "num_probes": ph["trace_probes"],
                        "settings": {"method": "pyhessian hutchinson", "maxIter": 100, "tol": 1e-3}}
    return out


def _job(args, model: torch.nn.Module, budget: MemoryBudget) -> SpectrumJob:
    """What this run asks for: the flags' parts and HVPs, the resolved ``budget``, and the size and dtype of
    the operator it will make (the model's trainable weights). Cost: none."""
    params = [p for p in model.parameters() if p.requires_grad]
    dtype = params[0].dtype if params else torch.float32
    return SpectrumJob(num_params=sum(p.numel() for p in params), dtype=str(dtype).replace("torch.", ""),
                       budget=budget, top_k=args.top_k, max_hvps=args.max_hvps, trace=args.trace,
                       trace_method=args.trace_method, trace_max_hvps=args.trace_max_hvps, density=args.density,
                       density_probes=args.density_probes, density_steps=args.density_steps, reorth=args.reorth)


def _fmt(v) -> str:
    return "nan" if v is None or v != v else f"{v:.6g}"


def _print_table(res: dict, header: str) -> None:
    print(header)
    eig = res.get("top_eigenvalues")
    if eig:
        st = eig.get("settings", {})
        label = st.get("method", "lanczos")
        if "tol" in st and label in ("lanczos", "eigsh"):
            label += f", tol {st['tol']:g}"
        conv = eig.get("converged")
        note = "" if conv is None else ("" if all(conv) else "  (NOT all converged: raise --max-hvps)")
        print(f"top-{len(eig['values'])} eigenvalues ({label}): {eig['hvps']} HVPs, {eig['seconds']:.2f} s{note}")
        print(f"  {'rank':>4}  {'eigenvalue':>14}  {'rel.residual':>12}  converged")
        rel = eig.get("relative_residuals") or [None] * len(eig["values"])
        for i, v in enumerate(eig["values"]):
            r = "-" if rel[i] is None else f"{rel[i]:.1e}"
            c = "-" if conv is None else ("yes" if conv[i] else "no")
            print(f"  {i + 1:>4}  {_fmt(v):>14}  {r:>12}  {c}")
    tr = res.get("trace")
    if tr:
        pm = f" +- {tr['half_width_95']:.3g} (95%)" if "half_width_95" in tr else ""
        note = "  (budget reached before --trace-tol)" if tr.get("converged") is False else ""
        print(f"trace ({tr.get('method', tr['settings'].get('method'))}): {_fmt(tr['estimate'])}{pm}, "
              f"{tr['hvps']} HVPs, {tr['seconds']:.2f} s{note}")
        reason = (tr.get("settings") or {}).get("auto_reason") or ""
        if ";" in reason:       # auto fell back from its first choice: say why
            print(f"  {reason}")
    rho = res.get("density")
    if rho:
        st = rho["settings"]
        lo, hi = min(rho["grid"]), max(rho["grid"])
        print(f"density (SLQ, {st['n_probes']} probes x {st['lanczos_steps']} steps, sigma {rho['sigma']:.3g}): "
              f"grid [{lo:.4g}, {hi:.4g}], trace estimate {_fmt(rho['trace_estimate'])}, {rho['hvps']} HVPs, "
              f"{rho['seconds']:.2f} s")


@cli("landscape-spectrum")
def main(argv: Sequence[str] | None = None) -> int:
    t_start = time.perf_counter()
    argv = glue_optional_values(list(sys.argv[1:] if argv is None else argv), {"--plot": is_figure_path})
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.plot is not None:
        args.plot = args.plot or default_plot_path(args.json, args.checkpoint, "spectrum")
    plot = _plot_function() if args.plot else None
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint])
    if args.plot:
        check_output(args.plot, "--plot", image_formats(), inputs=[args.checkpoint, args.json])
    world, device = resolve_world(args.device)
    budget = MemoryBudget.of(args.max_memory, device)   # THE budget, resolved once: passed down as is
    if world.active and args.backend == "pyhessian":
        raise ConfigError("--backend pyhessian runs in one process; drop torchrun or use --backend landscape")
    ck = load_checkpoint(args.checkpoint, args.arch, args.dataset, device, **source_options(args))
    check_compatible(ck, dataset_info(args.dataset or ck.dataset, args.data_dir))
    if args.top_k:
        _check_top_k(args.top_k, sum(p.numel() for p in ck.model.parameters()))
    job = _job(args, ck.model, budget)
    if args.backend == "landscape":   # what cannot fit even at its least: refused before the samples and attack
        job.check()
    ds = load_dataset(args.dataset or ck.dataset, args.split, args.data_dir, args.download)
    n = args.samples if args.samples is not None else min(DEFAULT_SAMPLES, len(ds))
    x, y = ds.tensors(n, device)

    from ..analysis.hessian import HessianOperator
    t0 = time.perf_counter()
    attack = attack_from_args(args, ck.config) if args.loss == "adversarial" else None  # no eps: exit 2
    op = HessianOperator.from_checkpoint(ck, (x, y), loss=args.loss, attack=attack, bn=args.bn,
                                         batch_size=args.batch_size, seed=args.seed, device=device,
                                         max_graph_memory=budget, hvp_method=args.hvp)
    setup_s = time.perf_counter() - t0
    plan = None
    if args.backend == "landscape":   # THE plan (two HVPs measured): printed, then run as it is
        plan = plan_spectrum(op, job, seed=args.seed)
        if world.main:
            print(f"estimate: {plan.describe()}", flush=True)
        hours = plan.seconds_at_most / 3600
        if hours > args.max_hours:
            raise ResourceError(f"the estimate is up to {hours:,.1f} hours, more than --max-hours {args.max_hours:g}; "
                                "ask for fewer HVPs (--max-hvps, --trace-max-hvps, --density-steps/-probes) or "
                                "fewer --samples, or raise --max-hours")
    res = _run_pyhessian(op, ck.model, args) if args.backend == "pyhessian" else \
        _run_landscape(op, args, plan, world.main)
    if not world.main:  # rank 0 reports and writes; the others computed the same numbers
        return 0

    from ..results import SPECTRUM_PARTS, SpectrumResult
    result = SpectrumResult({k: v for k, v in res.items() if k in SPECTRUM_PARTS},
                            seconds={"setup": setup_s, "attack": op.attack_seconds})
    desc = op.describe()
    adv = f" (eps {op.eps:g}, {op.steps} PGD steps of {op.step_size:.3g})" if args.loss == "adversarial" else ""
    procs = f" x {world.size} processes" if world.active else ""
    header = (f"{ck.arch} on {ds.name}/{args.split}, {op.num_samples} samples, {args.loss} loss{adv}, "
              f"{op.num_params:,} weights, bn={args.bn}, {device.type}{procs}, backend {args.backend}")
    _print_table(res, header)
    result.seconds["total"] = time.perf_counter() - t_start
    print(f"total: {result.hvps['total']} HVPs, {result.seconds['total']:.2f} s")

    if plan is not None:   # the plan that was printed, and what each estimator recorded running
        result.memory = {"max_memory": budget.total, "max_memory_default": budget.default,
                         "estimated_peak": plan.peak_bytes,
                         **{k: res[k]["settings"]["memory"] for k in ("top_eigenvalues", "trace", "density")
                            if k in res and "memory" in res[k].get("settings", {})}}
        result.estimate = plan.to_dict()
    result.context = {
        "command": "landscape-spectrum", "argv": list(sys.argv[1:] if argv is None else argv),
        "settings": {**recorded_settings(args), "samples": n, "eps": op.eps, "steps": op.steps, "step_size": op.step_size,
                     "attack": desc["attack"]},
        "checkpoint": str(args.checkpoint), "model": ck.arch, "dataset": ds.name, "split": args.split,
        "num_samples": op.num_samples, "num_params": op.num_params, "device": str(device),
        "world_size": world.size, "backend": args.backend, "operator": desc,
        **{k: v for k, v in res.items() if k not in SPECTRUM_PARTS}}   # the pyhessian backend's raw answer
    out = result.to_dict()
    if args.json:
        write_json(args.json, out)
    if plot is not None:
        from ..plots.save import save_figure   # matplotlib loads only when a figure is asked for
        save_figure(plot(out), args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
