"""The run folder's log and the loop's small helpers: log.jsonl lines (atomic appends,
trimmed on --resume), warnings once per run, the best checkpoint actually on disk."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from .loop import LoopState, Run

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
RESUME_FILE = "resume.safetensors"


def append_log(run: Run, record: dict) -> None:
    """One JSON line in `log.jsonl`, appended by a single write (O_APPEND): a kill leaves
    whole lines; a line cut by a full disk is dropped by `trim_log` on --resume. Only the
    main process of a distributed run writes."""
    if not run.dist.main:
        return
    line = (json.dumps(record, allow_nan=True) + "\n").encode()
    fd = os.open(run.out / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, line)
        if written != len(line):  # a short write: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run.out / LOG_FILE))
    finally:
        os.close(fd)


def trim_log(path: Path, state: LoopState) -> None:
    """Drop log lines a resumed run will write again (after the resume point)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        # val records count epochs from 1; state.epoch = epochs finished
        if rec.get("step", 0) > state.step or (
            rec.get("event") == "val" and rec.get("epoch", 0) > state.epoch
        ):
            continue
        keep.append(line)
    atomic_write_bytes(path, "".join(x + "\n" for x in keep).encode())


def last_good_checkpoint(run: Run) -> str:
    for name in (RESUME_FILE, "last.safetensors"):
        if (run.out / name).exists():
            return str(run.out / name)
    return "none yet (no checkpoint was written before this step)"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def warn_once(run: Run, message: str, once_key: str | None = None) -> None:
    """A warning logged once per run (not once per epoch); `once_key` groups variants."""
    key = once_key or message
    if key not in run.warned:
        run.warned.add(key)
        log.warning("%s", message)


def best_on_disk(run: Run) -> tuple[float | None, int | None, Path | None]:
    """(key metric, epoch, path) of the best checkpoint actually in the run folder."""
    from .checkpoint import CheckpointError, read_meta

    path = run.out / "best.safetensors"
    if not path.exists():
        return None, None, None
    try:
        meta = read_meta(path)
    except CheckpointError as err:
        log.warning("%s", err)
        return None, None, None
    value = (meta.get("metrics") or {}).get(run.key_metric)
    return value, meta.get("epoch"), path
