"""landscape-surface: 1D / 2D loss and accuracy surfaces of a checkpoint, clean or adversarial, resumable."""
from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Sequence

from ..analysis.hessian import HVP_CHOICES
from ..analysis.settings import CONSTRAINTS
from ..attack_spec import CONSTRAINTS as ATTACK, FLAGS as ATTACK_FLAGS
from ..checkpoint import load_checkpoint
from ..constraints import flag, validate
from ..data import dataset_info, load_dataset
from ..errors import ConfigError, ResourceError
from ..io import lock_folder, write_json
from ..progress import bar_callback
from .attack_args import add_attack_arguments, attack_from_args, describe_attack
from .common import (TORCHRUN_HELP, Parser, add_checkpoint_source, add_device, check_compatible, check_output, cli,
                     cli_types, glue_optional_values, image_formats, is_folder_token, is_figure_path,
                     on_interrupt, resume_command, resolve_world, set_types, source_options)

DESCRIPTION = """\
Loss and accuracy of a checkpoint at theta0 + a*d1 (+ b*d2) on a grid (Li et al. 2018), for the clean or
the adversarial (PGD) loss. Directions: 'random' (Gaussian, filter-normalized by default: each filter of
the direction has the norm of the same filter of the weights; biases and BatchNorm get zero unless
--include-bn), 'eigen' (top Hessian eigenvectors of the chosen loss, unit norm), 'interpolate' (towards
--to CKPT2: a=0 is CKPT, a=1 is CKPT2, BatchNorm running statistics interpolated too unless --bn-buffers
fixed; 1D), 'pca' (top principal components of the epoch_XXX.pt files of a training run, --trajectory
DIR). Adversarial loss: --adv-mode fixed makes PGD examples once at theta0 and keeps them (the same
examples landscape-spectrum and --directions eigen take the Hessian over); reattack re-runs PGD at every
grid point (seeded per point). eps, steps and step size default to the checkpoint's training attack; a
checkpoint without an eps needs --eps.

Results go to --out DIR (surface.npz + surface.json, saved every few seconds; --resume continues an
interrupted run with identical numbers; --plot adds surface.png). Cost per grid point: one forward pass
over the samples (clean, fixed) or one PGD attack plus one forward pass (reattack).

--space input draws the landscape in INPUT space instead, the picture that shows gradient masking: each
sample's loss at x + a*eps*sign(grad_x L) + b*eps*r (r random signs; L2: unit gradient and a unit Gaussian
direction), a and b in units of eps (--x / --y, default -2:2:21), per sample and averaged; and each sample's
input curvature (top eigenvalue of the Hessian of its loss with respect to its input, --curvature-iters
Lanczos steps; 0 skips it). A robust model gives a smooth bowl rising along the gradient; a masked one is
flat or jagged along it. Writes input_surface.json (mean surface, 16 samples' surfaces, curvature) and
input_surface.npz (every sample) to --out; --plot draws it. Cost: one forward per grid point and sample,
plus curvature-iters input HVPs per sample."""

EPILOG = """\
examples:
  landscape-surface runs/at/best.pt --dim 2 --directions eigen --loss adversarial --plot
  landscape-surface runs/at/best.pt --dim 1 --x -1:1:51 --loss adversarial --adv-mode reattack
  landscape-surface runs/at/best.pt --directions interpolate --to runs/sat/best.pt --plot
  landscape-surface foreign.pt --arch cnn-small --dataset digits --out surf
  landscape-surface --resume surf      # after an interruption: the stored checkpoint and settings
  landscape-surface runs/at/best.pt --space input --samples 256 --plot        # input space: masking?

""" + TORCHRUN_HELP.format(prog="landscape-surface") + """ Grid points are shared out dynamically (each
process takes the next unfinished point); a run stopped under any number of processes resumes under any
other with identical numbers."""

