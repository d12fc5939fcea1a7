"""Rich progress on stderr for the longer commands, only when stderr is a terminal.

Progress goes to stderr so that `--json` output and redirected tables stay clean, and is
off when stderr is not a terminal (CI logs, pipes, Typer's test runner).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _console():
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def progress_bar(label: str, enabled: bool = True
                 ) -> Iterator[Callable[[int, int], None] | None]:
    """Yields update(done, total) drawing one bar, or None when not drawing."""
    console = _console()
    if not (enabled and console.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def spinner(text: str, enabled: bool = True) -> Iterator[None]:
    """A status spinner for work of unknown length (writing a report)."""
    console = _console()
    if not (enabled and console.is_terminal):
        yield
        return
    with console.status(text):
        yield
