"""The training loop: SGD, LR schedule, curriculum, validation, best/last checkpoints, resume, metrics.csv.

Reproducibility: all randomness is drawn from CPU generators derived from (seed, purpose, epoch), never
from global RNG state, so a run resumed from ``last.pt`` at an epoch boundary replays exactly what an
uninterrupted run does (bit-identical weights on the same device and thread count).
Files in ``out/NAME/``: config.json, metrics.csv, last.pt, best.pt, and epoch_XXX.pt with ``save_every``.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..checkpoint import load_weights, read_checkpoint, save_checkpoint
from ..data import Dataset, augment, load_dataset
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from ..evaluate import evaluate
from ..io import lock_folder, write_json, write_text
from ..progress import progress_bar
from ..models import build_model
from .config import TrainConfig
from .curriculum import eps_for_lambda, lam_schedule
from .objectives import CURRICULUM_METHODS, OBJECTIVES, Step

_SHUFFLE, _ATTACK, _AUGMENT = 1, 2, 3


def derived_generator(seed: int, purpose: int, epoch: int) -> torch.Generator:
    """A CPU generator for one purpose (shuffle, attack, augmentation) in one epoch."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + purpose * 10_007 + epoch) % (2 ** 63))


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
    """Where a run's files are and its per-epoch history."""
    run_dir: Path
    history: list[dict]
    best_epoch: int
    config: TrainConfig
    extra: dict = field(default_factory=dict)

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame(self.history)


