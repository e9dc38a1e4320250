"""landscape-eval: clean, PGD and (optionally) AutoAttack accuracy of a checkpoint."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..checkpoint import load_checkpoint
from ..data import dataset_info, load_dataset
from ..io import write_json
from ..audit import audit
from ..errors import ConfigError
from ..evaluate import evaluate
from .attack_args import add_attack_arguments, attack_from_args, describe_attack
from .common import (Parser, add_checkpoint_source, add_device, check_compatible, check_output, cli, int_range,
                     nonneg_float, positive_float, positive_int, resolve_world, set_types, source_options)

TYPES = {"--eps": nonneg_float, "--steps": positive_int, "--step-size": positive_float, "--restarts": positive_int,
         "--samples": positive_int, "--square-queries": positive_int, "--batch-size": positive_int,
         "--attack-batch-size": positive_int,
         "--seed": int_range(0, 2 ** 63 - 1)}

DESCRIPTION = """\
Clean and robust accuracy of a checkpoint: PGD-k with random start (default 20 steps of 2.5*eps/steps,
--restarts keeps each sample's worst case) and, with --autoattack, the standard AutoAttack ensemble
(pyautoattack package; install the extra landscape[autoattack]). eps defaults to the training eps; a
checkpoint without one (a standard run, a foreign state_dict) needs --eps.

--audit asks whether the robust accuracy can be believed: PGD on the cross-entropy against PGD on a margin
loss and AutoAttack, twice the steps with restarts, an eps sweep to an unbounded budget, the PGD loss
traces, zero or non-finite input gradients, a saturated softmax, a randomized model (then every attack
uses EOT), Square and random noise on what the white-box attacks left, FGSM against PGD, and with
--surrogate examples transferred from another model. Each check prints a verdict and what to do; the JSON
holds "audit": {"verdict", "checks"} with each check's evidence. The audit costs about 0.2 of one
AutoAttack run beyond it (docs/audit.md).

AutoAttack keeps each chunk's per-sample outcome in --autoattack-state DIR as it comes: the same command
again continues where it stopped. Under torchrun each process attacks every size-th chunk; the result
equals one process's."""


def build_parser() -> Parser:
    p = Parser(prog="landscape-eval", description=DESCRIPTION)
    add_checkpoint_source(p)
    add_attack_arguments(p, steps=20)
    p.add_argument("--autoattack", action=argparse.BooleanOptionalAction, default=None,
                   help="also run AutoAttack (standard version; on by default with --audit)")
    p.add_argument("--audit", action="store_true",
                   help="audit the evaluation for gradient masking and failed attacks (see above)")
    p.add_argument("--autoattack-state", metavar="DIR",
                   help="keep AutoAttack's per-sample outcome here as it comes; rerun to continue")
    p.add_argument("--square-queries", type=int, default=5000,
                   help="--audit without AutoAttack: queries of the Square attack on the white-box survivors "
                        "(default 5000, AutoAttack's)")
    p.add_argument("--surrogate", metavar="CKPT",
                   help="--audit: transfer PGD examples from this checkpoint (e.g. a standard model of the data)")
    p.add_argument("--split", default="test", help="train, val, train-full or test")
    p.add_argument("--samples", "--n-samples", dest="samples", type=int,
                   help="evaluate the first N samples of the split (default: all; --n-samples is the old spelling)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seeds the PGD random starts and AutoAttack")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    add_device(p)
    return set_types(p, TYPES)


@cli("landscape-eval")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_aa = args.autoattack if args.autoattack is not None else args.audit
    if args.autoattack_state and not run_aa:
        raise ConfigError("--autoattack-state keeps AutoAttack's progress: add --autoattack (or --audit)")
    if args.surrogate and not args.audit:
        raise ConfigError("--surrogate is an input of --audit's transfer check: add --audit")
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint, args.surrogate])
    if args.autoattack_state:
        check_output(args.autoattack_state, "--autoattack-state", folder=True,
                     inputs=[args.checkpoint, args.surrogate, args.json])
    world, device = resolve_world(args.device)   # under torchrun: AutoAttack's chunks shared out
    ck = load_checkpoint(args.checkpoint, args.arch, args.dataset, device, **source_options(args))
    check_compatible(ck, dataset_info(args.dataset or ck.dataset, args.data_dir))
    attack = attack_from_args(args, ck.config)  # no eps anywhere: one line asking for --eps
    surrogate = None
    if args.surrogate:
        sur = load_checkpoint(args.surrogate, None, args.dataset or ck.dataset, device)
        check_compatible(sur, dataset_info(args.dataset or ck.dataset, args.data_dir))
        surrogate = sur.model
    if run_aa:
        from ..autoattack import _package
        _package()    # the extra is missing: one line now, not after the PGD work
    ds = load_dataset(args.dataset or ck.dataset, args.split, args.data_dir, args.download)
    x, y = ds.tensors(args.samples, device)
    say = world.main
    if run_aa and say:   # the ensemble's members run inside pyautoattack: say what is coming
        print(f"landscape-eval: AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on {len(y)} samples at "
              f"eps {attack.eps:g}" + (f" in {world.size} processes" if world.size > 1 else "")
              + "; thousands of passes per sample, progress per member and chunk", file=sys.stderr, flush=True)
    if args.audit:
        res = audit(ck.model, x, y, attack, seed=args.seed, autoattack=run_aa,
                    autoattack_state=args.autoattack_state, surrogate=surrogate, batch_size=args.batch_size,
                    square_queries=args.square_queries, progress=say)
        clean, pgd, aa = res.accuracies["clean"], res.accuracies["pgd"], res.accuracies.get("autoattack")
    else:
        res = evaluate(ck.model, x, y, batch_size=args.batch_size, seed=args.seed, autoattack=run_aa,
                       attack=attack, autoattack_state=args.autoattack_state, progress=say)
        clean, pgd, aa = res.clean_acc, res.pgd_acc, res.autoattack_acc
    if not say:
        return 0
    line = f"{args.checkpoint}: {ds.name}/{args.split} n={res.n}  clean {clean:.4f}"
    if pgd is not None:
        line += f"  PGD-{attack.steps} ({describe_attack(attack)}) {pgd:.4f}"
    if aa is not None:
        line += f"  AutoAttack {aa:.4f}"
    print(line)
    if args.audit:
        print(res.table())
    if args.json:
        write_json(args.json, {**res.to_dict(), "checkpoint": args.checkpoint, "dataset": ds.name,
                               "split": args.split, "config": ck.config})
    return 0


if __name__ == "__main__":
    sys.exit(main())
