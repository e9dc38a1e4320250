"""The training loop: SGD, LR schedule, curriculum, validation, best/last checkpoints, resume, metrics.csv.

Reproducibility: all randomness is drawn from CPU generators derived from (seed, purpose, epoch), never
from global RNG state, so a run resumed from ``last.pt`` replays exactly what an uninterrupted run does
(bit-identical weights on the same device and thread count). ``last.pt`` is written at the end of every
epoch and, mid-epoch, on SIGTERM / SIGUSR1 (then the run stops with ``Preempted``: exit 75 from the
command line, for a job script to requeue) and every ``checkpoint_minutes``; a mid-epoch ``last.pt``
holds the epoch's position (``EpochState``: batches done, generator states, running sums), and resuming
skips the batches done and goes on with the same generators.
Files in ``out/NAME/``: config.json, metrics.csv, last.pt, best.pt, epoch_XXX.pt with ``save_every`` and
hsat.json for H-SAT (``landscape.names.RUN_FILES``); a fresh run (``overwrite``) deletes those of an earlier run first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..checkpoint import load_weights, read_checkpoint, save_checkpoint
from ..attacks import RowShard
from ..data import Dataset, augment, load_dataset
from ..constraints import flag
from ..devices import resolve_device
from ..distributed import all_reduce_sum, check_sync_bn, shard_bounds, world
from ..errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, Preempted
from ..evaluate import evaluate
from ..inference import correct, mean_loss
from ..io import LOCK_NAME, lock_folder, write_csv, write_json
from ..progress import progress_bar
from ..seeding import generator
from ..models import build_model
from ..precision import autocast, grad_scaler, resolve_amp
from ..names import run_files, selection_score
from .config import TrainConfig
from .curriculum import eps_for_lambda, lam_schedule
from .ema import ema_model, update_ema
from .objectives import CURRICULUM_METHODS, OBJECTIVES, EachInput, Step

_SHUFFLE, _ATTACK, _AUGMENT = 1, 2, 3
# flags that may differ on --resume (they change no number); every TrainConfig field must match the run's
RESUME_SAFE = ("device", "quiet", "json")


def derived_generator(seed: int, purpose: int, epoch: int) -> torch.Generator:
    """A CPU generator for one purpose (shuffle, attack, augmentation) in one epoch."""
    return generator(seed, purpose, epoch)


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """LR at iteration ``step``: piecewise (x0.1 at 50% and 75%), cosine to 0, or constant."""
    frac = step / max(total, 1)
    if cfg.lr_schedule == "piecewise":
        return cfg.lr * (1.0 if frac < 0.5 else 0.1 if frac < 0.75 else 0.01)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))
    return cfg.lr


@dataclass
class TrainResult:
    """Where a run's files are, its per-epoch history and which epoch is best.pt (by ``config.select``)."""
    run_dir: Path
    history: list[dict]
    best_epoch: int
    config: TrainConfig
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame(self.history)

    def to_dict(self) -> dict:
        """JSON-ready run summary (kind "training"): every setting, the best epoch's row and the history."""
        best = self.history[self.best_epoch - 1] if 0 < self.best_epoch <= len(self.history) else None
        return {"kind": "training", "landscape_version": __version__, "settings": self.config.to_dict(),
                "seconds": self.seconds, "run_dir": str(self.run_dir), "epochs_done": len(self.history),
                "select": self.config.select, "best_epoch": self.best_epoch, "best": best,
                "history": self.history, **self.extra}


STOP_SIGNALS = ("SIGTERM", "SIGUSR1")  # what SLURM sends before a time limit (--signal) or on preemption


