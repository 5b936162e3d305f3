"""Log hygiene for long runs: a message repeated every epoch is shown once per run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _FirstTimeOnly(logging.Filter):
    """Passes an INFO/WARNING record the first time its (logger, level, text) is seen."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.WARNING:
            return True  # errors are never hidden
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextmanager
def once_per_run(prefix: str) -> Iterator[None]:
    """While active, INFO and WARNING messages of the loggers under `prefix` (e.g.
    "r2.evaluate", whose checks run at every validation) are shown once each."""
    only_once = _FirstTimeOnly()
    names = [n for n in list(logging.root.manager.loggerDict)
             if n == prefix or n.startswith(prefix + ".")]  # fmt: skip
    loggers = [logging.getLogger(n) for n in [prefix, *names]]
    for logger in loggers:
        logger.addFilter(only_once)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(only_once)
