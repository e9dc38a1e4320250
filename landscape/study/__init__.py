"""A study: methods x eps x seeds (or a list of given models), each cell trained, evaluated, audited and
measured by the console scripts, on this machine (``local``) or on SLURM (``slurm``), then aggregated into
tables with seed spreads and verdicts (``aggregate``). The study file's schema is in ``spec`` and
docs/study.md."""
from .spec import Cell, Claim, Step, Study, load_study

__all__ = ["Cell", "Claim", "Step", "Study", "load_study"]