@dataclass
class EpochState:
    """An epoch in progress: the batches done, the running sums of its metrics row and the states of its
    attack and augmentation generators; what a mid-epoch ``last.pt`` stores (``to_dict``) to resume it."""
    epoch: int
    g_attack: torch.Generator
    g_aug: torch.Generator
    batch: int = 0
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    seen: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    lam: float = 1.0
    eps_t: float | None = None

    @classmethod
    def start(cls, seed: int, epoch: int, device: torch.device) -> "EpochState":
        return cls(epoch, derived_generator(seed, _ATTACK, epoch), derived_generator(seed, _AUGMENT, epoch),
                   loss_sum=torch.zeros((), device=device), correct=torch.zeros((), device=device, dtype=torch.long))

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "loss_sum": self.loss_sum.detach().cpu(),
                "correct": self.correct.detach().cpu(), "seen": self.seen, "seconds": self.seconds,
                "extra": self.extra, "lam": self.lam, "eps_t": self.eps_t,
                "g_attack": self.g_attack.get_state(), "g_aug": self.g_aug.get_state()}

    @classmethod
    def from_dict(cls, d: dict, device: torch.device) -> "EpochState":
        gens = []
        for key in ("g_attack", "g_aug"):
            g = torch.Generator()
            g.set_state(d[key])
            gens.append(g)
        return cls(int(d["epoch"]), *gens, batch=int(d["batch"]), loss_sum=d["loss_sum"].to(device),
                   correct=d["correct"].to(device), seen=int(d["seen"]), seconds=float(d["seconds"]),
                   extra=dict(d["extra"]), lam=float(d["lam"]), eps_t=d["eps_t"])