def _write_metrics(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(path, buf.getvalue())


class Trainer:
    """One training run. ``Trainer(cfg).fit()`` trains from scratch; ``Trainer.resume(run_dir).fit()`` continues.

    Cost per epoch: one objective (see ``objectives``) per batch, plus validation PGD-``val_steps`` on
    ``val_samples`` samples, plus H-SAT calibrations / sharpness tracking when enabled.
    """

    def __init__(self, cfg: TrainConfig, out: str | Path = "runs", device: str | torch.device = "cpu",
                 progress: bool = True, overwrite: bool = False):
        self.cfg = cfg.resolved()
        self.device = torch.device(device)
        self.progress = progress
        self.run_dir = Path(out) / self.cfg.name
        if (self.run_dir / "last.pt").exists() and not overwrite:
            raise ConfigError(f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir} "
                              "or choose another --name")
        self._setup()
        self.epoch, self.step, self.history, self.best = 0, 0, [], (-1.0, -1)
        self.state: dict = {}

    @classmethod
    def resume(cls, run_dir: str | Path, device: str | torch.device = "cpu", progress: bool = True,
               epochs: int | None = None) -> "Trainer":
        """Continue the run in ``run_dir`` from its ``last.pt`` (``epochs`` may extend it)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"no run to resume at {run_dir}")
        if not (run_dir / "last.pt").exists():
            raise CheckpointError(f"{run_dir} has no last.pt to resume from")
        ck = read_checkpoint(run_dir / "last.pt")
        if not isinstance(ck, dict) or "train_state" not in ck or "config" not in ck:
            raise CheckpointError(f"{run_dir / 'last.pt'} is not a landscape training checkpoint")
        cfg = TrainConfig.from_dict(ck["config"]["train"])
        if epochs is not None:
            cfg.epochs = epochs
        self = cls.__new__(cls)
        self.cfg, self.device, self.progress, self.run_dir = cfg.resolved(), torch.device(device), progress, run_dir
        self._setup()
        ts = ck["train_state"]
        load_weights(self.model, ck["model_state"], str(run_dir / "last.pt"))
        self.optimizer.load_state_dict(ts["optimizer"])
        self.epoch, self.step = int(ck["epoch"]), int(ts["step"])
        self.history, self.best = list(ts["history"]), tuple(ts["best"])
        self.state = dict(ts.get("extra", {}))
        return self

    # ----------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.cfg
        train = load_dataset(c.dataset, "train", c.data_dir, c.download, c.split_seed)
        val = load_dataset(c.dataset, "val", c.data_dir, c.download, c.split_seed)
        if c.train_samples:
            train = train.subset(min(c.train_samples, len(train)))
        self.train_set: Dataset = train.to(self.device)
        n_val = min(c.val_samples or len(val), len(val))
        self.val_x, self.val_y = val.tensors(n_val, self.device)
        self.info = train.info
        self.model: nn.Module = build_model(c.model, self.info, seed=c.seed).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum,
                                         weight_decay=c.weight_decay)
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

    def checkpoint_config(self) -> dict:
        """The config stored in every checkpoint: what analysis needs plus the full training config."""
        c = self.cfg
        return {"model": c.model, "dataset": self.info.name, "dataset_info": self.info.to_dict(),
                "method": c.method, "eps": c.eps, "steps": c.steps, "step_size": c.step_size,
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
        step_size = c.step_size * (eps_t / c.eps) if c.eps > 0 else 0.0
        return Step(eps=eps_t, lam=lam, steps=c.steps, step_size=step_size, beta=c.beta)

    # ----------------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train the remaining epochs, writing checkpoints and metrics after each one."""
        c = self.cfg
        lock = lock_folder(self.run_dir)  # a second process training into this folder is refused
        lock.__enter__()
        write_json(self.run_dir / "config.json", {"landscape_version": __version__, **self.checkpoint_config()})
        bar = progress_bar(self.total_iters, c.name, "it", initial=self.step, show=self.progress,
                           dynamic_ncols=True)
        try:
            while self.epoch < c.epochs:
                row = self._train_epoch(bar)
                self._finish_epoch(row)
                bar.set_postfix({k: row[k] for k in ("train_loss", "val_clean", "val_pgd", "lam", "eps_t")})
        finally:
            bar.close()
            lock.__exit__(None, None, None)
        return TrainResult(self.run_dir, self.history, self.best[1], self.cfg)

    def _train_epoch(self, bar) -> dict:
        c, epoch = self.cfg, self.epoch
        g_shuffle = derived_generator(c.seed, _SHUFFLE, epoch)
        g_attack = derived_generator(c.seed, _ATTACK, epoch)
        g_aug = derived_generator(c.seed, _AUGMENT, epoch)
        extra: dict = {}
        if self.hsat is not None:
            extra.update(self.hsat.maybe_calibrate(self, force=True))
        self.model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, lam, s = 0, 1.0, None
        for i, (x, y) in enumerate(self.train_set.batches(c.batch_size, shuffle=True, generator=g_shuffle)):
            if c.augment:
                x = augment(x, g_aug)
            if self.hsat is not None and i > 0:
                extra.update(self.hsat.maybe_calibrate(self))
            lam = self._lam(self.step)
            s = self._step_state(lam)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(c, self.step, self.total_iters)
            out = self.objective(self.model, x, y, s, g_attack)
            if not torch.isfinite(out.loss):
                last = self.run_dir / "last.pt"
                kept = (f"the last good checkpoint is {last} (epoch {epoch})" if epoch and last.exists() else
                        "no checkpoint was written (it failed in the first epoch)")
                raise NonFiniteLossError(f"loss became {out.loss.item()} at epoch {epoch + 1}, iteration {i + 1}; "
                                         f"stopped, {kept}; try a smaller --lr")
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            loss_sum += out.loss.detach() * len(y)
            correct += (out.logits.detach().argmax(1) == y).sum()
            seen += len(y)
            self.step += 1
            bar.update(1)
        train_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        val = evaluate(self.model, self.val_x, self.val_y, c.eps, steps=c.val_steps, seed=c.seed)
        row = {"epoch": epoch + 1, "lr": learning_rate(c, self.step - 1, self.total_iters), "lam": lam,
               "eps_t": s.eps if s else c.eps, "train_loss": loss_sum.item() / seen,
               "train_acc": correct.item() / seen, "val_clean": val.clean_acc, "val_pgd": val.pgd_acc,
               "train_seconds": train_seconds, "val_seconds": time.perf_counter() - t1}
        if self.tracker is not None and (epoch + 1) % c.track_hessian_every == 0:
            row.update(self.tracker.measure(self.model))
        row.update(extra)
        row["seconds"] = time.perf_counter() - t0
        return row

    def _finish_epoch(self, row: dict) -> None:
        c = self.cfg
        self.epoch += 1
        self.history.append(row)
        metrics = dict(row)
        score = row["val_clean"] + (row["val_pgd"] or 0.0)
        cfg = self.checkpoint_config()
        if c.save_every and self.epoch % c.save_every == 0:
            save_checkpoint(self.run_dir / f"epoch_{self.epoch:03d}.pt", self.model, cfg, metrics, self.epoch)
        if score > self.best[0]:
            self.best = (score, self.epoch)
            save_checkpoint(self.run_dir / "best.pt", self.model, cfg, metrics, self.epoch)
        train_state = {"optimizer": self.optimizer.state_dict(), "step": self.step, "history": self.history,
                       "best": list(self.best), "extra": self.state}
        save_checkpoint(self.run_dir / "last.pt", self.model, cfg, metrics, self.epoch, train_state)
        _write_metrics(self.run_dir / "metrics.csv", self.history)
        if "hsat_log" in self.state:
            write_json(self.run_dir / "hsat.json", {"landscape_version": __version__,
                                                    "calibrations": self.state["hsat_log"]})


def train(cfg: TrainConfig, out: str | Path = "runs", device: str | torch.device = "cpu",
          progress: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a model from scratch with ``cfg``; see ``Trainer``."""
    return Trainer(cfg, out, device, progress, overwrite).fit()


def resume(run_dir: str | Path, device: str | torch.device = "cpu", progress: bool = False,
           epochs: int | None = None) -> TrainResult:
    """Continue an interrupted run from its ``last.pt``."""
    return Trainer.resume(run_dir, device, progress, epochs).fit()