DEFAULT_SAMPLES = 1000
MAX_POINTS = 1_000_000  # arrays + surface.json (rewritten every few seconds) grow ~100 bytes per point
MAX_COORD = 1000.0      # grid coordinates are multiples of a direction (filter-normalized: 1 = the weights' size)
#: the flags' types: the attack's from AttackSpec's table, the rest from the analysis settings' table
TYPES = {**cli_types(CONSTRAINTS), **cli_types(ATTACK, ATTACK_FLAGS)}


def build_parser() -> Parser:
    p = Parser(prog="landscape-surface", description=DESCRIPTION, epilog=EPILOG)
    add_checkpoint_source(p)
    g = p.add_argument_group("directions and grid")
    g.add_argument("--space", choices=("weights", "input"), default="weights",
                   help="the loss landscape over the weights (default) or over each input (see above)")
    g.add_argument("--curvature-iters", type=int, default=20,
                   help="--space input: Lanczos steps of each sample's input curvature (0: none; default 20)")
    g.add_argument("--dim", type=int, choices=(1, 2), help="1D or 2D surface (default: 2; 1 for interpolate)")
    g.add_argument("--directions", default="random", choices=("random", "eigen", "interpolate", "pca"),
                   help="how the directions are made")
    g.add_argument("--to", metavar="CKPT2", help="the other checkpoint for --directions interpolate")
    g.add_argument("--trajectory", metavar="DIR",
                   help="folder of epoch_XXX.pt files for --directions pca (default: the checkpoint's folder)")
    g.add_argument("--x", metavar="START:STOP:NUM",
                   help="grid along direction 1 (default -1:1:21; -0.5:1.5:21 for interpolate)")
    g.add_argument("--y", metavar="START:STOP:NUM", help="grid along direction 2 (default -1:1:21)")
    g.add_argument("--normalization", "--norm", dest="normalization", default="filter",
                   choices=("filter", "layer", "none"),
                   help="how random directions are scaled to the weights (--norm is the old spelling; the "
                        "attack's norm is --attack-norm)")
    g.add_argument("--include-bn", action="store_true",
                   help="also move biases and BatchNorm parameters (random directions)")
    g.add_argument("--orthogonalize", action="store_true",
                   help="make the second random direction exactly orthogonal to the first")
    g.add_argument("--eigen-tol", type=float, default=1e-3, help="relative residual tolerance of eigenvectors")
    g.add_argument("--hvp", choices=HVP_CHOICES, default="auto",
                   help="--directions eigen: how a Hessian-vector product is computed (double-backward, "
                        "fwd-over-rev, or auto: the faster one measured for this device type)")
    g.add_argument("--bn-buffers", choices=("interpolate", "fixed"), default="interpolate",
                   help="interpolate: buffers (BatchNorm running statistics) move along the interpolation too, "
                        "so a=1 is CKPT2 exactly; fixed: CKPT's buffers everywhere")
    a = p.add_argument_group("loss")
    a.add_argument("--loss", default="clean", choices=("clean", "adversarial"),
                   help="the clean loss, or the loss at PGD examples (see --adv-mode)")
    a.add_argument("--adv-mode", default="fixed", choices=("fixed", "reattack"),
                   help="adversarial examples made once at theta0, or re-made at every point")
    add_attack_arguments(a)
    d = p.add_argument_group("data and run")
    d.add_argument("--split", default="test", help="train, val, train-full or test")
    d.add_argument("--samples", "--n-samples", dest="samples", type=int,
                   help=f"use the first N samples of the split (default: min({DEFAULT_SAMPLES}, all); "
                        "--n-samples is the old spelling)")
    d.add_argument("--batch-size", type=int, default=512, help="samples per forward pass")
    d.add_argument("--seed", type=int, default=0, help="seed of directions and attacks")
    d.add_argument("--out", metavar="DIR",
                   help="output folder (default: CKPT's folder/surfaces/STEM-DIRECTIONS-LOSS-Dd)")
    d.add_argument("--resume", metavar="DIR", nargs="?", const="",
                   help="continue the interrupted run stored in DIR (default: in --out) with the settings and "
                        "checkpoint stored there (CKPT and the flags may be left out)")
    d.add_argument("--overwrite", action="store_true", help="replace a run stored in --out")
    d.add_argument("--plot", metavar="PATH", nargs="?", const="",
                   help="also draw the surface: to PATH, or with no PATH to surface.png in the result folder "
                        "(2D: also a 3D view, beside it as NAME_3d)")
    d.add_argument("--json", metavar="PATH", help="write the result as JSON")
    d.add_argument("--max-hours", type=float, default=24.0,
                   help="refuse a grid whose estimated time (timed on one point) exceeds this")
    add_device(d)
    return set_types(p, TYPES)


