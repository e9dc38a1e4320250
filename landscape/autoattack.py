"""AutoAttack (Croce & Hein 2020) from the ``pyautoattack`` package, run so that it can be stopped, resumed and
shared out: the one owner of our calls into that package.

The samples are cut into chunks of ``chunk`` at fixed positions; within a chunk the members of the standard
ensemble (APGD-CE, APGD-T, FAB-T, Square) run one after the other on the samples still robust, as
``run_standard_evaluation`` does, each seeded by (seed, the chunk's first index). After every member the
chunk's per-sample outcome (which member broke each sample, if any) is written atomically to
``state_dir/chunk-NNNNNNN.json``, with the settings and a digest of the model and the chunk's data: a rerun
with the same state folder skips what is done (a state of another model, data or setting is refused), and
a run stopped in the middle of a chunk loses at most one member's work on it. Under ``torchrun`` each
process takes every size-th chunk and the outcomes are gathered: since a chunk's outcome depends only on the
chunk, any number of processes gives the one-process result.

Written around the package (not just ``run_standard_evaluation(state_path=...)``, which saves only between
members of the whole set and has no notion of shards) because a study needs per-sample outcomes and the
"who broke it" bookkeeping that the audit compares with its own attacks. Every adversarial input the package
returns is checked to lie in the eps-ball and [0, 1] and re-classified here: the accuracy is ours (and, as
every accuracy, refused when the model's outputs are not finite: ``finite``).
"""
from __future__ import annotations

import inspect
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import distributed
from ._version import __version__
from .attacks import check_eps
from .digest import tensor_digest
from .errors import ConfigError
from .inference import predict
from .io import read_json, write_json
from .progress import Callback, report
from .seeding import derive

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t", "apgd-dlr", "fab")
PACKAGE_NORM = {"linf": "Linf", "l2": "L2"}
MISCLASSIFIED = "clean"     # broken_by of a sample the model gets wrong without any attack


@dataclass
class AutoAttackResult:
    """Per-sample outcome of AutoAttack on ``n`` samples: ``broken_by[i]`` is the member of ``attacks`` that
    first made sample i misclassified, ``"clean"`` when it was wrong to begin with, None when it survived
    them all."""
    n: int
    eps: float
    norm: str
    seed: int
    chunk: int
    attacks: tuple[str, ...]
    broken_by: list[str | None]
    seconds: float = 0.0
    resumed_chunks: int = 0
    settings: dict = field(default_factory=dict)

    @property
    def robust(self) -> torch.Tensor:
        """(n,) bool: survived every member."""
        return torch.tensor([b is None for b in self.broken_by], dtype=torch.bool)

    @property
    def clean_acc(self) -> float:
        return sum(b != MISCLASSIFIED for b in self.broken_by) / self.n

    @property
    def accuracy(self) -> float:
        """Robust accuracy under the whole ensemble."""
        return sum(b is None for b in self.broken_by) / self.n

    def accuracy_after(self) -> dict[str, float]:
        """Robust accuracy after each member in turn (``clean`` first), as the package reports it."""
        out, left = {"clean": self.clean_acc}, sum(b != MISCLASSIFIED for b in self.broken_by)
        for a in self.attacks:
            left -= sum(b == a for b in self.broken_by)
            out[a] = left / self.n
        return out

    def to_dict(self) -> dict:
        return {"n": self.n, "eps": self.eps, "norm": self.norm, "seed": self.seed, "chunk": self.chunk,
                "attacks": list(self.attacks), "clean_acc": self.clean_acc, "autoattack_acc": self.accuracy,
                "accuracy_after": self.accuracy_after(), "broken_by": self.broken_by, "seconds": self.seconds,
                "resumed_chunks": self.resumed_chunks}


def _package():
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:
        raise ConfigError("AutoAttack needs the optional extra: pip install 'landscape[autoattack]'") from e
    return AutoAttack


def adversarial_inputs(out: object) -> torch.Tensor:
    """The adversarial inputs from ``run_standard_evaluation``'s return value, whatever the package version:
    a tensor (autoattack <= 0.1, pyautoattack < 0.2) or a tuple ``(x_adv, y_adv)`` (pyautoattack 0.2)."""
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"AutoAttack returned a {type(out).__name__}, not adversarial inputs; "
                          "this version of the AutoAttack package is not supported")
    return out


def chunk_seed(seed: int, start: int) -> int:
    """The seed of the chunk beginning at sample ``start`` (as ``attacks.batch_generator``)."""
    return derive(seed, start)