class _StopSignals:
    """While active, SIGTERM and SIGUSR1 set ``received`` (the signal's name) instead of killing the process;
    the previous handlers come back after. Only in the main thread (elsewhere Python allows no handler)."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name)
                self._old[sig] = signal.signal(sig, lambda num, frame: setattr(self, "received",
                                                                                signal.Signals(num).name))
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """One training run. ``Trainer(cfg).fit()`` trains from scratch; ``Trainer.resume(run_dir).fit()`` continues.

    Cost per epoch: one objective (see ``objectives``) per batch, plus validation PGD-``val_steps`` on
    ``val_samples`` samples, plus H-SAT calibrations / sharpness tracking when enabled.
    """

    def __init__(self, cfg: TrainConfig, out: str | Path = "runs", device: str | torch.device = "cpu",
                 progress: bool = True, overwrite: bool = False, *, _resume: tuple[Path, dict] | None = None):
        """A run of ``cfg`` in ``out/cfg.name`` (refused if that folder holds another run, unless
        ``overwrite``). ``_resume`` (``Trainer.resume``'s way in): the run folder and its ``last.pt``, whose
        states replace the fresh ones after the same setup."""
        self.device = resolve_device(device)
        self.cfg = cfg.resolved(self.device)
        self.world = world()
        self.progress = progress and self.world.main
        self.run_dir = Path(out) / self.cfg.name if _resume is None else _resume[0]
        # the folder is locked BEFORE it is examined (rank 0 holds the lock until fit() ends, or until
        # close()): a second run of the same name started a moment later is refused at once instead of
        # both finding the folder empty and the first one being replaced
        self._lock = contextlib.ExitStack()
        created = not self.run_dir.exists()
        if self.world.main:
            self._lock.enter_context(lock_folder(self.run_dir))
        try:
            stale = run_files(self.run_dir) if _resume is None else []
            if stale and not overwrite:
                if (self.run_dir / "last.pt").exists():
                    raise ConfigError(f"{self.run_dir} already holds a run; continue it with --resume "
                                      f"{self.run_dir}, replace it with --overwrite or choose another --name")
                raise ConfigError(f"{self.run_dir} holds files of an earlier run ("
                                  f"{', '.join(p.name for p in stale[:3])}{' ...' if len(stale) > 3 else ''}); "
                                  "replace them with --overwrite or choose another --name")
            self._setup()
        except BaseException:
            self.close(remove_empty=created)
            raise
        self.created = created       # the run folder did not exist before (close(remove_empty=...) may remove it)
        # --overwrite: no old epoch_XXX.pt / hsat.json may stay; removed when fit() starts, so that a run refused
        # after it was set up (an estimate over --max-hours) leaves the earlier run as it was
        self._stale = stale if self.world.main else []
        self.epoch, self.step, self.history, self.best = 0, 0, [], (-math.inf, -1)
        self.state: dict = {}
        self.current: EpochState | None = None  # the epoch in progress (resumed mid-epoch: where it stopped)
        self.stop: _StopSignals | None = None    # the stop signals, while fit() runs
        if _resume is not None:
            try:
                self._restore(*_resume)
            except BaseException:
                self.close()
                raise

    @classmethod
    def resume(cls, run_dir: str | Path, device: str | torch.device = "cpu", progress: bool = True,
               epochs: int | None = None, changes: dict | None = None) -> "Trainer":
        """Continue the run in ``run_dir`` from its ``last.pt``, exactly as it was configured.

        ``changes`` (TrainConfig fields, e.g. the flags given with --resume) and ``epochs`` must agree with
        the run's config, else ``ConfigError`` names what differs; ``epochs`` may grow only where the LR and
        lambda schedules do not depend on the total (constant LR, no curriculum).
        """
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"no run to resume at {run_dir}")
        if not (run_dir / "last.pt").exists():
            raise CheckpointError(f"{run_dir} has no last.pt to resume from")
        ck = read_checkpoint(run_dir / "last.pt")
        if not isinstance(ck, dict) or "train_state" not in ck or "config" not in ck:
            raise CheckpointError(f"{run_dir / 'last.pt'} is not a landscape training checkpoint")
        cfg = TrainConfig.from_dict(ck["config"]["train"]).resolved()
        changes = {**(changes or {}), **({"epochs": epochs} if epochs is not None else {})}
        if "amp" in changes:
            changes["amp"] = resolve_amp(changes["amp"], resolve_device(device))
        _check_resume_changes(cfg, changes, run_dir, int(ck.get("epoch") or 0))
        return cls(dataclasses.replace(cfg, **changes).resolved(), device=device, progress=progress,
                   _resume=(run_dir, ck))

    def _restore(self, run_dir: Path, ck: dict) -> None:
        """The states of a ``last.pt`` (weights, optimizer, scaler, EMA, step, history, best, H-SAT state,
        the epoch in progress) in place of the fresh ones."""
        ts = ck["train_state"]
        load_weights(self.model, ck["model_state"], str(run_dir / "last.pt"))
        self.optimizer.load_state_dict(ts["optimizer"])
        self.epoch, self.step = int(ck["epoch"]), int(ts["step"])
        self.history, self.best = list(ts["history"]), tuple(ts["best"])
        self.state = dict(ts.get("extra", {}))
        if "scaler" in ts:
            self.scaler.load_state_dict(ts["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ts["ema"])
        self.current = EpochState.from_dict(ts["epoch_state"], self.device) if ts.get("epoch_state") else None

    def close(self, remove_empty: bool = False) -> None:
        """Release the run folder's lock (fit() does at its end); ``remove_empty``: also remove the folder when
        it holds nothing but the lock file (a run that failed before writing anything)."""
        self._lock.close()
        if remove_empty and self.world.main and self.run_dir.is_dir():
            rest = [p for p in self.run_dir.iterdir() if p.name != LOCK_NAME]
            if not rest:
                (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()

    # ----------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.cfg
        train = load_dataset(c.dataset, "train", c.data_dir, c.download, c.split_seed)
        val = load_dataset(c.dataset, "val", c.data_dir, c.download, c.split_seed)
        if c.train_samples:   # more than the split holds is refused (it was clipped silently)
            if c.train_samples > len(train):
                raise DataError(f"--train-samples {c.train_samples}: the {train.split} split of {c.dataset} has only "
                                f"{len(train)} samples")
            train = train.subset(c.train_samples)
        self.train_set: Dataset = train.to(self.device)
        n_val = min(c.val_samples or len(val), len(val))
        self.val_x, self.val_y = val.tensors(n_val, self.device)
        self.info = train.info
        self.model: nn.Module = build_model(c.model, self.info, seed=c.seed).to(self.device)
        if c.sync_bn and self.world.active:
            check_sync_bn(self.device)   # SyncBatchNorm runs on GPUs only: one line, not every rank's traceback
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if self.world.active and c.batch_size < self.world.size:
            raise ConfigError(f"--batch-size {c.batch_size} is the global batch: it must hold at least one "
                              f"sample per process ({self.world.size} processes)")
        if c.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # what the step's passes run through (self.model stays the module whose weights are saved): compiled
        # with --compile (same parameters), and under torchrun the training loss through DDP (gradients
        # all-reduced in backward) while the attack uses the bare (compiled) module. Static shapes: an epoch
        # has at most two batch sizes (full and last), each gets its own specialized graph instead of one
        # dynamic-shape graph for both (P-SAT's early stopping masks with torch.where on the whole batch, so
        # it adds no shapes: 5 graphs in all, none recompiled after the first epoch)
        self.fast: nn.Module = torch.compile(self.model, dynamic=False) if c.compile else self.model
        self.ddp: nn.Module = self.fast if not self.world.active else nn.parallel.DistributedDataParallel(
            EachInput(self.fast), device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum,
                                         weight_decay=c.weight_decay)
        self.scaler = grad_scaler(self.device, c.amp)
        self.ema = ema_model(self.model, c.ema) if c.ema else None
        self.iters_per_epoch = math.ceil(len(self.train_set) / c.batch_size)
        self.total_iters = self.iters_per_epoch * c.epochs
        self.objective = OBJECTIVES[c.method]
        self.hsat = None
        if c.method == "h-sat":
            from .hsat import HSatCalibrator
            self.hsat = HSatCalibrator.for_config(c, train, self.device)
        self.tracker = None
        if c.track_hessian_every:
            from .sharpness import SharpnessTracker
            self.tracker = SharpnessTracker.for_config(c, val, self.device)

    def estimate(self) -> dict:
        """What the epochs left will cost, before any of them runs: ``parts`` (label, forward+backward passes
        per training sample of this process), ``samples`` (this process's training samples), ``extra`` (label,
        sample-passes of validation, H-SAT calibrations and sharpness tracking), ``pass_seconds`` (one training
        pass of one sample, weights' gradients included, under the run's mixed precision: timed here on the
        first batch, changing nothing) and ``seconds``. Counted as ``objectives`` states the costs (a forward
        alone is 1/3 of a pass, an HVP 2.5). Under torchrun a collective (the timing is averaged).
        Cost: two forward+backward passes of one batch."""
        from ..attack_spec import FORWARD_PASSES, HVP_PASSES, sample_pass_seconds
        c = self.cfg
        done = self.current.batch / self.iters_per_epoch if self.current is not None and \
            self.current.epoch == self.epoch else 0.0
        epochs = max(c.epochs - self.epoch - done, 0.0)
        whole = c.epochs - self.epoch          # epochs that end (validation; tracking every N)
        share = self.world.size
        per = {"standard": 1.0, "trades": c.steps + 1 + FORWARD_PASSES}.get(c.method, c.steps + 1.0)
        if c.method == "p-sat":
            per += FORWARD_PASSES * c.ramp     # the early-stopping check while lambda < 1
        count = f"{epochs:,.0f}" if epochs == int(epochs) else f"{epochs:,.2f}"
        parts = [(f"{count} epoch{'' if count == '1' else 's'} of {c.method}" + ("" if c.method == "standard" else f" with PGD-{c.steps}"),
                  epochs * per)]
        extra = []
        n_val = len(self.val_y)
        val = n_val * ((c.val_steps + 1 if c.eps is not None else 0) + 2 * FORWARD_PASSES)
        if whole and val:
            extra.append((f"validation on {n_val:,} samples", whole * val / share))
        if self.hsat is not None:
            calib = (1 + c.hsat_bisect + (c.hsat_normalize == "affine")) * c.hsat_probe * \
                (c.steps + 1 + c.hsat_iters * HVP_PASSES)
            per_epoch = 1 + (self.iters_per_epoch - 1) // c.hsat_every if c.hsat_every else 1
            extra.append(("H-SAT calibrations", epochs * per_epoch * calib))
        if self.tracker is not None:
            tracked = sum(1 for e in range(self.epoch + 1, c.epochs + 1) if e % c.track_hessian_every == 0)
            probe = len(self.tracker.y)
            extra.append(("sharpness tracking", tracked * probe * (c.steps + 1 + self.tracker.max_hvps * HVP_PASSES)))
        x, y = self.train_set.tensors(min(c.batch_size, len(self.train_set)), self.device)
        if self.world.active:
            lo, hi = shard_bounds(len(y), self.world)
            x, y = x[lo:hi], y[lo:hi]
        pass_s = sample_pass_seconds(self.model, x, y, len(y), weights=True,
                                     autocast=lambda: autocast(self.device, c.amp))
        samples = math.ceil(len(self.train_set) / share)
        seconds = (sum(p for _, p in parts) * samples + sum(p for _, p in extra)) * pass_s
        return {"parts": parts, "samples": samples, "extra": extra, "pass_seconds": pass_s, "seconds": seconds}

    def checkpoint_config(self) -> dict:
        """The config stored in every checkpoint: what analysis needs plus the full training config."""
        c = self.cfg
        return {"model": c.model, "dataset": self.info.name, "dataset_info": self.info.to_dict(),
                "method": c.method, "eps": c.eps, "steps": c.steps, "step_size": c.step_size,
                "attack": c.attack().to_dict() if c.eps is not None else None,
                "landscape_version": __version__, "train": c.to_dict()}

    def _lam(self, step: int) -> float:
        c = self.cfg
        if c.method not in CURRICULUM_METHODS:
            return 1.0
        return lam_schedule(step, self.total_iters, c.lam0, c.ramp, c.schedule)

    def _step_state(self, lam: float) -> Step:
        c = self.cfg
        if c.method == "sat-eps":
            eps_t = eps_for_lambda(lam, c.eps)
        elif c.method == "h-sat":  # calibrated eps_t; the full budget as soon as lambda reaches 1
            eps_t = c.eps if lam >= 1.0 else self.state.get("hsat_eps", c.eps * lam)
        else:
            eps_t = c.eps
        step_size = c.step_size * (eps_t / c.eps) if c.eps else 0.0
        return Step(eps=eps_t, lam=lam, steps=c.steps, step_size=step_size, beta=c.beta, fp16_safe=c.amp == "fp16")

    # ----------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train the remaining epochs, writing checkpoints and metrics after each one."""
        c, t_fit = self.cfg, time.perf_counter()
        # rank 0 holds the folder's lock (taken in __init__) and writes every file; released at the end
        with self._lock:
            for p in self._stale:
                p.unlink(missing_ok=True)
            self._stale = []
            if self.world.main:
                write_json(self.run_dir / "config.json",
                           {"landscape_version": __version__, **self.checkpoint_config()})
            bar = progress_bar(self.total_iters, c.name, "it", initial=self.step, show=self.progress,
                               dynamic_ncols=True)
            try:
                with _StopSignals() as self.stop:
                    while self.epoch < c.epochs:
                        row = self._train_epoch(bar)
                        self._finish_epoch(row)
                        bar.set_postfix({k: row[k] for k in ("train_loss", "val_clean", "val_pgd", "lam", "eps_t")})
            finally:
                bar.close()
        return TrainResult(self.run_dir, self.history, self.best[1], self.cfg, seconds=time.perf_counter() - t_fit)

    def _train_epoch(self, bar) -> dict:
        """The current epoch's remaining batches (all of them, unless resumed mid-epoch), then validation.
        Between batches: a mid-epoch ``last.pt`` on a stop signal (then ``Preempted``) or when
        ``checkpoint_minutes`` have passed since the last one."""
        c, epoch = self.cfg, self.epoch
        st = self.current if self.current is not None and self.current.epoch == epoch else \
            EpochState.start(c.seed, epoch, self.device)
        self.current = st
        if self.hsat is not None and st.batch == 0:
            st.extra.update(self.hsat.maybe_calibrate(self, force=True))
        self.model.train()
        t0 = last_save = time.perf_counter()
        batches = self.train_set.batches(c.batch_size, shuffle=True,
                                         generator=derived_generator(c.seed, _SHUFFLE, epoch))
        for i, (x, y) in enumerate(batches):
            if i < st.batch:  # done before the run was stopped: the same shuffle, skipped
                continue
            if c.augment:
                x = augment(x, st.g_aug)
            if self.hsat is not None and i > 0:
                st.extra.update(self.hsat.maybe_calibrate(self))
            received = self._train_step(x, y, st, i)
            bar.update(1)
            due = c.checkpoint_minutes and time.perf_counter() - last_save >= 60 * c.checkpoint_minutes
            if received or (due and st.batch < self.iters_per_epoch):
                st.seconds += time.perf_counter() - t0
                t0 = last_save = time.perf_counter()
                self._save_last(mid_epoch=True)
                if received:
                    raise Preempted(f"stopped by {received} in epoch {epoch + 1} after batch {st.batch} of "
                                    f"{self.iters_per_epoch}; {self.run_dir / 'last.pt'} holds the run at that "
                                    f"point; continue with: landscape-train --resume {self.run_dir}")
        train_seconds = st.seconds + time.perf_counter() - t0
        self.current = None
        t1 = time.perf_counter()
        val_clean, val_pgd, val_loss = self._validate(self.ema.module if self.ema is not None else self.model)
        row = {"epoch": epoch + 1, "lr": learning_rate(c, self.step - 1, self.total_iters), "lam": st.lam,
               "eps_t": st.eps_t if st.batch else c.eps, "train_loss": st.loss_sum.item() / st.seen,
               "train_acc": st.correct.item() / st.seen, "val_clean": val_clean, "val_pgd": val_pgd,
               "val_loss": val_loss, "train_seconds": train_seconds, "val_seconds": time.perf_counter() - t1}
        if self.tracker is not None and (epoch + 1) % c.track_hessian_every == 0:
            row.update(self.tracker.measure(self.model))
        row.update(st.extra)
        row["seconds"] = train_seconds + row["val_seconds"]
        return row

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, st: EpochState, i: int) -> str | None:
        """One iteration: LR and curriculum for ``self.step``, the objective (attack included) under the
        run's autocast, the (scaled) backward pass and SGD step, the EMA update, the epoch's running sums.
        Returns the stop signal received so far (under torchrun: by any process, agreed in the one
        all-reduce of the batch's sums, so that every process stops after the same batch)."""
        c = self.cfg
        lam = self._lam(self.step)
        s = self._step_state(lam)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(c, self.step, self.total_iters)
        g: torch.Generator | RowShard = st.g_attack
        n = len(y)
        if c.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.world.active:  # this process's rows of the global batch, with their own random starts
            lo, hi = shard_bounds(n, self.world)
            x, y, g = x[lo:hi], y[lo:hi], RowShard(st.g_attack, n, lo, hi)
        with autocast(self.device, c.amp):
            out = self.objective(self.ddp, x, y, s, g, **({"attack_model": self.fast} if self.world.active else {}))
        loss_n = out.loss.detach().float() * len(y)
        hits = (out.logits.detach().argmax(1) == y).sum()
        loss, received = out.loss, self.stop.received if self.stop is not None else None
        if self.world.active:  # the batch's sums over all processes; DDP averages gradients over processes
            stop_flag = torch.tensor(0.0 if received is None else 1.0, device=loss_n.device)
            sums = all_reduce_sum(torch.stack([loss_n, hits.float(), stop_flag]))
            loss_n, hits = sums[0], sums[1].round().long()
            if sums[2] > 0:
                received = received or "a stop signal (to another process)"
            loss = out.loss * (len(y) * self.world.size / n)  # the global batch's mean, after DDP's average
        if not torch.isfinite(loss_n):
            last = self.run_dir / "last.pt"
            kept = (f"the last good checkpoint is {last} (epoch {self.epoch})" if self.epoch and last.exists()
                    else "no checkpoint was written (it failed in the first epoch)")
            raise NonFiniteLossError(f"loss became {out.loss.item()} at epoch {self.epoch + 1}, iteration {i + 1}; "
                                     f"stopped, {kept}; try a smaller --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            update_ema(self.ema, self.model)
        st.loss_sum += loss_n
        st.correct += hits
        st.seen += n
        st.batch, st.lam, st.eps_t = i + 1, lam, s.eps
        self.step += 1
        return received

    def _finish_epoch(self, row: dict) -> None:
        c = self.cfg
        self.epoch += 1
        self.history.append(row)
        value, key = selection_score(c.select, row)
        row.update(select=c.select, select_score=value)
        metrics = dict(row)
        improved = key > self.best[0]
        if improved:
            self.best = (key, self.epoch)
        if not self.world.main:  # rank 0 writes the run's files
            return
        cfg = self.checkpoint_config()
        averaged = self.ema.module if self.ema is not None else self.model  # the weights validated
        if c.save_every and self.epoch % c.save_every == 0:
            save_checkpoint(self.run_dir / f"epoch_{self.epoch:03d}.pt", averaged, cfg, metrics, self.epoch)
        if improved:
            save_checkpoint(self.run_dir / "best.pt", averaged, cfg, metrics, self.epoch)
        self._save_last(metrics)
        write_csv(self.run_dir / "metrics.csv", self.history)
        if "hsat_log" in self.state:
            write_json(self.run_dir / "hsat.json", {"landscape_version": __version__,
                                                    "calibrations": self.state["hsat_log"]})

    def _validate(self, model: nn.Module) -> tuple[float, float | None, float]:
        """Validation clean accuracy, PGD accuracy (None without an attack) and clean cross-entropy. Under
        torchrun each process takes a shard, cut on the attack's batches (seeded by position), and the
        counts are summed: the numbers one process gets. Everything is scored by ``landscape.inference``."""
        c = self.cfg
        attack = c.attack(steps=c.val_steps)
        if not self.world.active:
            val = evaluate(model, self.val_x, self.val_y, attack=attack, seed=c.seed)
            return val.clean_acc, val.pgd_acc, mean_loss(model, self.val_x, self.val_y)
        n = len(self.val_y)
        lo, hi = shard_bounds(n, self.world, attack.batch_size if attack is not None else 1)
        x, y = self.val_x[lo:hi], self.val_y[lo:hi]
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)
        if len(y):
            counts[0] = correct(model, x, y)
            if attack is not None and attack.active:
                counts[1] = correct(model, attack.examples(model, x, y, c.seed, start=lo), y)
            counts[2] = mean_loss(model, x, y) * len(y)
        clean, robust, loss = (all_reduce_sum(counts) / n).tolist()
        pgd = None if attack is None else robust if attack.active else clean
        return clean, pgd, loss

    def _save_last(self, metrics: dict | None = None, mid_epoch: bool = False) -> None:
        """``last.pt``: the raw weights and everything resume needs (optimizer, loss scaler, EMA, step,
        history, best, H-SAT state and, ``mid_epoch``, the epoch in progress), written atomically by rank 0."""
        if not self.world.main:
            return
        st = self.current if mid_epoch else None
        train_state = {"optimizer": self.optimizer.state_dict(), "step": self.step, "history": self.history,
                       "best": list(self.best), "extra": self.state, "scaler": self.scaler.state_dict(),
                       "epoch_state": st.to_dict() if st is not None else None}
        if self.ema is not None:
            train_state["ema"] = self.ema.state_dict()
        if st is not None:
            metrics = {"mid_epoch": {"epoch": st.epoch + 1, "batch": st.batch, "of": self.iters_per_epoch}}
        save_checkpoint(self.run_dir / "last.pt", self.model, self.checkpoint_config(), metrics, self.epoch,
                        train_state)


