"""landscape-eval: clean, PGD and (optionally) AutoAttack accuracy of a checkpoint."""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from ..analysis.settings import CONSTRAINTS
from ..attack_spec import CONSTRAINTS as ATTACK, FLAGS as ATTACK_FLAGS
from ..checkpoint import load_checkpoint
from ..data import dataset_info, load_dataset
from ..io import write_json
from ..audit import audit
from ..errors import ConfigError
from ..evaluate import evaluate
from ..progress import bar_callback
from .attack_args import add_attack_arguments, attack_from_args, check_estimate, describe_attack, given_options
from .common import (Parser, add_checkpoint_source, add_device, check_compatible, check_output, cli, cli_types,
                     on_interrupt, resolve_world, set_types, source_options)

#: the flags' types: the attack's from AttackSpec's table, the rest from the analysis settings' table
TYPES = {**cli_types(CONSTRAINTS), **cli_types(ATTACK, ATTACK_FLAGS)}

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
equals one process's.

Before the work it prints its estimate (forward+backward passes per sample x samples, at the cost of one
pass timed on a batch) and refuses one over --max-hours. An option that the chosen mode does not use is
refused, not recorded: --restarts with --audit (its PGD runs once; more_effort adds its own restarts),
--square-queries except with --audit --no-autoattack."""


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
    p.add_argument("--batch-size", type=int, default=256,
                   help="samples per forward pass of the clean accuracy, AutoAttack (its chunks) and the audit's "
                        "checks; PGD attacks in batches of --attack-batch-size")
    p.add_argument("--seed", type=int, default=0, help="seeds the PGD random starts and AutoAttack")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--max-hours", type=float, default=24.0,
                   help="refuse an evaluation whose estimated time (one pass timed on a batch) exceeds this")
    add_device(p)
    return set_types(p, TYPES)


def check_options(args: argparse.Namespace, given: set[str], run_aa: bool) -> None:
    """Refuse, in one line, an option given explicitly to a mode that does not use it (it would be recorded
    beside a number computed without it)."""
    if "restarts" in given and args.audit:
        raise ConfigError(f"--restarts {args.restarts} sets plain PGD's restarts; --audit runs its PGD once per "
                          "sample (its more_effort check adds 5 restarts at twice the steps): drop --restarts, or "
                          "run without --audit for PGD with restarts")
    if "square_queries" in given and not (args.audit and not run_aa):
        why = ("without --audit no Square attack runs" if not args.audit else
               "with AutoAttack, Square runs as its member, at the standard 5,000 queries")
        raise ConfigError(f"--square-queries sets the Square attack of --audit --no-autoattack; {why}: drop "
                          "--square-queries" + ("" if not args.audit else " or add --no-autoattack"))


def estimate(args: argparse.Namespace, model, x, y, attack, run_aa: bool, surrogate, world) -> str:
    """The estimate line of this evaluation (``attack_args.check_estimate``): clean pass, PGD (or the audit's
    attacks, counted from ``audit``'s defaults), AutoAttack as if half the samples survived each member
    (shared by the processes under torchrun) or the audit's Square on half; refused over --max-hours.
    Cost: two forward+backward passes of one attack batch."""
    import inspect
    from ..attack_spec import AUTOATTACK_PASSES, FORWARD_PASSES, sample_pass_seconds
    from ..audit import unbounded_eps
    parts: list[tuple[str, float]] = [("clean", FORWARD_PASSES)]
    k = attack.steps + 1
    if args.audit:
        d = {name: q.default for name, q in inspect.signature(audit).parameters.items()}
        big = unbounded_eps(attack, x)
        sweep = len([f for f in d["sweep"] if attack.eps * f < big]) + 1
        parts += [(f"PGD-{attack.steps} CE and margin", 2 * k), ("FGSM", 2.0), ("input gradients", 1.0),
                  (f"more_effort {d['effort_restarts']} x PGD-{2 * attack.steps}",
                   d["effort_restarts"] * (2 * attack.steps + 1)), ("eps sweep", sweep * k),
                  ("noise", d["noise_draws"] * FORWARD_PASSES)]
        if surrogate is not None:
            parts.append(("transfer", k + FORWARD_PASSES))
        if not run_aa:
            parts.append(("Square if half survive", 0.5 * args.square_queries * FORWARD_PASSES))
    elif attack.active:
        parts.append((f"PGD-{attack.steps}" + (f" x {attack.restarts} restarts" if attack.restarts > 1 else ""),
                      attack.passes_per_sample))
    if run_aa:
        parts.append(("AutoAttack if half survive each member" + (f", shared by {world.size} processes"
                                                                    if world.size > 1 else ""),
                      0.5 * AUTOATTACK_PASSES / world.size))
    per = sample_pass_seconds(model, x, y, attack.batch_size)
    advice = ("use fewer --samples, --steps or --restarts" if attack.restarts > 1 and not args.audit
              else "use fewer --samples or --steps")
    return check_estimate("landscape-eval", parts, len(y), per, args.max_hours, advice)


def check_autoattack_state(folder: str, batch_size: int, attack, seed: int) -> None:
    """Refuse, before any work, an --autoattack-state folder made with another batch size (its chunks), eps,
    norm or seed, naming what differs (``run_autoattack`` would find it only at its first chunk, after the PGD
    work). Another model or other samples are still found there, by their digests."""
    from ..autoattack import STANDARD, _differs, state_settings
    made = state_settings(folder)
    if made is None:
        return
    now = {**made, "chunk": batch_size, "eps": float(attack.eps), "norm": attack.norm, "seed": int(seed),
           "attacks": list(STANDARD), "square_queries": None}
    if made != now:
        raise ConfigError(f"--autoattack-state {folder} was made with other settings than this run: "
                          f"{_differs(made, now)}; give what it was made with to continue it, or use another "
                          "--autoattack-state folder (or delete it)")


def interrupt_hint(args: argparse.Namespace, argv: Sequence[str] | None, run_aa: bool, world) -> str:
    """What Ctrl-C leaves: with --autoattack-state, the chunks done and the command that continues them;
    else that nothing is kept."""
    if args.autoattack_state:
        words = list(sys.argv[1:] if argv is None else argv)
        again = ("the same torchrun command" if world.size > 1
                 else shlex.join(["landscape-eval", *words]))
        return (f"AutoAttack's finished chunks are kept in {args.autoattack_state}; rerunning continues from them "
                f"(the PGD part runs again): {again}")
    return "nothing is kept: rerunning starts over" + (
        " (add --autoattack-state DIR to keep AutoAttack's progress)" if run_aa else "")


@cli("landscape-eval")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_aa = args.autoattack if args.autoattack is not None else args.audit
    if args.autoattack_state and not run_aa:
        raise ConfigError("--autoattack-state keeps AutoAttack's progress: add --autoattack (or --audit)")
    if args.surrogate and not args.audit:
        raise ConfigError("--surrogate is an input of --audit's transfer check: add --audit")
    check_options(args, given_options(build_parser, argv), run_aa)
    if args.json:
        check_output(args.json, "--json", inputs=[args.checkpoint, args.surrogate])
    if args.autoattack_state:
        check_output(args.autoattack_state, "--autoattack-state", folder=True, lock=True,   # one evaluation a state
                     inputs=[args.checkpoint, args.surrogate, args.json])
    world, device = resolve_world(args.device)   # under torchrun: AutoAttack's chunks shared out
    with on_interrupt(lambda: interrupt_hint(args, argv, run_aa, world)):
        return _evaluate(args, run_aa, world, device)


def _evaluate(args: argparse.Namespace, run_aa: bool, world, device) -> int:
    ck = load_checkpoint(args.checkpoint, args.arch, args.dataset, device, **source_options(args))
    check_compatible(ck, dataset_info(args.dataset or ck.dataset, args.data_dir))
    attack = attack_from_args(args, ck.config)  # no eps anywhere: one line asking for --eps
    if args.audit and attack.restarts != 1:   # the checkpoint's restarts: the audit's PGD runs one, say so
        attack = attack.replace(restarts=1)
    surrogate = None
    if args.surrogate:
        sur = load_checkpoint(args.surrogate, None, args.dataset or ck.dataset, device)
        check_compatible(sur, dataset_info(args.dataset or ck.dataset, args.data_dir))
        surrogate = sur.model
    if run_aa:
        from ..autoattack import _package
        _package()    # the extra is missing: one line now, not after the PGD work
    if args.autoattack_state:
        check_autoattack_state(args.autoattack_state, args.batch_size, attack, args.seed)
    ds = load_dataset(args.dataset or ck.dataset, args.split, args.data_dir, args.download)
    x, y = ds.tensors(args.samples, device)
    say = world.main
    from ..inference import predict
    predict(ck.model, x, args.batch_size)   # outputs that are not finite: refused before an estimate is printed
    line = estimate(args, ck.model, x, y, attack, run_aa, surrogate, world)   # over --max-hours: refused here
    if say:   # on stdout, as landscape-spectrum's estimate: stderr keeps progress and one-line errors
        print(line, flush=True)
    if run_aa and say:   # the ensemble's members run inside pyautoattack: say what is coming
        print(f"landscape-eval: AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) on {len(y)} samples at "
              f"eps {attack.eps:g}" + (f" in {world.size} processes" if world.size > 1 else "")
              + "; thousands of passes per sample, progress per member and chunk", file=sys.stderr, flush=True)
    if args.audit:
        with bar_callback("audit", "part", show=say) as cb:
            res = audit(ck.model, x, y, attack, seed=args.seed, autoattack=run_aa,
                        autoattack_state=args.autoattack_state, surrogate=surrogate, batch_size=args.batch_size,
                        square_queries=args.square_queries, callback=cb)
        clean, pgd, aa = res.accuracies["clean"], res.accuracies["pgd"], res.accuracies.get("autoattack")
    else:
        with bar_callback("evaluate", "sample", show=say) as cb:
            res = evaluate(ck.model, x, y, batch_size=args.batch_size, seed=args.seed, autoattack=run_aa,
                           attack=attack, autoattack_state=args.autoattack_state, callback=cb)
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
