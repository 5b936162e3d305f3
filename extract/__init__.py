"""Stage 1: videos and queries into one multi-layer CLIP feature cache.

`extract(...)` is the one public function (the `r2 extract` command wraps it); the
orchestration lives in `run.py`. Importing this package stays light (no torch): the decode
worker processes import it.
"""

from .inputs import InputError
from .options import ExtractOptions, default_threads, default_workers
from .run import default_out, extract, tune_environment
from .shard import Shard
from .summary import ExtractSummary

__all__ = [
    "ExtractOptions",
    "ExtractSummary",
    "InputError",
    "Shard",
    "default_out",
    "default_threads",
    "default_workers",
    "extract",
    "tune_environment",
]
