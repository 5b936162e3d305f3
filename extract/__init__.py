"""Stage 1: videos and queries into one multi-layer CLIP feature cache.

`extract(...)` is the one public function (the `r2 extract` command wraps it); the
orchestration lives in `run.py`. Importing this package stays light (no torch): the decode
worker processes import it.
"""

from .inputs import InputError
from .run import ExtractSummary, default_out, default_workers, extract, tune_environment

__all__ = [
    "ExtractSummary",
    "InputError",
    "default_out",
    "default_workers",
    "extract",
    "tune_environment",
]
