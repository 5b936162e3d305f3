"""The writer lock, and recovery of a crashed cache's superblock by whoever opens it next.

One process at a time may write a cache: it holds an exclusive BSD `flock` on the lock
file `<cache>.lock` beside it. The kernel drops the lock when the process dies, so a lock
is never stale; the superblock flags a killed writer leaves set are.

The lock file exists only while someone holds it: the holder deletes it before releasing
the lock (a killed holder's file is deleted by the next one). Deleting a lock file others
may be waiting on is safe because every locker, once it has the lock, checks that the file
it locked is still the one at `<cache>.lock` (same inode) and starts over if not.

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


def _is_current(fd: int, path: Path) -> bool:
    """True if the locked descriptor `fd` is still the lock file at its path."""
    try:
        st = os.stat(lock_path(path))
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def _lock_once(path: Path) -> int | None:
    """Open (creating) and lock the lock file without waiting; its fd, or None if held."""
    for _ in range(100):  # the file can be replaced between open and flock; retry then
        fd = _open_lock_file(path)
        try:
            if not _try_flock(fd):
                os.close(fd)
                return None
            if _is_current(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # a stale file deleted by its previous holder: lock the new one
    raise OSError(f"{lock_path(path)}: the lock file keeps being replaced")


def release_lock(path: Path, fd: int) -> None:
    """Delete the lock file (we hold it, so it is ours) and release the lock."""
    try:
        if _is_current(fd, path):
            os.unlink(lock_path(path))
    except OSError:
        pass  # e.g. a read-only folder: the file stays, which is harmless
    finally:
        os.close(fd)


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
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = _lock_once(path)
        except OSError as exc:
            raise CacheError(f"{path}: cannot open its lock file for writing: {exc}") from exc
        if fd is not None:
            break
        if time.monotonic() > deadline:
            raise CacheError(
                f"{path}: another process is writing this cache (it holds the writer "
                f"lock {lock_path(path).name}); wait for it to finish or write elsewhere"
            )
        time.sleep(LOCK_POLL_S)
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
    if not os.access(path, os.W_OK):
        return False  # a read-only file: leave it to a writer
    try:
        lock_fd = _lock_once(path)
    except OSError:
        return False  # read-only folder: leave it to a writer
    if lock_fd is None:
        return False  # a live writer holds the lock
    try:
        if clear_flags_locked(path) is not None:
            log.warning("%s: cleared the flags of an interrupted writer", path)
        return True
    finally:
        release_lock(path, lock_fd)
