"""landscape: train robust models (AT, TRADES, SAT) and analyze the loss landscape of any checkpoint."""
from __future__ import annotations

from ._version import __version__

from .data import Dataset, DatasetInfo, available_datasets, load_dataset
from .errors import LandscapeError
from .models import available_models, build_model
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .attack_spec import AttackSpec
from .evaluate import EvalResult, evaluate
from .audit import AuditResult, audit
from . import attacks, training

__all__ = ["__version__", "AttackSpec", "AuditResult", "Checkpoint", "Dataset", "DatasetInfo", "EvalResult", "LandscapeError", "attacks",
           "audit", "available_datasets", "available_models", "build_model", "evaluate", "load_checkpoint",
           "load_dataset", "save_checkpoint", "training"]