def _grid(spec: str, name: str):
    """``parse_grid`` after refusing what cannot be computed: more than MAX_POINTS points (checked before the
    grid is made) or coordinates beyond +-MAX_COORD (the weights would be swamped, the numbers meaningless)."""
    from ..analysis.surface import parse_grid
    parts = spec.split(":") if isinstance(spec, str) else []
    if len(parts) == 3 and parts[2].strip().lstrip("+").isdigit():
        _check_points(int(parts[2]), f"{name} {spec}")
    g = parse_grid(spec, name)
    if not (abs(g) <= MAX_COORD).all():
        raise ConfigError(f"{name} {spec}: coordinates must lie within +-{MAX_COORD:g} (multiples of the "
                          "direction; 1 is the size of the weights for filter-normalized directions)")
    return g


def _check_points(points: int, what: str) -> None:
    if points > MAX_POINTS:
        gib = points * 100 / 2 ** 30
        raise ResourceError(f"{what}: {points:,} grid points is more than {MAX_POINTS:,} (their arrays and "
                            f"surface.json would take ~{gib:,.1f} GiB, and a forward pass each); use fewer points")


def _check_time(ck, x, y, args, points: int, attack) -> None:
    """Time one forward pass over the samples and refuse, before any attack or grid point, a surface whose
    estimate exceeds ``--max-hours``: each point is a forward pass (with reattack, also a PGD attack: steps x
    restarts forward+backward passes, ~3 forwards each), and the fixed mode's one attack at the centre is
    counted too. Cost: one forward pass."""
    import time
    from ..analysis.surface import loss_and_accuracy
    t0 = time.perf_counter()
    loss_and_accuracy(ck.model, x, y, args.batch_size)
    per = time.perf_counter() - t0
    attack_s = per * 3 * attack.steps * attack.restarts if attack is not None else 0.0
    total = points * (per + (attack_s if args.adv_mode == "reattack" else 0.0)) + \
        (attack_s if attack is not None and args.adv_mode == "fixed" else 0.0)
    hours = total / 3600
    if hours > args.max_hours:
        what = f"{points:,} grid points x ~{total / points:.3g} s each" if args.adv_mode == "reattack" or \
            attack is None else f"{points:,} grid points and an attack of ~{attack_s:.3g} s"
        raise ResourceError(f"{what} is ~{hours:,.1f} hours, more than --max-hours {args.max_hours:g}; use fewer "
                            "points, --samples, --steps or --restarts, or raise --max-hours")


def _directions(args, ck, x, y, dim, attack, device):
    from ..analysis import directions as D
    if args.directions == "random":
        ds = D.random_directions(ck.model, dim, normalization=args.normalization, include_bn=args.include_bn,
                                   seed=args.seed)
        if dim == 2 and args.orthogonalize:
            ds.directions[1] = D.orthogonalize(ds[1], ds[0])
            ds.meta["orthogonalized"] = True
        return ds
    if args.directions == "eigen":
        return D.eigen_directions(ck.model, (x, y), args.loss, attack=attack, k=dim, tol=args.eigen_tol,
                                  seed=args.seed, hvp_method=args.hvp)
    if args.directions == "interpolate":
        other = load_checkpoint(args.to, args.arch, args.dataset, device, **source_options(args))
        if all((ck.dataset, ck.arch, other.dataset, other.arch)) and \
                (ck.dataset, ck.arch) != (other.dataset, other.arch):
            raise ConfigError(f"--to {args.to} is a {other.arch} for {other.dataset}, but {args.checkpoint} is a "
                              f"{ck.arch} for {ck.dataset}: interpolation needs two checkpoints of one model on "
                              "one dataset")
        return D.DirectionSet([D.interpolation_direction(ck.model, other.model, buffers=args.bn_buffers)],
                              {"kind": "interpolate", "to": str(args.to), "buffers": args.bn_buffers})
    folder = args.trajectory or str(Path(args.checkpoint).parent)
    return D.pca_directions(folder, ck.model, k=dim, arch=args.arch, dataset=args.dataset)


