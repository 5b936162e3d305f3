"""Bounded JSON / JSON Lines reading: every r2 reader of annotation and prediction files.

A hostile or broken file must give one clean `file:line` error, never a traceback, a
RecursionError, or gigabytes of memory. The limits below are checked BEFORE a line is
parsed, so memory stays proportional to `MAX_LINE_BYTES` whatever the file holds:

- a line is read with a size cap (`readline(limit)`): a longer line is refused without
  reading the rest of it;
- nesting deeper than `MAX_JSON_DEPTH` arrays/objects is refused before `json.loads`
  (100,000 nested brackets would otherwise raise RecursionError);
- a number with more digits than Python converts, invalid UTF-8, a byte-order mark on a
  later line, are all reported with their line.

Field-level limits (windows per query, query length) are the schema's (`schema.py`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from r2.errors import UsageError

MAX_LINE_BYTES = 8 * 1024 * 1024  # bytes per JSON Lines line (a 3-hour TVSum-style row is ~1 MB)
MAX_JSON_DEPTH = 32  # nested arrays/objects per value (annotations need 3)
MAX_ARRAY_FILE_BYTES = 1024 * 1024 * 1024  # a whole-file JSON array (eval accepts one)

_OPEN, _CLOSE = (ord("["), ord("{")), (ord("]"), ord("}"))
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # JSON string literals


class JsonInputError(UsageError, ValueError):
    """A JSON / JSON Lines file cannot be read; the message names file and line."""


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects in a JSON text (brackets inside strings ignored)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return min(MAX_JSON_DEPTH, raw.count(b"[") + raw.count(b"{"))  # cannot be deeper
    bare = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    step = np.isin(bare, _OPEN).astype(np.int32) - np.isin(bare, _CLOSE).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def loads(raw: bytes | str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse one JSON text with the nesting bound; errors name `where`.

    Raises:
        JsonInputError: invalid UTF-8 or JSON, too deep, or a number Python refuses.
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = json_depth(data)
    if depth > max_depth:
        raise JsonInputError(f"{where}: JSON nested {depth} levels deep (the limit is {max_depth})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonInputError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer with 5,000 digits
        raise JsonInputError(f"{where}: invalid JSON: {exc}") from None


def _open(path: Path, what: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise JsonInputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise JsonInputError(f"{path}: is a folder; the {what} must be a file") from None
    except OSError as exc:
        raise JsonInputError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def iter_lines(
    path: str | os.PathLike, what: str = "file", max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, raw bytes without the newline) of each non-blank line.

    Raises:
        JsonInputError: the file can't be opened, or a line is longer than `max_line_bytes`
            (the rest of that line is never read).
    """
    path = Path(path)
    with _open(path, what) as fh:
        number = 0
        while True:
            line = fh.readline(max_line_bytes + 1)
            if not line:
                return
            number += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                raise JsonInputError(
                    f"{path}:{number}: line longer than {max_line_bytes:,} bytes (the "
                    "limit per JSON line)"
                )
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # UTF-8 byte-order mark
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def iter_jsonl(
    path: str | os.PathLike, what: str = "file", max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed value) of each non-blank line of a JSON Lines file.

    Raises:
        JsonInputError: unreadable file, over-long line, invalid or too deeply nested JSON.
    """
    for number, raw in iter_lines(path, what, max_line_bytes):
        where = f"{path}:{number}"
        yield where, loads(raw, where)


def read_json_or_jsonl(path: str | os.PathLike, what: str = "file") -> list[tuple[str, Any]]:
    """A JSON Lines file, or one JSON array of objects: [(location, value), ...].

    Array items are located as ``file[item i]``; the whole array may hold at most
    `MAX_ARRAY_FILE_BYTES`.
    """
    path = Path(path)
    with _open(path, what) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"["):
        return list(iter_jsonl(path, what))
    size = path.stat().st_size
    if size > MAX_ARRAY_FILE_BYTES:
        raise JsonInputError(
            f"{path}: a JSON array of {size:,} bytes (the limit is {MAX_ARRAY_FILE_BYTES:,}; "
            "write JSON Lines instead)"
        )
    with _open(path, what) as fh:
        items = loads(fh.read().lstrip(b"\xef\xbb\xbf"), str(path), MAX_JSON_DEPTH + 1)
    if not isinstance(items, list):
        raise JsonInputError(f"{path}: expected JSON Lines or a JSON array")
    return [(f"{path}[item {i}]", item) for i, item in enumerate(items)]
