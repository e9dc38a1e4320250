"""Training configuration: every hyperparameter of a run, its defaults per dataset, and validation."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

from ..attacks import check_eps
from ..data import AUGMENTED, dataset_info
from ..errors import ConfigError
from ..io import safe_name
from ..models import resolve_model_name
from .curriculum import SCHEDULES
from .objectives import METHODS

DEFAULT_EPS = {"digits": 0.1, "mnist": 0.3, "fashion-mnist": 0.1, "cifar10": 8 / 255, "cifar100": 8 / 255,
               "imagenette": 16 / 255}
DEFAULT_EPOCHS = {"digits": 20, "mnist": 10, "fashion-mnist": 5}
LR_SCHEDULES = ("piecewise", "cosine", "constant")
HSAT_NORMALIZE = ("ratio", "affine")


@dataclass
class TrainConfig:
    """Everything that determines a training run (``device`` and ``out`` excepted, which do not change numbers)."""
    method: str = "p-sat"
    dataset: str = "digits"
    model: str = "auto"
    eps: float | None = None            # default: DEFAULT_EPS[dataset]
    steps: int = 10                     # PGD steps of the training attack
    step_size: float | None = None      # default 2.5 * eps / steps; scales with eps_t for sat-eps / h-sat
    beta: float = 6.0                   # TRADES
    ramp: float = 0.4                   # SAT: fraction of the iterations over which lambda rises to 1
    lam0: float = 0.0                   # SAT: lambda at iteration 0
    schedule: str = "linear"            # SAT: linear | cosine | step
    epochs: int | None = None           # default: DEFAULT_EPOCHS.get(dataset, 30)
    batch_size: int = 128
    lr: float = 0.05
    lr_schedule: str = "piecewise"      # x0.1 at 50% and 75% of the iterations | cosine | constant
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    train_samples: int | None = None    # train on the first N samples of the train split
    val_samples: int | None = 1000      # validate on the first N samples of the val split
    val_steps: int = 10                 # PGD steps for validation (step eps / 4)
    augment: bool | None = None         # random crop + flip; default on for CIFAR / Imagenette
    split_seed: int = 0
    data_dir: str | None = None
    download: bool = False
    save_every: int = 0                 # keep epoch_XXX.pt every K epochs (0: never)
    hsat_every: int | None = None       # H-SAT: iterations between calibrations (default: one epoch)
    hsat_probe: int = 128               # H-SAT: samples in the fixed probe batch
    hsat_iters: int = 8                 # H-SAT: Lanczos steps (HVPs) per sharpness estimate
    hsat_bisect: int = 5                # H-SAT: bisection steps per calibration
    hsat_normalize: str = "ratio"       # H-SAT: psi_H = lam(eps)/lam(eps_max) | affine: (lam(eps)-lam(0))/(lam(eps_max)-lam(0))
    track_hessian_every: int = 0        # log the adversarial top eigenvalue every N epochs (0: never)
    track_probe: int = 256              # samples in the sharpness-tracking probe set
    name: str | None = None
    extra: dict = field(default_factory=dict)

    def resolved(self) -> "TrainConfig":
        """A copy with every default filled in and every value checked (``ConfigError`` on bad input)."""
        c = dataclasses.replace(self)
        if c.method not in METHODS:
            raise ConfigError(f"unknown method {c.method!r}; choose from {', '.join(METHODS)}")
        info = dataset_info(c.dataset, c.data_dir)
        c.model = resolve_model_name(c.model, c.dataset)
        if c.eps is None:
            c.eps = DEFAULT_EPS.get(c.dataset, 8 / 255)
        check_eps(c.eps)
        if c.method != "standard" and c.eps == 0:
            raise ConfigError(f"--method {c.method} needs eps > 0")
        if c.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {c.steps}")
        if c.step_size is None:
            c.step_size = 2.5 * c.eps / c.steps
        if c.step_size <= 0 and c.method != "standard":
            raise ConfigError(f"step size must be positive, got {c.step_size}")
        if c.hsat_normalize not in HSAT_NORMALIZE:
            raise ConfigError(f"unknown H-SAT normalization {c.hsat_normalize!r}; choose from "
                              f"{', '.join(HSAT_NORMALIZE)}")
        if c.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {c.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if c.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown LR schedule {c.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        if not (0 <= c.lam0 <= 1 and 0 <= c.ramp <= 1):
            raise ConfigError("lam0 and ramp must lie in [0, 1]")
        if c.epochs is None:
            c.epochs = DEFAULT_EPOCHS.get(c.dataset, 30)
        for key in ("epochs", "batch_size"):
            if getattr(c, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(c, key)}")
        if not (c.lr > 0 and math.isfinite(c.lr)):
            raise ConfigError(f"learning rate must be positive, got {c.lr}")
        if c.augment is None:
            c.augment = info.name in AUGMENTED
        if c.name is None:
            c.name = f"{c.method}-{c.dataset.replace(':', '_').replace('/', '_')}-eps{c.eps:g}-s{c.seed}"
        safe_name(c.name, "name")  # a run folder is out/NAME: a name must not lead out of out
        return c

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