def _member(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str, eps: float, norm: str, seed: int,
            batch_size: int, square_queries: int | None = None) -> torch.Tensor:
    """One member of the standard ensemble (its standard settings) on (x, y): the adversarial inputs,
    checked against the budget. The package seeds torch's global generators; they are restored after."""
    AutoAttack = _package()
    devices = [x.device] if x.device.type == "cuda" else []
    package_log = logging.getLogger("auto-attack")
    level = package_log.level
    with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the package's own checks warn; the audit makes its own
        package_log.setLevel(logging.ERROR)
        adversary = AutoAttack(model, eps=eps, norm=PACKAGE_NORM[norm], version="standard", seed=seed,
                               device=x.device)
        adversary.verbose = False
        adversary.attacks_to_run = [attack]
        if square_queries is not None:
            adversary.square.n_queries = square_queries
        run = adversary.run_standard_evaluation
        size = "batch_size" if "batch_size" in inspect.signature(run).parameters else "bs"
        try:
            x_adv = adversarial_inputs(run(x, y, **{size: batch_size})).to(x.device)
        finally:
            package_log.setLevel(level)
    if x_adv.shape == x.shape and not bool(torch.isfinite(x_adv).all()):
        k = int((~torch.isfinite(x_adv.flatten(1)).all(1)).sum())
        raise ConfigError(f"AutoAttack ({attack}) returned NaN or infinite inputs for {k} of {len(x)} samples (the "
                          "model's outputs or gradients are not finite along its way); refusing its accuracy")
    d = (x_adv - x).flatten(1)
    dist = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    if x_adv.shape != x.shape or dist.max().item() > eps * (1 + 1e-5) + 1e-5 \
            or x_adv.min().item() < 0 or x_adv.max().item() > 1:
        raise ConfigError(f"AutoAttack ({attack}) returned inputs outside the eps-ball or [0, 1]; refusing its "
                          "accuracy")
    return x_adv


def _chunk_state(path: Path | None, settings: dict) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        state = read_json(path)
    except Exception as e:   # noqa: BLE001 - a torn or foreign file is named, not a traceback
        raise ConfigError(f"AutoAttack state {path} is unreadable ({type(e).__name__}); delete it to start over") \
            from None
    if not isinstance(state, dict) or state.get("settings") != settings:
        made = state.get("settings") if isinstance(state, dict) else None
        raise ConfigError(f"AutoAttack state {path.parent} was made with other settings than this run: "
                          f"{_differs(made, settings)}; "
                          "give what it was made with to continue it, or use another --autoattack-state folder "
                          "(or delete it)")
    return state


def state_settings(folder: str | Path) -> dict | None:
    """The settings an --autoattack-state folder was made with (its first chunk's), or None when it holds no
    readable chunk (run_autoattack names a torn or foreign file itself). Cost: one small JSON read."""
    first = next(iter(sorted(Path(folder).glob("chunk-*.json"))), None)
    try:
        made = read_json(first).get("settings") if first is not None else None
    except Exception:   # noqa: BLE001 - a torn or foreign file: run_autoattack names it
        return None
    return made if isinstance(made, dict) else None


