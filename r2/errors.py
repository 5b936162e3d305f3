"""One error convention for every r2 command: one line on stderr, a documented exit code.

Expected failures raise a subclass of :class:`R2Error`; the command line prints
``error: <message>`` (no traceback) and exits with the error's code. Exit codes:

    0    success
    1    runtime failure: the inputs were fine but the work could not be done
         (disk full, a write refused, every video failed to decode, a NaN loss)
    2    bad usage or bad input: options, missing or malformed files, annotations,
         caches or checkpoints that contradict each other
    130  interrupted (Ctrl-C); whatever was committed before stays valid

Each command's ``--help`` ends with :data:`EXIT_CODES_EPILOG`.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure
EXIT_USAGE = 2  # bad usage or bad input
EXIT_INTERRUPTED = 130  # 128 + SIGINT

EXIT_CODES_EPILOG = (
    "Exit codes: 0 success; 1 runtime failure (disk full, write refused, nothing usable "
    "produced, NaN loss); 2 bad usage or input (options, files, annotations, caches, "
    "checkpoints); 130 interrupted."
)


def help_epilog(examples: str) -> str:
    """The end of a command's `--help`: its examples, then the exit codes."""
    return examples.rstrip() + "\n\n" + EXIT_CODES_EPILOG


# OSError numbers that mean "the user's input is wrong" rather than "the run failed"
_INPUT_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG}


class R2Error(Exception):
    """An expected failure with a one-line, actionable message."""

    exit_code = EXIT_FAILURE


class UsageError(R2Error):
    """Bad usage or bad input (exit code 2)."""

    exit_code = EXIT_USAGE


class RunFailureError(R2Error):
    """The inputs were fine but the work could not be done (exit code 1)."""

    exit_code = EXIT_FAILURE


def os_error_message(err: OSError) -> str:
    """`path: reason` for an OSError, without Python's "[Errno N]" noise."""
    where = err.filename if err.filename is not None else ""
    reason = err.strerror or str(err)
    return f"{where}: {reason}" if where else reason


def exit_code_for(err: BaseException) -> int:
    """The exit code of an expected failure (see the module docstring)."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, R2Error):
        return err.exit_code
    if isinstance(err, OSError) and err.errno in _INPUT_ERRNOS:
        return EXIT_USAGE
    return EXIT_FAILURE


@contextmanager
def cli_errors(
    interrupted_hint: str | None = None, usage: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Turn expected failures inside a command into one line on stderr and an exit code.

    R2Error, OSError (disk full, read-only folder, permission denied, ...) and Ctrl-C are
    expected; anything else is a bug and keeps its traceback.

    Args:
        interrupted_hint: printed after "interrupted" on Ctrl-C (e.g. how to resume).
        usage: further exception types to report as bad input (exit code 2).
    """
    import typer

    try:
        yield
    except KeyboardInterrupt:
        print("interrupted" + (f"; {interrupted_hint}" if interrupted_hint else ""),
              file=sys.stderr)  # fmt: skip
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except R2Error as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(err.exit_code) from None
    except OSError as err:
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        raise typer.Exit(exit_code_for(err)) from None
    except usage as err:  # type: ignore[misc]
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None
