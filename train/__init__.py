"""Stage 2: the R² model and its training loop.

Public entry point: :func:`train` (what `r2 train` runs); the orchestration lives in
`run.py`; :func:`train_domains` (`r2 train --domain`) runs it once per domain (domains.py).
Importing `r2.train` stays cheap (no torch) for the command line.
"""

from .domains import train_domains
from .run import RunExistsError, train

__all__ = ["RunExistsError", "train", "train_domains"]
