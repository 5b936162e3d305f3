"""Output files that are either whole or absent: atomic writes, writability checks, debris.

Every r2 output (JSON, JSONL, PNG, checkpoints, videos) is written to a temporary file in
the destination folder and renamed over the destination, so a kill or a full disk at any
moment leaves the old file or the new one, never a torn one. Temporary names are
``.<name>.tmp-<pid>-<random>``; :func:`remove_stale_temps` deletes those of dead
processes. Final files get the permissions a plain ``open(path, "w")`` would give
(0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from r2.errors import UsageError

TEMP_MARK = ".tmp-"  # temporary files: f".{name}{TEMP_MARK}{pid}-{hex}"


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read by setting (not thread-safe, but brief)
    os.umask(mask)
    return mask


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path` (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` atomically.

    The caller writes the whole file to the yielded path (any library, any format). On an
    exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces `path` only if the block succeeds."""
    binary = "b" in mode
    with atomic_path(path) as tmp, open(
        tmp, mode, encoding=None if binary else encoding
    ) as fh:  # fmt: skip
        yield fh


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def ensure_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Fail now (UsageError naming the path) unless a file can be created at `path`.

    Creates missing parent folders. Call it before long work, so a read-only or missing
    destination is reported in a second, not after an hour of computing.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder; the {what} must be a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = temp_path(path)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"{path}: cannot write the {what} there ({reason})") from None
    return path


def ensure_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Like :func:`ensure_writable` for a folder that will receive several files."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: is a file; the {what} must be a folder")
    ensure_writable(folder / ".r2-write-check", what)
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete temporary files of dead processes in `folder`; returns how many."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(f".*{TEMP_MARK}*"):
        try:
            pid = int(tmp.name.rsplit(TEMP_MARK, 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
    return removed
