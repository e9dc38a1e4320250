"""Training configuration: every hyperparameter of a run, its defaults per dataset, and validation."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from ..attack_spec import CONSTRAINTS as ATTACK, DEFAULT_BATCH_SIZE, AttackSpec
from ..attacks import default_step_size
from ..constraints import SEED, Interval, NoneOr, OneOf, flag, validate
from ..data import AUGMENTED, dataset_info
from ..errors import ConfigError
from ..io import safe_name
from ..models import resolve_model_name
from ..precision import AMP_MODES, resolve_amp
from ..names import SELECT_RULES, run_name
from .curriculum import SCHEDULES
from .objectives import CURRICULUM_METHODS, METHODS

DEFAULT_EPS = {"digits": 0.1, "mnist": 0.3, "fashion-mnist": 0.1, "cifar10": 8 / 255, "cifar100": 8 / 255,
               "imagenette": 16 / 255}
DEFAULT_EPOCHS = {"digits": 20, "mnist": 10, "fashion-mnist": 5}
LR_SCHEDULES = ("piecewise", "cosine", "constant")
HSAT_NORMALIZE = ("ratio", "affine")
MAX_LR = 10.0  # SGD beyond this diverges at once; a typo (1e300) is refused rather than run into NaN

_COUNT = Interval(int, 1)
_EVERY = Interval(int, 0)            # every N epochs or iterations; 0: never
_UNIT = Interval(float, 0.0, 1.0)
#: the range of each TrainConfig field (``constraints``), checked by ``resolved`` before the rules that join
#: several fields; landscape-train's argparse types are made from it. The attack's fields share AttackSpec's.
CONSTRAINTS = {
    "method": OneOf(METHODS),
    "eps": NoneOr(Interval(float, 0.0, 1.0)),   # Linf on [0, 1] inputs; None: the dataset's default
    "steps": ATTACK["steps"],
    "step_size": ATTACK["step_size"],
    "beta": Interval(float, 0.0),
    "ramp": _UNIT,
    "lam0": _UNIT,
    "schedule": OneOf(SCHEDULES),
    "epochs": NoneOr(_COUNT),
    "batch_size": _COUNT,
    "lr": Interval(float, 0.0, MAX_LR, lo_open=True),
    "lr_schedule": OneOf(LR_SCHEDULES),
    "momentum": Interval(float, 0.0, 1.0, hi_open=True),   # 1 never forgets a gradient: no SGD any more
    "weight_decay": Interval(float, 0.0),
    "seed": SEED,
    "train_samples": NoneOr(_COUNT),
    "val_samples": NoneOr(_COUNT),
    "val_steps": _COUNT,
    "select": OneOf(tuple(SELECT_RULES)),
    "split_seed": SEED,
    "save_every": _EVERY,
    "hsat_every": NoneOr(_COUNT),
    "hsat_probe": _COUNT,
    "hsat_iters": Interval(int, 2),
    "hsat_bisect": _COUNT,
    "hsat_normalize": OneOf(HSAT_NORMALIZE),
    "track_hessian_every": _EVERY,
    "track_probe": _COUNT,
    "amp": OneOf(("auto", *AMP_MODES)),
    "ema": Interval(float, 0.0, 1.0, hi_open=True),     # a decay in (0, 1), or 0: no EMA
    "checkpoint_minutes": Interval(float, 0.0),
}


@dataclass
class TrainConfig:
    """Everything that determines a training run (``device`` and ``out`` excepted, which do not change numbers)."""
    method: str = "p-sat"
    dataset: str = "digits"
    model: str = "auto"
    eps: float | None = None            # default: DEFAULT_EPS[dataset]; a standard run keeps None (no attack)
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
    val_steps: int = 10                 # PGD steps for validation (step 2.5 * eps / val_steps)
    select: str = "clean+pgd"           # which epoch becomes best.pt: one of SELECT_RULES
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
    amp: str = "auto"                   # off | bf16 | fp16 | auto (bf16 on a CUDA device that has it, else off)
    ema: float = 0.0                    # EMA decay of the weights (0: no EMA); best.pt then holds the EMA weights
    checkpoint_minutes: float = 0.0     # also write last.pt mid-epoch every M minutes (0: at epoch ends only)
    sync_bn: bool = False               # torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    compile: bool = False               # torch.compile the model for the training step (attack included)
    channels_last: bool = False         # channels-last memory format for convolutional models (CUDA)
    name: str | None = None
    extra: dict = field(default_factory=dict)

    def resolved(self, device: str | None = None) -> "TrainConfig":
        """A copy with every default filled in and every value checked (``ConfigError`` on bad input); with
        ``device``, ``amp="auto"`` resolved for it too (what the Trainer on that device records)."""
        c = dataclasses.replace(self)
        validate(asdict(c), CONSTRAINTS)
        info = dataset_info(c.dataset, c.data_dir)
        c.model = resolve_model_name(c.model, c.dataset)
        if c.eps is None and c.method != "standard":
            c.eps = DEFAULT_EPS.get(c.dataset, 8 / 255)
        if c.eps is None and c.track_hessian_every:
            raise ConfigError("--track-hessian-every measures the adversarial loss: a standard run needs --eps")
        if c.method != "standard" and c.eps == 0:
            raise ConfigError(f"--method {c.method} needs eps > 0")
        if c.step_size is None and c.eps is not None:
            c.step_size = default_step_size(c.eps, c.steps)
        if c.amp != "auto" or device is not None:
            c.amp = resolve_amp(c.amp, device or "cpu")  # "auto" stays until a device is known
        if c.select == "pgd" and c.eps is None:
            raise ConfigError("--select pgd needs an attack: a standard run without --eps has no PGD accuracy")
        if c.epochs is None:
            c.epochs = DEFAULT_EPOCHS.get(c.dataset, 30)
        if c.augment is None:
            c.augment = info.name in AUGMENTED
        if c.name is None:
            c.name = run_name(c.method, c.dataset, c.eps, c.seed)
        safe_name(c.name, "name")  # a run folder is out/NAME: a name must not lead out of out
        return c

    def attack(self, steps: int | None = None) -> AttackSpec | None:
        """The training attack of a resolved config as an ``AttackSpec`` (None: a standard run without eps;
        batch_size: the training batch, which each training attack takes whole). With ``steps``: validation's
        PGD, those steps under the default step rule, in the default attack batches."""
        if self.eps is None:
            return None
        spec = AttackSpec(eps=self.eps, steps=self.steps, step_size=self.step_size, batch_size=self.batch_size)
        return spec if steps is None else spec.replace(steps=steps, step_size=None, batch_size=DEFAULT_BATCH_SIZE)

    def to_dict(self) -> dict:
        return asdict(self)

    def schedule_depends_on_epochs(self) -> bool:
        """Whether the LR or lambda of an iteration depends on the total number of epochs (then a run
        cannot be extended without changing the schedule of the epochs it already trained)."""
        return self.lr_schedule != "constant" or self.method in CURRICULUM_METHODS

    def ignored(self, given) -> str | None:
        """The one-line refusal of a setting in ``given`` (field names: the flags given on the command line)
        that this resolved config's run would not use, e.g. "--beta is TRADES' weight; --method at ignores
        it" (None when every one is used): a setting given is either used or refused, never only recorded.
        Settings left at their defaults are not ``given`` and are never refused."""
        m = self.method
        for name in ONLY_FOR:
            if name not in given:
                continue
            what, used, why = ONLY_FOR[name]
            if not used(self):
                opt = flag(name)
                return f"{opt} is {what}; {why.format(method=m)}: drop {opt}"
        return None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config a checkpoint stored; a run from before ``amp`` existed trained in float32 ("off")."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{"amp": "off", **{k: v for k, v in d.items() if k in names}})


def _attacks(c: TrainConfig) -> bool:
    """Whether a resolved config's run uses the training attack's steps and step size: every method but
    standard, and sharpness tracking (``sharpness.tracking_attack``) of a standard run with an eps."""
    return c.method != "standard" or bool(c.track_hessian_every and c.eps is not None)


_SAT = "the SAT curriculum's {what} (--method sat-eps, p-sat or h-sat)"
_HSAT = "an H-SAT setting (--method h-sat)"
_IGNORES = "--method {method} ignores it"
#: the settings that only some runs use: field -> (what it is, whether a resolved config uses it, why not)
ONLY_FOR = {
    "beta": ("TRADES' weight (--method trades)", lambda c: c.method == "trades", _IGNORES),
    "ramp": (_SAT.format(what="ramp"), lambda c: c.method in CURRICULUM_METHODS, _IGNORES),
    "lam0": (_SAT.format(what="initial lambda"), lambda c: c.method in CURRICULUM_METHODS, _IGNORES),
    "schedule": (_SAT.format(what="lambda schedule"), lambda c: c.method in CURRICULUM_METHODS, _IGNORES),
    **{name: (_HSAT, lambda c: c.method == "h-sat", _IGNORES)
       for name in ("hsat_every", "hsat_probe", "hsat_iters", "hsat_bisect", "hsat_normalize")},
    "track_probe": ("the probe set of --track-hessian-every", lambda c: bool(c.track_hessian_every),
                    "without --track-hessian-every N (N > 0) nothing is tracked"),
    "steps": ("the training attack's PGD steps (and sharpness tracking's)", _attacks,
              "--method standard trains on clean inputs (validation's PGD takes --val-steps)"),
    "step_size": ("the training attack's PGD step size (and sharpness tracking's)", _attacks,
                  "--method standard trains on clean inputs (validation's PGD uses 2.5 * eps / --val-steps)"),
}