def _direction_spec(args, dim: int, attack) -> dict:
    """The arguments that define the directions (a resume must repeat them)."""
    spec: dict = {"directions": args.directions, "dim": dim}
    if args.directions == "random":
        spec.update(normalization=args.normalization, include_bn=args.include_bn, seed=args.seed,
                    orthogonalize=bool(args.orthogonalize and dim == 2))
    elif args.directions == "eigen":
        spec.update(loss=args.loss, tol=args.eigen_tol, seed=args.seed)
        if args.loss == "adversarial":
            spec.update(attack=attack.to_dict())
    elif args.directions == "interpolate":
        spec.update(to=str(Path(args.to).resolve()), buffers=args.bn_buffers)
    else:
        spec.update(trajectory=str(Path(args.trajectory or Path(args.checkpoint).parent).resolve()))
    return spec


def _default_out(args, dim: int) -> Path:
    ck = Path(args.checkpoint)
    tag = args.loss + ("-reattack" if args.loss == "adversarial" and args.adv_mode == "reattack" else "")
    return ck.parent / "surfaces" / f"{ck.stem}-{args.directions}-{tag}-{dim}d"


def _check(args, dim: int) -> None:
    if args.directions == "interpolate":
        if not args.to:
            raise ConfigError("--directions interpolate needs --to CKPT2")
        if dim != 1:
            raise ConfigError("--directions interpolate makes 1D surfaces (use --dim 1)")
    elif args.to:
        raise ConfigError("--to applies to --directions interpolate only")
    if args.trajectory and args.directions != "pca":
        raise ConfigError("--trajectory applies to --directions pca only")
    if dim == 1 and args.y is not None:
        raise ConfigError("--y applies to 2D surfaces (--dim 2)")
    # a resumed run's stored settings are the parser's defaults, which argparse's types do not check
    validate(vars(args), CONSTRAINTS)
    validate({k: v for k, v in vars(args).items() if k in ("eps", "steps", "step_size", "restarts") and v is not None},
             ATTACK, ATTACK_FLAGS)
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")


def _glue_grids(argv: Sequence[str]) -> list[str]:
    """``--x -1:1:21`` -> ``--x=-1:1:21``: argparse would take a value starting with '-' for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("--x", "--y") and i + 1 < len(argv) and re.match(r"^-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def stored_defaults(folder: Path) -> tuple[dict, str | None]:
    """The flags a stored surface in ``folder`` was made with (``--resume DIR`` continues from them, as
    ``landscape-train --resume`` does) and its checkpoint; ({}, None) when the folder holds none."""
    from ..analysis.surface_result import load_surface
    if not (folder / "surface.json").is_file():
        return {}, None
    s = load_surface(folder).settings
    info, spec = s.get("info") or {}, (s.get("directions") or {}).get("spec") or {}
    d: dict = {"dim": spec.get("dim") or s.get("dim"), "directions": spec.get("directions"), "loss": s.get("loss"),
               "batch_size": s.get("batch_size"), "seed": s.get("seed"), "samples": s.get("samples"),
               "split": info.get("split"), "dataset": info.get("dataset"), "x": info.get("x_spec"),
               "y": info.get("y_spec"), "normalization": spec.get("normalization"),
               "include_bn": spec.get("include_bn"), "orthogonalize": spec.get("orthogonalize"),
               "eigen_tol": spec.get("tol"), "bn_buffers": spec.get("buffers"), "to": spec.get("to"),
               "trajectory": spec.get("trajectory")}
    att = s.get("attack")
    if att:
        d.update(adv_mode=att.get("mode"), eps=att.get("eps"), steps=att.get("steps"), restarts=att.get("restarts"),
                 attack_norm=att.get("norm"), attack_batch_size=att.get("batch_size"), attack_bn=att.get("bn"),
                 random_start=att.get("random_start"),
                 step_size=None if att.get("step_size_default") else att.get("step_size"))
    return {k: v for k, v in d.items() if v is not None}, info.get("checkpoint")


def _resume_argv(argv: list[str]) -> tuple[list[str], dict]:
    """``--resume DIR`` alone: the stored checkpoint put back in front when none is given, and the stored
    settings as the parser's defaults (flags given still win, and the resume check refuses contradictions)."""
    probe = build_parser()
    for a in probe._actions:
        if a.dest == "checkpoint":
            a.nargs, a.default = "?", None
    ns, _ = probe.parse_known_args(argv)
    if not ns.resume:
        return argv, {}
    defaults, ckpt = stored_defaults(Path(ns.resume))
    if ns.checkpoint is None and ckpt:
        argv = [ckpt, *argv]
    return argv, defaults


