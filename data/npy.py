"""Feature files of the R²-Tuning release (`.npy`): checked from the header, read in chunks.

Files are opened with `np.load(path, mmap_mode="r", allow_pickle=False)`: nothing is ever
unpickled (an object array is refused), only the header is parsed before the checks, and
the data is mapped, not loaded, so memory stays bounded by one chunk whatever the file's
size. A file whose dtype or shape contradicts the release (float16, (T, K, P, Dv) per video,
(L, K, Dq) per query) is refused with a `FeatureFileError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import ReleaseError

FEATURE_DTYPE = np.dtype("<f2")  # float16, little-endian: what np.save wrote in the release
SUFFIX = ".npy"


class FeatureFileError(ReleaseError):
    """A feature file is unreadable or contradicts the release's documented dtype/shape."""


@dataclass(frozen=True)
class FeatureFile:
    """One feature file of a release folder: its id (the name without `.npy`) and identity."""

    key: str  # file name without .npy (video or query id as the release names it)
    path: Path
    size: int  # bytes on disk (with mtime: has it changed since it was imported?)
    mtime: float


def list_features(folder: Path) -> Iterator[FeatureFile]:
    """The `.npy` files of `folder` in name order (hidden files and folders skipped)."""
    names = sorted(
        e.name for e in os.scandir(folder) if e.name.endswith(SUFFIX) and not e.name.startswith(".")
    )
    for name in names:
        path = folder / name
        try:
            st = path.stat()
        except OSError:  # vanished since the listing: reported when opened
            st = None
        if st is not None and not path.is_file():
            continue
        yield FeatureFile(name[: -len(SUFFIX)], path, st.st_size if st else -1,
                          st.st_mtime if st else 0.0)  # fmt: skip


@contextmanager
def open_features(path: Path, trailing: tuple[int, ...], what: str) -> Iterator[np.ndarray]:
    """The array of a feature file, memory-mapped, after its dtype and shape were checked.

    Args:
        path: the `.npy` file.
        trailing: the expected shape after the first axis, e.g. (K, P, Dv).
        what: "video" or "query", for messages.

    Raises:
        FeatureFileError: unreadable, not a plain float16 array, or another shape; the
            message names the file and what the release documents.
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # truncated, not .npy, object array
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "python objects" in reason.lower() or "pickle" in reason.lower():
            raise FeatureFileError(f"{path}: holds Python objects (pickled data), not float16 "
                                   "features: refused, never unpickled") from None  # fmt: skip
        raise FeatureFileError(f"{path}: not a readable .npy array ({reason})") from None
    check_array(path, array, trailing, what)
    yield array  # unmapped when the caller drops its last reference (CPython: at once)


def check_array(path: Path, array: np.ndarray, trailing: tuple[int, ...], what: str) -> None:
    """The release's dtype (float16) and shape (n >= 1, *trailing), else FeatureFileError."""
    names = "(T, K, P, Dv)" if what == "video" else "(L, K, Dq)"
    if not isinstance(array, np.ndarray):
        raise FeatureFileError(f"{path}: holds {type(array).__name__}, not one array")
    if array.dtype != FEATURE_DTYPE:
        raise FeatureFileError(f"{path}: dtype {array.dtype.str} ({array.dtype}), but the "
                               f"release's {what} features are float16 ('<f2')")  # fmt: skip
    if array.ndim != len(trailing) + 1 or tuple(array.shape[1:]) != tuple(trailing):
        expected = "(n, " + ", ".join(map(str, trailing)) + ")"
        raise FeatureFileError(
            f"{path}: shape {tuple(array.shape)}, but the release's {what} features are "
            f"{names} = {expected} (CLIP ViT-B/32, the last 4 blocks)"
        )
    if array.shape[0] < 1:
        raise FeatureFileError(f"{path}: no rows (shape {tuple(array.shape)})")


def chunks(array: np.ndarray, rows: int) -> Iterator[np.ndarray]:
    """`rows` rows at a time, C-contiguous (a view of the mapping when it already is)."""
    for start in range(0, len(array), rows):
        yield np.ascontiguousarray(array[start : start + rows])
