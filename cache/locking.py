"""The writer lock, and recovery of a crashed cache's superblock by whoever opens it next.

One process at a time may write a cache: it holds an exclusive BSD `flock` on the lock
file `<cache>.lock` beside it (created on first use and left in place: deleting a lock
file while others may hold it is unsafe). The kernel drops the lock when the process dies,
so a lock is never stale; the superblock flags a killed writer leaves set are.

HDF5's own file locking is switched off for every open (`locking=False`): it differs
between HDF5 versions, fails on some network filesystems, and a SWMR writer drops it anyway.
The lock is on a separate file so that a user who forces HDF5's locking on with
HDF5_USE_FILE_LOCKING=TRUE (which overrides `locking=False`) gets HDF5's semantics on top
instead of HDF5 colliding with r2's own lock.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from .records import CacheError
from .superblock import SuperblockError, clear_stale_flags, read_flags

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"  # the lock file is `<cache file name>.lock` in the same folder
LOCK_WAIT_S = 2.0  # how long a writer waits for a lock held briefly by a recovering reader
LOCK_POLL_S = 0.05

log = logging.getLogger(__name__)


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


def _open_lock_file(path: Path) -> int:
    return os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o666)


def _try_flock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def acquire_writer_lock(path: Path) -> int:
    """Take the exclusive writer lock of cache `path`; return the lock file's descriptor.

    Raises:
        CacheError: the lock file cannot be opened, or another writer holds the lock.
    """
    try:
        fd = _open_lock_file(path)
    except OSError as exc:
        raise CacheError(f"{path}: cannot open its lock file for writing: {exc}") from exc
    deadline = time.monotonic() + LOCK_WAIT_S
    try:
        while not _try_flock(fd):
            if time.monotonic() > deadline:
                raise CacheError(
                    f"{path}: another process is writing this cache (it holds the writer "
                    f"lock {lock_path(path).name}); wait for it to finish or write elsewhere"
                )
            time.sleep(LOCK_POLL_S)
    except BaseException:
        os.close(fd)
        raise
    if fcntl is None:  # pragma: no cover
        log.warning("%s: no file locking on this platform; run one writer at a time", path)
    return fd


def superblock_flags(path: Path) -> int:
    """The superblock's consistency flags (0: no writer open, nonzero: live or crashed writer)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CacheError(f"{path}: cannot read: {exc}") from exc
    try:
        return read_flags(fd)
    except SuperblockError as exc:
        raise CacheError(f"{path}: not an r2 feature cache, or damaged: {exc}") from exc
    finally:
        os.close(fd)


def clear_flags_locked(path: Path) -> tuple[bytes, int] | None:
    """`clear_stale_flags` on cache `path`, whose writer lock the caller holds."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise CacheError(f"{path}: cannot open the cache for writing: {exc}") from exc
    try:
        return clear_stale_flags(fd)
    except SuperblockError as exc:
        raise CacheError(f"{path}: not an r2 feature cache, or damaged: {exc}") from exc
    finally:
        os.close(fd)


def recover_if_abandoned(path: Path) -> bool:
    """Clear flags left by a killed writer; False if a live writer holds the lock (or no rights)."""
    try:
        lock_fd = _open_lock_file(path)
    except OSError:
        return False  # read-only folder: leave it to a writer
    try:
        if not _try_flock(lock_fd):
            return False
        if not os.access(path, os.W_OK):
            return False
        if clear_flags_locked(path) is not None:
            log.warning("%s: cleared the flags of an interrupted writer", path)
        return True
    finally:
        os.close(lock_fd)  # releases the lock
