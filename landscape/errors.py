"""Exceptions raised by library code.

The console scripts turn every ``LandscapeError`` into a one-line message on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class LandscapeError(ValueError):
    """Bad input: a user can fix it by changing an argument, a file or a setting."""


class DataError(LandscapeError):
    """Unknown dataset, missing files, bad split or sample count."""


class ModelError(LandscapeError):
    """Unknown model name or a model that cannot take the dataset's inputs."""


class CheckpointError(LandscapeError):
    """Missing, corrupt, unsafe or mismatched checkpoint."""


class ConfigError(LandscapeError):
    """An out-of-range or inconsistent setting (eps outside [0, 1], unknown method, ...)."""


class NonFiniteLossError(LandscapeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class OutputError(LandscapeError):
    """An output path that cannot be written (a folder where a file is wanted, a parent that is a file,
    no permission, an unknown image type); checked before any work starts."""


class BusyError(LandscapeError):
    """Another process is writing to the same output folder (it holds the folder's lock)."""


class ResourceError(LandscapeError):
    """A request that cannot finish: it would need more memory or time than is sensible or available."""


EXIT_REQUEUE = 75  # sysexits' EX_TEMPFAIL: "try again later"; what a job script takes as "requeue me"


class Preempted(Exception):
    """A run stopped by a signal (SIGTERM, SIGUSR1) after writing a checkpoint it can resume from: not a
    mistake, so no ``LandscapeError``; the console scripts exit ``EXIT_REQUEUE`` with its one line."""