@cli("landscape-surface")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = glue_optional_values(_glue_grids(argv), {"--plot": is_figure_path, "--resume": is_folder_token})
    argv, stored = _resume_argv(argv)
    parser = build_parser()
    parser.set_defaults(**stored)
    args = parser.parse_args(argv)
    if args.resume:  # --resume DIR: the run in DIR
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--resume {args.resume} and --out {args.out} name different runs; give one")
        if not Path(args.resume).is_dir():
            raise ConfigError(f"--resume {args.resume}: no surface to resume there (the folder does not exist)")
        args.out = args.resume
    args.resume = args.resume is not None
    if args.space == "input":
        return _input_space(args)
    dim = args.dim or (1 if args.directions == "interpolate" else 2)
    _check(args, dim)
    x_spec = args.x or ("-0.5:1.5:21" if args.directions == "interpolate" else "-1:1:21")
    points = len(_grid(x_spec, "--x"))
    y_spec = (args.y or "-1:1:21") if dim == 2 else None
    if y_spec is not None:
        points *= len(_grid(y_spec, "--y"))
        _check_points(points, f"--x {x_spec} --y {y_spec}")
    out = Path(args.out) if args.out else _default_out(args, dim)
    # held until the command ends (rank 0): a second process on the folder is refused before any work
    check_output(out, "--out", folder=True, inputs=[args.checkpoint, args.to], lock=True)
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint, args.to])
    if args.plot is not None:
        args.plot = Path(args.plot) if args.plot else out / "surface.png"
        check_output(args.plot, "--plot", image_formats(), inputs=[args.checkpoint, args.to, args.json])
        if dim == 2:   # its 3D view is written beside it: checked (a user's file there) and locked the same way
            check_output(view_path(args.plot), "--plot", image_formats(),
                         inputs=[args.checkpoint, args.to, args.json])
    world, device = resolve_world(args.device)
    ck = load_checkpoint(args.checkpoint, args.arch, args.dataset, device, **source_options(args))
    check_compatible(ck, dataset_info(args.dataset or ck.dataset, args.data_dir))
    ds = load_dataset(args.dataset or ck.dataset, args.split, args.data_dir, args.download)
    n = args.samples if args.samples is not None else min(DEFAULT_SAMPLES, len(ds))
    x, y = ds.tensors(n, device)
    attack = attack_from_args(args, ck.config) if args.loss == "adversarial" else None  # no eps: exit 2
    _check_time(ck, x, y, args, points, attack)
    with contextlib.ExitStack() as stack:
        from ..distributed import run_on_main  # rank 0 owns the files; a second run on them is refused
        run_on_main(stack.enter_context, lock_folder(out))
        hint = resume_command("landscape-surface", argv, values={"--out": str(out)})
        stack.enter_context(on_interrupt("the points done are saved; continue with: " + hint))
        return _run(args, ck, ds, x, y, n, dim, x_spec, y_spec, attack, out, world, device)