def _check_resume_changes(cfg: TrainConfig, changes: dict, run_dir: Path, done: int) -> None:
    """Raise ``ConfigError`` (one line naming every difference) unless ``changes`` leave ``cfg`` as it is,
    an ``epochs`` increase of a schedule that does not depend on it excepted."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"unknown training settings {', '.join(unknown)}")
    new = dataclasses.replace(cfg, **changes).resolved()
    diff = []
    for name in sorted(changes):
        old, now = getattr(cfg, name), getattr(new, name)
        if old == now:
            continue
        if name == "epochs":
            if now < done:
                diff.append(f"--epochs {now} (run: {old}, of which {done} are trained)")
                continue
            if not cfg.schedule_depends_on_epochs():
                continue
            diff.append(f"--epochs {now} (run: {old}; its {cfg.lr_schedule} LR"
                        f"{' and lambda' if cfg.method in CURRICULUM_METHODS else ''} schedule is "
                        f"spread over the epochs, so more epochs would change it)")
        else:
            diff.append(f"{flag(name)} {now} (run: {old})")
    if diff:
        raise ConfigError(f"--resume continues {run_dir} as it was configured, but {'; '.join(diff)}; only "
                          f"{', '.join(flag(f) for f in RESUME_SAFE)} may change on resume "
                          "(start a new run with another --name for the rest)")


def train(cfg: TrainConfig, out: str | Path = "runs", device: str | torch.device = "cpu",
          progress: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a model from scratch with ``cfg``; see ``Trainer``."""
    return Trainer(cfg, out, device, progress, overwrite).fit()


def resume(run_dir: str | Path, device: str | torch.device = "cpu", progress: bool = False,
           epochs: int | None = None, changes: dict | None = None) -> TrainResult:
    """Continue an interrupted run from its ``last.pt`` (see ``Trainer.resume`` for what may change)."""
    return Trainer.resume(run_dir, device, progress, epochs, changes).fit()

