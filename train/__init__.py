"""Stage 2: the R² model and its training loop.

Public entry point: :func:`train` (what `r2 train` runs); the orchestration lives in
`run.py`. Importing `r2.train` stays cheap (no torch) for the command line.
"""

from .run import RunExistsError, train

__all__ = ["RunExistsError", "train"]