def _run(args, ck, ds, x, y, n, dim, x_spec, y_spec, attack, out, world, device) -> int:
    """Directions, the surface, figures and the report, under the folder's lock."""
    from ..analysis.directions import current_meta
    from ..analysis.surface import load_directions, loss_surface

    spec = _direction_spec(args, dim, attack)
    from ..distributed import run_on_main
    directions = run_on_main(load_directions, out, "cpu") if args.resume else None  # rank 0 owns the files
    if directions is not None and current_meta(directions.meta.get("spec") or {}) != spec:
        old = current_meta(directions.meta.get("spec") or {})
        diffs = [f"{k}: stored {old.get(k)!r}, now {spec.get(k)!r}" for k in sorted(set(old) | set(spec))
                 if old.get(k) != spec.get(k)]
        raise ConfigError(f"cannot resume {out}: its directions were made with different settings "
                          f"({'; '.join(diffs[:4])}); use the same settings, or --overwrite / another --out")
    if directions is None:
        directions = _directions(args, ck, x, y, dim, attack, device)
        directions.meta["spec"] = spec
    meta = {"checkpoint": str(args.checkpoint), "arch": ck.arch, "dataset": ds.name, "split": args.split,
            "device": str(device), "x_spec": x_spec, "y_spec": y_spec, "world_size": world.size}

    with bar_callback("surface", "pt", show=world.main) as cb:
        res = loss_surface(ck.model, (x, y), directions, x_spec, y_spec, loss=args.loss, adv_mode=args.adv_mode,
                           attack=attack, batch_size=args.batch_size, seed=args.seed, out=out, resume=args.resume,
                           overwrite=args.overwrite, meta=meta, callback=cb)

    if not world.main:  # rank 0 reports and writes
        return 0
    figures = []
    if args.plot:
        from ..plots import plot_contourf, plot_curve, plot_surface3d
        from ..plots.save import save_figure
        fig = plot_curve(res) if res.dim == 1 else plot_contourf(res)
        save_figure(fig, args.plot, dpi=120)
        figures.append(str(args.plot))
        if res.dim == 2:
            view = view_path(args.plot)
            save_figure(plot_surface3d(res), view, dpi=120)
            figures.append(str(view))
    summary = res.to_dict()
    shape = "x".join(str(s) for s in reversed(res.loss.shape))
    what = args.loss + (f" ({describe_attack(attack)}, {args.adv_mode})" if attack else "")
    line = f"{args.checkpoint}: {res.dim}D {args.directions} surface of the {what} loss on {shape} points, n={n}"
    if "center" in summary:
        line += f"; at the model: loss {summary['center']['loss']:.4g}, accuracy {summary['center']['accuracy']:.4f}"
    if "min_loss" in summary:
        line += f"; lowest loss {summary['min_loss']['loss']:.4g}"
    if summary.get("nonfinite_points"):     # the moved model diverged there: null in the JSON, not a number
        line += (f"; {summary['nonfinite_points']} of {summary['points_total']} points not finite (the model's "
                 "outputs diverge there; null in the JSON)")
    return _report(args, line, out / "surface.json", summary, figures)


def view_path(plot: Path) -> Path:
    """Where a 2D surface's 3D view goes beside its ``--plot`` figure: ``NAME_3d.SUFFIX``."""
    return plot.with_name(f"{plot.stem}_3d{plot.suffix}")


def _report(args, line: str, written: Path, summary: dict, figures: list[str]) -> int:
    """The summary line, what was written, and --json (both spaces)."""
    print(line)
    print(f"wrote {written}" + (f", {', '.join(figures)}" if figures else ""))
    if args.json:
        write_json(args.json, {**summary, "figures": figures, "out": str(written.parent)})
    return 0


INPUT_ONLY_WEIGHTS = {"directions": "random", "to": None, "trajectory": None, "normalization": "filter",
                      "include_bn": False, "orthogonalize": False, "bn_buffers": "interpolate", "loss": "clean",
                      "adv_mode": "fixed", "resume": False, "dim": None}


