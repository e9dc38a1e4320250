"""landscape-train: train a model with standard training, PGD-AT, TRADES or a SAT curriculum."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from ..constraints import MAX_HOURS
from ..data import available_datasets
from ..io import write_json
from ..models import available_models
from ..precision import AMP_MODES
from ..training import METHODS, TrainConfig, Trainer
from ..errors import ConfigError
from ..training.config import CONSTRAINTS, DEFAULT_EPOCHS, DEFAULT_EPS, LR_SCHEDULES, SELECT_RULES
from ..training.trainer import RESUME_SAFE
from ..training.curriculum import SCHEDULES
from ..distributed import check_sync_bn, launched_by_torchrun
from ..errors import ResourceError
from .attack_args import check_estimate
from .common import (Parser, add_device, check_output, cli, cli_types, on_interrupt, plain_name, resolve_device,
                     resolve_world, set_types)

#: the flags' types: TrainConfig's table (training.config.CONSTRAINTS), and the run's time limit
TYPES = {**cli_types(CONSTRAINTS), **cli_types({"max_hours": MAX_HOURS}), "--name": plain_name}

DESCRIPTION = """\
Train a classifier, robustly or not, and write runs/NAME/{config.json, metrics.csv, last.pt, best.pt}.

Methods: standard (clean cross-entropy), at (Madry PGD adversarial training), trades (Zhang et al.),
and the SAT curricula of Sitawarin et al. (AISec 2021): sat-eps (eps ramps up with lambda), p-sat
(PGD early-stopped per sample at softmax-margin difficulty lambda), h-sat (eps calibrated so that the
adversarial loss's top Hessian eigenvalue is lambda times its value at the full eps). lambda rises from
--lam0 to 1 over the first --ramp fraction of the iterations.

With no arguments: p-sat on the bundled digits data with a small CNN (under 2 minutes on 2 CPU cores).
best.pt is the epoch with the highest validation clean + PGD accuracy (the paper's model selection);
--select picks another rule. --resume continues a run exactly as configured: other training flags are
refused unless they equal the run's (--epochs may grow only with a constant LR and no curriculum).
An option of another method (--beta without trades, --ramp/--lam0/--schedule without a SAT curriculum,
--hsat-* without h-sat, --track-probe without --track-hessian-every, --steps/--step-size with standard) is
refused, not recorded. Before the first epoch the run's time is estimated (passes per sample x samples, one
training pass timed on a batch) and a new run over --max-hours is refused.
"""

EPILOG = """examples:
  landscape-train                                             # p-sat on digits
  landscape-train --method at --dataset fashion-mnist --eps 0.1 --epochs 5
  landscape-train --method trades --beta 6 --dataset cifar10 --model preact-resnet18 --download
  landscape-train --resume runs/p-sat-digits-eps0.1-s0       # continue an interrupted run
  landscape-train --method at --eps 0.1 --resume              # the same: the run these flags name
"""


def build_parser() -> Parser:
    p = Parser(prog="landscape-train", description=DESCRIPTION, epilog=EPILOG)
    d = TrainConfig()
    p.add_argument("--method", default=d.method, help=f"one of {', '.join(METHODS)}")
    p.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(available_datasets())}")
    p.add_argument("--model", "--arch", dest="model", default=d.model,
                   help=f"one of {', '.join(available_models())} (--arch, as in the other scripts, is the same)")
    p.add_argument("--eps", type=float, help=f"Linf budget; default per dataset {DEFAULT_EPS} (standard: none)")
    p.add_argument("--steps", type=int, default=d.steps, help="PGD steps of the training attack")
    p.add_argument("--step-size", type=float, help="PGD step size (default 2.5 * eps / steps)")
    p.add_argument("--beta", type=float, default=d.beta, help="TRADES trade-off weight")
    p.add_argument("--ramp", type=float, default=d.ramp, help="SAT: fraction of training over which lambda reaches 1")
    p.add_argument("--lam0", type=float, default=d.lam0, help="SAT: initial lambda")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="SAT: lambda schedule")
    p.add_argument("--epochs", type=int, help=f"default per dataset {DEFAULT_EPOCHS}, else 30")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per SGD step")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="piecewise: x0.1 at 50%% and 75%% of training")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 penalty of SGD")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds the initialization, data order, attacks and curriculum probes")
    p.add_argument("--train-samples", type=int, help="train on the first N samples of the training split")
    p.add_argument("--val-samples", type=int, default=d.val_samples, help="validation samples per epoch")
    p.add_argument("--val-steps", type=int, default=d.val_steps, help="PGD steps for validation (step 2.5*eps/steps)")
    p.add_argument("--select", default=d.select, choices=tuple(SELECT_RULES),
                   help="which epoch becomes best.pt: " + "; ".join(f"{k}: {v}" for k, v in SELECT_RULES.items()))
    p.add_argument("--augment", action="store_true", default=None, help="random crop + flip (default: CIFAR/Imagenette)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no augmentation, also on CIFAR")
    p.add_argument("--save-every", type=int, default=0, help="also keep epoch_XXX.pt every K epochs (trajectory)")
    p.add_argument("--hsat-every", type=int, help="H-SAT: iterations between eps calibrations (default: 1 epoch)")
    p.add_argument("--hsat-probe", type=int, default=d.hsat_probe, help="H-SAT: probe batch size")
    p.add_argument("--hsat-iters", type=int, default=d.hsat_iters, help="H-SAT: Lanczos steps per estimate")
    p.add_argument("--hsat-bisect", type=int, default=d.hsat_bisect, help="H-SAT: bisection steps per calibration")
    p.add_argument("--hsat-normalize", choices=("ratio", "affine"), default=d.hsat_normalize,
                   help="H-SAT difficulty: ratio = lam(eps)/lam(eps_max) (the paper's wording); affine = "
                        "(lam(eps)-lam(0))/(lam(eps_max)-lam(0)), which is 0 at eps=0 (see hsat.py)")
    p.add_argument("--track-hessian-every", type=int, default=0,
                   help="log the top eigenvalue of the adversarial loss on a fixed probe set every N epochs")
    p.add_argument("--amp", default=d.amp, choices=("auto", *AMP_MODES),
                   help="mixed precision of the training step (the attack's forward passes too): bf16, fp16 "
                        "(with loss scaling), off (float32); auto: bf16 on a CUDA GPU that supports it, else "
                        "off. Validation and analysis stay float32")
    p.add_argument("--ema", type=float, default=d.ema, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.995, with warm-up); it is "
                        "validated each epoch and saved as best.pt (last.pt keeps the raw weights). 0: off")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes, metavar="M",
                   help="also write last.pt in the middle of an epoch every M minutes (SIGTERM and SIGUSR1 "
                        "always do, then exit 75 so that a job script can requeue; --resume continues exactly)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm; needs GPUs "
                        "with nccl); without it each process normalizes its own shard")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for the training step, attack included (compiles once, a "
                        "minute or more; off by default until a GPU measurement shows where it pays)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for convolutional models (usually faster with --amp on "
                        "recent GPUs; off by default until measured)")
    p.add_argument("--track-probe", type=int, default=d.track_probe, help="samples in the sharpness probe set")
    p.add_argument("--name", help="run name (default: METHOD-DATASET-epsEPS-sSEED)")
    p.add_argument("--runs-dir", "--out", dest="runs_dir", metavar="DIR", default="runs",
                   help="folder holding run folders: the run is written to DIR/NAME (--out is the old spelling)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    p.add_argument("--resume", metavar="RUN_DIR", nargs="?", const="",
                   help="continue an interrupted run from its last.pt, as it was configured: the run in RUN_DIR, "
                        "or with no RUN_DIR the one these flags name (--runs-dir/--name, or the default name); "
                        "only " + ", ".join("--" + f for f in RESUME_SAFE) + " may change")
    p.add_argument("--data-dir", help="where datasets live (default: $LANDSCAPE_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="allow torchvision to download the dataset")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 90/10 train/validation split")
    p.add_argument("--json", metavar="PATH", help="write the final metrics and config as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar (and no starting line)")
    p.add_argument("--max-hours", type=float, default=24.0,
                   help="refuse a new run whose estimated time (one training pass timed on a batch) exceeds this; "
                        "--resume checks only when it is given")
    add_device(p)
    return set_types(p, TYPES)


def _resume_hint(trainer, args) -> str:
    """What to type to continue ``trainer``'s run after Ctrl-C (or why there is nothing to continue)."""
    if not (trainer.run_dir / "last.pt").exists():
        return f"no epoch finished, so {trainer.run_dir} holds nothing to resume; start it again"
    extra = (["--epochs", str(args.epochs)] if args.epochs else []) + \
        (["--device", args.device] if args.device != "auto" else [])
    import shlex
    return "continue with: " + shlex.join(["landscape-train", "--resume", str(trainer.run_dir), *extra])


def _accuracies(row: dict) -> str:
    """'clean 0.9000 PGD 0.5000' (a standard run has no PGD accuracy)."""
    pgd = row.get("val_pgd")
    return f"clean {row['val_clean']:.4f}" + (f" PGD {pgd:.4f}" if pgd is not None else "")


@cli("landscape-train")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.json:
        check_output(args.json, "--json")
    given = _given_flags(argv)
    limit = args.max_hours if args.resume is None or "max_hours" in given else None  # a resumed run was accepted
    if args.resume is None:   # an option the method does not use is refused, not recorded beside its numbers
        refusal = _config(args).resolved().ignored(given)
        if refusal:
            raise ConfigError(refusal)
    if args.sync_bn and launched_by_torchrun():   # before joining: each rank's ValueError, as one line
        check_sync_bn(resolve_device(args.device))
    placing = {"--runs-dir", "--out", "--overwrite"}   # where a new run goes: not for --resume RUN_DIR
    if args.resume == "":  # --resume alone: the run these flags name
        args.resume = str(Path(args.runs_dir) / _config(args).resolved().name)
        given -= {"runs_dir", "name"}
        placing = {"--overwrite"}
    if args.resume is None:
        check_output(args.runs_dir, "--runs-dir", folder=True)
    elif Path(args.resume).is_dir():
        check_output(args.resume, "--resume", folder=True)
    world, device = resolve_world(args.device)   # under torchrun: one process per GPU (nccl) or CPU share
    progress = not args.quiet
    if args.resume is not None:
        typed = {t.split("=")[0] for t in (sys.argv[1:] if argv is None else argv)}
        misplaced = sorted(typed & placing)
        if misplaced and Path(args.resume).is_dir():   # (no run at all: Trainer.resume says so first)
            raise ConfigError(f"--resume continues the run in its own folder; drop {', '.join(misplaced)}")
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        changes = {k: getattr(args, k) for k in given if k in fields}
        trainer = Trainer.resume(args.resume, device, progress, changes=changes)
    else:
        trainer = Trainer(_config(args), args.runs_dir, device, progress, overwrite=args.overwrite)
    try:   # the time of the epochs left, before any: over --max-hours, refused with nothing written
        if args.resume is None:
            _check_sizes(trainer, given)
        est = trainer.estimate()
        line = check_estimate("landscape-train", est["parts"], est["samples"], est["pass_seconds"], limit,
                              "use fewer --epochs, --train-samples or --steps", est["extra"])
    except (ResourceError, ConfigError, KeyboardInterrupt):
        trainer.close(remove_empty=trainer.created)
        raise
    if world.main and progress:   # a slow first epoch is not silence: say what is starting, at once
        c = trainer.cfg
        params = sum(p.numel() for p in trainer.model.parameters())
        done = trainer.epoch
        print(f"landscape-train: {trainer.run_dir}: {c.method} on {c.dataset} ({len(trainer.train_set):,} training "
              f"samples), {c.model} ({params:,} parameters), epochs {done + 1}-{c.epochs} of "
              f"{trainer.iters_per_epoch} batches on {trainer.device}" + (f" x {world.size} processes"
              if world.size > 1 else "") + "; progress on stderr", flush=True)
        print(line, flush=True)
    with on_interrupt(lambda: _resume_hint(trainer, args)):
        result = trainer.fit()
    if not world.main:  # rank 0 reports and writes
        return 0
    last = result.history[-1]
    best = result.history[result.best_epoch - 1]
    print(f"{result.run_dir}: {len(result.history)} epochs; last val {_accuracies(last)}; best.pt = epoch "
          f"{result.best_epoch} by {result.config.select} (val {_accuracies(best)})")
    if args.json:
        write_json(args.json, {**result.to_dict(), "config": trainer.checkpoint_config()})
    return 0


def _check_sizes(trainer, given: set[str]) -> None:
    """Refuse a sample count given on the command line that the data cannot fill (the run would use fewer
    and record the number asked for): --val-samples, --track-probe (validation split), --hsat-probe
    (training samples). A default larger than a small split (1000 validation samples of digits) is not
    refused: it means "all of them"."""
    c = trainer.cfg
    val = f"the validation split of {c.dataset}"
    train = f"--train-samples {c.train_samples}" if c.train_samples else f"the training split of {c.dataset}"
    have = {"val_samples": (len(trainer.val_y), val),
            "track_probe": (len(trainer.tracker.y) if trainer.tracker is not None else None, val),
            "hsat_probe": (len(trainer.hsat.y) if trainer.hsat is not None else None, train)}
    for name, (used, where) in have.items():
        asked = getattr(c, name)
        if name in given and used is not None and asked is not None and used < asked:
            raise ConfigError(f"--{name.replace('_', '-')} {asked}: {where} holds only {used} samples; give at "
                              f"most {used}")


def _config(args: argparse.Namespace) -> TrainConfig:
    """The config the flags give (every TrainConfig field has its flag, tests/test_trainer.py checks)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                          if hasattr(args, f.name)})


def _given_flags(argv: Sequence[str] | None) -> set[str]:
    """The destinations of the flags given on the command line (not those left at their defaults)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