def _differs(made: Any, now: dict) -> str:
    """What a chunk's stored settings ``made`` differ in from this run's ``now``, in the words of the flags:
    "batch size 256 ...; this run uses 128" (the batch size decides the chunks), "eps 0.1; this run uses 0.2"."""
    if not isinstance(made, dict):
        return "no settings that this version reads (a foreign or older file)"
    words = {"eps": "eps", "norm": "norm", "seed": "seed", "attacks": "members", "square_queries": "Square queries"}
    out = []
    if made.get("chunk") != now["chunk"]:
        out.append(f"batch size {made.get('chunk')} (its chunks of samples); this run uses {now['chunk']} "
                   "(--batch-size)")
    for key, word in words.items():
        if made.get(key) != now.get(key):
            out.append(f"{word} {made.get(key)}; this run uses {now.get(key)}")
    if not out and (made.get("lo"), made.get("hi")) != (now["lo"], now["hi"]):
        out.append(f"samples {made.get('lo')}-{made.get('hi')} in this chunk; this run's are {now['lo']}-{now['hi']} "
                   "(another --samples)")
    if not out and made.get("model") != now["model"]:
        out.append("another model's weights (another checkpoint)")
    if not out and made.get("data") != now["data"]:
        out.append("other samples (another --dataset, --split or --samples)")
    return "; ".join(out) or "other settings"


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
                   seed: int = 0, batch_size: int = 256, chunk: int | None = None,
                   attacks: Sequence[str] = STANDARD, state_dir: str | Path | None = None,
                   callback: Callback = None, square_queries: int | None = None) -> AutoAttackResult:
    """AutoAttack's per-sample outcome on (x, y) (module doc: chunks, resume, shards). ``chunk`` defaults to
    ``batch_size``; ``attacks`` a subset or reordering of the package's members; ``state_dir`` keeps each
    chunk's outcome as it comes (None: nothing saved); ``square_queries`` replaces Square's standard 5,000;
    ``callback(done, total, "AutoAttack", "member")`` reports progress (``landscape.progress``). Under ``torchrun`` every process must call it with the
    same arguments; each gets the whole result.
    Cost: the standard ensemble's thousands of passes per robust sample (APGD-CE 100 steps, APGD-T 9 x 100,
    FAB-T 9 targets, Square 5,000 queries on what survives), plus one forward per member and chunk."""
    check_eps(eps, norm)
    attacks = tuple(attacks)
    known = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")
    bad = [a for a in attacks if a not in known]
    if bad or not attacks:
        raise ConfigError(f"unknown AutoAttack member {bad[0] if bad else None!r}; choose from {', '.join(known)}")
    chunk = int(chunk or batch_size)
    if chunk < 1 or batch_size < 1:
        raise ConfigError("AutoAttack chunk and batch size must be positive")
    _package()
    n = len(y)
    folder = Path(state_dir) if state_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    w = distributed.world()
    weights = tensor_digest(model.state_dict().items())
    starts = list(range(0, n, chunk))
    mine = starts[w.rank::w.size]
    total, done = len(mine) * len(attacks), 0
    t0, records, resumed = time.perf_counter(), {}, 0
    for lo in mine:
        hi = min(lo + chunk, n)
        xs, ys = x[lo:hi], y[lo:hi]
        settings = {"eps": float(eps), "norm": norm, "seed": int(seed), "chunk": chunk, "lo": lo, "hi": hi,
                    "attacks": list(attacks), "model": weights, "square_queries": square_queries,
                    "data": tensor_digest([("x", xs), ("y", ys)])}
        path = folder / f"chunk-{lo:07d}.json" if folder is not None else None
        state = _chunk_state(path, settings)
        if state is None:
            pred = predict(model, xs, batch_size, at="" if hi - lo == n else f"(AutoAttack's chunk of samples "
                                                                            f"{lo}-{hi - 1})")
            state = {"settings": settings, "done": [], "seconds": 0.0, "landscape_version": __version__,
                     "broken_by": [None if bool(p == t) else MISCLASSIFIED for p, t in zip(pred, ys)]}
        else:
            resumed += 1
        done += len(state["done"])
        report(callback, done, total, "AutoAttack", "member")
        for attack in attacks:
            if attack in state["done"]:
                continue
            t1 = time.perf_counter()
            left = [i for i, b in enumerate(state["broken_by"]) if b is None]
            if left:
                idx = torch.tensor(left, device=xs.device)
                x_adv = _member(model, xs[idx], ys[idx], attack, eps, norm, chunk_seed(seed, lo), batch_size,
                                square_queries)
                wrong = predict(model, x_adv, batch_size, at=f"at AutoAttack's ({attack}) examples") != ys[idx]
                for i, bad_i in zip(left, wrong.tolist()):
                    if bad_i:
                        state["broken_by"][i] = attack
            state["done"].append(attack)
            state["seconds"] += time.perf_counter() - t1
            if path is not None:
                write_json(path, state)
            done += 1
            report(callback, done, total, "AutoAttack", "member")
        records[lo] = state
    if w.active:   # every process gets every chunk's outcome
        import torch.distributed as dist
        gathered: list[Any] = [None] * w.size
        dist.all_gather_object(gathered, (records, resumed))    # objects: works on gloo and nccl alike
        records = {lo: r for part, _ in gathered for lo, r in part.items()}
        resumed = sum(k for _, k in gathered)
    broken = [b for lo in starts for b in records[lo]["broken_by"]]
    return AutoAttackResult(n, float(eps), norm, int(seed), chunk, attacks, broken, time.perf_counter() - t0,
                            resumed, {"batch_size": batch_size, "state_dir": str(folder) if folder else None,
                                      "member_seconds": sum(r["seconds"] for r in records.values())})


def autoattack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                        batch_size: int = 256, seed: int = 0, attacks: Sequence[str] | None = None,
                        norm: str = "linf") -> float:
    """Robust accuracy under AutoAttack (standard ensemble; ``attacks``, e.g. ``("apgd-ce",)``, runs only
    those members): ``run_autoattack(...).accuracy`` without a state folder. Cost: as ``run_autoattack``."""
    return run_autoattack(model, x, y, eps, norm, seed, batch_size, attacks=attacks or STANDARD).accuracy


__all__ = ["AutoAttackResult", "STANDARD", "WHITE_BOX", "adversarial_inputs", "autoattack_accuracy",
           "chunk_seed", "run_autoattack"]