def _input_space(args) -> int:
    """--space input: the input-space surface and curvature of the first --samples samples (module help)."""
    import time
    from ..analysis.input_space import input_surface
    changed = [k for k, v in INPUT_ONLY_WEIGHTS.items() if getattr(args, k) != v]
    if changed:
        raise ConfigError(f"{flag(changed[0])} applies to the weight-space surface; --space input moves the inputs along "
                          "their gradient and a random direction")
    a_spec, b_spec = args.x or "-2:2:21", args.y or "-2:2:21"
    points = len(_grid(a_spec, "--x")) * len(_grid(b_spec, "--y"))
    ck_path = Path(args.checkpoint)
    out = Path(args.out) if args.out else ck_path.parent / "surfaces" / f"{ck_path.stem}-input-2d"
    # locked until the command ends, as a weight-space surface's folder: a second run on it is refused at once
    check_output(out, "--out", folder=True, inputs=[args.checkpoint], lock=True)
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint])
    if args.plot is not None:
        args.plot = Path(args.plot) if args.plot else out / "input_surface.png"
        check_output(args.plot, "--plot", image_formats(), inputs=[args.checkpoint, args.json])
    for name in ("input_surface.json", "input_surface.npz"):
        if (out / name).exists() and not args.overwrite:
            raise ConfigError(f"{out} already holds {name}; pass --overwrite to replace it or choose another --out")
    world, device = resolve_world(args.device)
    ck = load_checkpoint(args.checkpoint, args.arch, args.dataset, device, **source_options(args))
    check_compatible(ck, dataset_info(args.dataset or ck.dataset, args.data_dir))
    ds = load_dataset(args.dataset or ck.dataset, args.split, args.data_dir, args.download)
    n = args.samples if args.samples is not None else min(256, len(ds))
    x, y = ds.tensors(n, device)
    attack = attack_from_args(args, ck.config)          # its eps and norm: the grid's unit
    t0 = time.perf_counter()
    from ..analysis.surface import loss_and_accuracy
    loss_and_accuracy(ck.model, x, y, args.batch_size)
    hours = (time.perf_counter() - t0) * (points + 3 * args.curvature_iters + 3) / 3600
    if hours > args.max_hours:
        raise ResourceError(f"{points:,} grid points and {args.curvature_iters} curvature steps on {n} samples is "
                            f"~{hours:,.1f} hours, more than --max-hours {args.max_hours:g}; use fewer points or "
                            "--samples, or raise --max-hours")
    print(f"landscape-surface: input space of {n} samples, {points} points, ~{hours * 3600:.0f} s", file=sys.stderr,
          flush=True)
    with bar_callback("input surface", "pt", show=world.main) as cb:
        res = input_surface(ck.model, x, y, attack, a_spec, b_spec, seed=args.seed, batch_size=args.batch_size,
                            curvature_iters=args.curvature_iters, callback=cb)
    if not world.main:
        return 0
    with lock_folder(out):   # held since check_output (this process): not locked twice
        d = res.save(out, checkpoint=str(args.checkpoint), arch=ck.arch, dataset=ds.name, split=args.split)
    figures = []
    if args.plot:
        from ..plots import plot_input_surface
        from ..plots.save import save_figure
        save_figure(plot_input_surface(d), args.plot, dpi=120)
        figures.append(str(args.plot))
    used = f"eps {attack.eps:g}" + ("" if attack.norm == "linf" else f" {attack.norm}")   # no PGD runs here
    line = (f"{args.checkpoint}: input-space surface ({used}) on {points} points, n={n}; loss at "
            f"the inputs {d['loss_at_input']:.4g}, rise along the gradient {d['rise_within_eps']:.4g} at eps and "
            f"{d['rise_along_gradient']:.4g} at a = {res.a[-1]:g}, "
            f"{d['zero_gradient_samples']} zero gradients")
    if "curvature" in d:
        line += f"; input curvature median {d['curvature']['median']:.4g}, max {d['curvature']['max']:.4g}"
    return _report(args, line, out / "input_surface.json", d, figures)


if __name__ == "__main__":
    sys.exit(main())
