"""Training robust models: standard, PGD-AT, TRADES and the SAT curricula (sat-eps, p-sat, h-sat)."""
from .config import TrainConfig
from .curriculum import eps_for_lambda, lam_schedule
from .objectives import METHODS
from .trainer import Trainer, TrainResult, resume, train

__all__ = ["TrainConfig", "Trainer", "TrainResult", "METHODS", "eps_for_lambda", "lam_schedule", "resume", "train"]
