"""Datasets: converters from the benchmarks' original releases, the annotation checker.

- `convert_charades`, `convert_tacos`, `convert_ego4d`, `convert_youtube`, `convert_tvsum`:
  one module per benchmark (`r2 data convert NAME SOURCE... --out DIR`);
- `check_annotations` (`r2 data check`) and `read_annotations`, the strict reader every
  command uses (schema.py: the rules and limits; jsonl.py: bounded JSON reading);
- `compare_files` (`r2 data compare`): agreement of two conversions;
- `import_release` (`r2 data import-release`): the R²-Tuning feature release (no videos)
  into one cache + unified jsonl.
"""

from .charades import convert_charades
from .check import AnnotationError, CheckReport, check_annotations, read_annotations
from .common import ConvertResult, ReleaseError
from .compare import Agreement, compare_files
from .ego4d import convert_ego4d
from .jsonl import JsonInputError
from .release import ImportResult, import_release
from .schema import Problem, Requirements
from .tacos import convert_tacos
from .tvsum import convert_tvsum
from .youtube import convert_youtube

__all__ = [
    "Agreement",
    "AnnotationError",
    "CheckReport",
    "ConvertResult",
    "ImportResult",
    "JsonInputError",
    "Problem",
    "ReleaseError",
    "Requirements",
    "check_annotations",
    "compare_files",
    "convert_charades",
    "convert_ego4d",
    "convert_tacos",
    "convert_tvsum",
    "convert_youtube",
    "import_release",
    "read_annotations",
]
