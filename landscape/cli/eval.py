"""landscape-eval: clean, PGD and (optionally) AutoAttack accuracy of a checkpoint."""
from __future__ import annotations

import sys
from typing import Sequence

from ..checkpoint import load_checkpoint
from ..data import dataset_info, load_dataset
from ..io import write_json
from ..evaluate import evaluate
from .attack_args import add_attack_arguments, attack_from_args, describe_attack
from .common import (Parser, add_checkpoint_source, add_device, check_compatible, check_output, cli, int_range,
                     nonneg_float, positive_float, positive_int, resolve_device, set_types, source_options)

TYPES = {"--eps": nonneg_float, "--steps": positive_int, "--step-size": positive_float, "--restarts": positive_int,
         "--samples": positive_int, "--batch-size": positive_int, "--attack-batch-size": positive_int,
         "--seed": int_range(0, 2 ** 63 - 1)}

DESCRIPTION = """\
Clean and robust accuracy of a checkpoint: PGD-k with random start (default 20 steps of 2.5*eps/steps,
--restarts keeps each sample's worst case) and, with --autoattack, the standard AutoAttack ensemble
(pyautoattack package; install the extra landscape[autoattack]). eps defaults to the training eps; a
checkpoint without one (a standard run, a foreign state_dict) needs --eps."""


def build_parser() -> Parser:
    p = Parser(prog="landscape-eval", description=DESCRIPTION)
    add_checkpoint_source(p)
    add_attack_arguments(p, steps=20)
    p.add_argument("--autoattack", action="store_true", help="also run AutoAttack (standard version)")
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
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint])
    device = resolve_device(args.device)
    ck = load_checkpoint(args.checkpoint, args.arch, args.dataset, device, **source_options(args))
    check_compatible(ck, dataset_info(args.dataset or ck.dataset, args.data_dir))
    attack = attack_from_args(args, ck.config)  # no eps anywhere: one line asking for --eps
    ds = load_dataset(args.dataset or ck.dataset, args.split, args.data_dir, args.download)
    x, y = ds.tensors(args.samples, device)
    if args.autoattack:   # the ensemble runs silently inside pyautoattack: say what is coming
        print(f"landscape-eval: AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on {len(y)} samples at "
              f"eps {attack.eps:g} after PGD-{attack.steps}; it runs thousands of passes per sample and shows no "
              "progress until it ends", file=sys.stderr, flush=True)
    res = evaluate(ck.model, x, y, batch_size=args.batch_size, seed=args.seed, autoattack=args.autoattack,
                   attack=attack)
    line = f"{args.checkpoint}: {ds.name}/{args.split} n={res.n}  clean {res.clean_acc:.4f}"
    if res.pgd_acc is not None:
        line += f"  PGD-{attack.steps} ({describe_attack(attack)}) {res.pgd_acc:.4f}"
    if res.autoattack_acc is not None:
        line += f"  AutoAttack {res.autoattack_acc:.4f}"
    print(line)
    if args.json:
        write_json(args.json, {**res.to_dict(), "checkpoint": args.checkpoint, "dataset": ds.name,
                               "split": args.split, "config": ck.config})
    return 0


if __name__ == "__main__":
    sys.exit(main())
