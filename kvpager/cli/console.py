"""Rich consoles of the command line: full width when the output is not a terminal.

Rich wraps and truncates at 80 columns when it cannot ask a terminal for its width (a pipe,
a CI log), which cuts table notes and option names; there nothing is gained by wrapping, so
such output is rendered at its natural width.
"""

from __future__ import annotations

import os
import sys

#: Width of output that is not a terminal: wide enough that nothing is wrapped or cut.
PIPE_WIDTH = 4096
#: Width of `--help` pages that are not a terminal (Typer pads its panels to the width).
HELP_WIDTH = 160


def make_console(stderr: bool = False):
    """A `rich.console.Console` on stdout (or stderr) that renders at full width when the
    stream is not a terminal; a terminal's own width otherwise (or $COLUMNS when set)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH)


def widen_help_when_piped() -> None:
    """Let Typer render `--help` at `HELP_WIDTH` when stdout is not a terminal, through
    its documented `TERMINAL_WIDTH` setting (read when Typer's help module is imported, so
    call this before importing the application)."""
    if not sys.stdout.isatty() and not os.environ.get("TERMINAL_WIDTH") \
            and not os.environ.get("COLUMNS"):
        os.environ["TERMINAL_WIDTH"] = str(HELP_WIDTH)
