"""landscape: train robust models (AT, TRADES, SAT) and analyze the loss landscape of any checkpoint."""
from __future__ import annotations

__version__ = "0.1.0"

from .data import Dataset, DatasetInfo, available_datasets, load_dataset
from .errors import LandscapeError
from .models import available_models, build_model

__all__ = ["__version__", "Dataset", "DatasetInfo", "LandscapeError", "available_datasets",
           "available_models", "build_model", "load_dataset"]
