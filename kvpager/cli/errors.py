"""Errors at the edge of the command line: one line on stderr and an exit code.

Exit 2: bad input (a trace, a spec or calibration file, an option value): the message names
the file, the record and the field, as the library's errors do. Exit 1: anything else, an
internal error, with a pointer to `KVPAGER_DEBUG=1` for the traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from kvpager.core.errors import KVPagerError

BAD_INPUT = 2
INTERNAL = 1


def fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    """Print `kvpager: error: message` on stderr; return the Exit to raise."""
    print(f"kvpager: error: {message}", file=sys.stderr)
    return typer.Exit(code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn domain errors into one-line messages and exit codes (2 input, 1 internal)."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except (KVPagerError, ValueError, FileNotFoundError, IsADirectoryError,
            PermissionError) as exc:
        if os.environ.get("KVPAGER_DEBUG"):
            raise
        raise fail(_one_line(exc)) from None
    except Exception as exc:
        if os.environ.get("KVPAGER_DEBUG"):
            raise
        raise fail(f"internal error: {type(exc).__name__}: {_one_line(exc)} "
                   "(rerun with KVPAGER_DEBUG=1 for the traceback)", INTERNAL) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:  # not "[Errno 2] ...: 'name'"
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    elif isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return " ".join(text.split())
