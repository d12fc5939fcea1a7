"""Output paths checked before any work: a command that would fail to write its result after
minutes of simulation must say so at once, naming the option (exit 2).

A path is writable when it is not the wrong kind of thing (a file where a directory is
wanted, or the reverse) and a file can really be created in its directory: permission bits
are not enough (`/proc` and read-only mounts grant them and refuse the write), so the check
creates a probe file in the nearest existing directory and removes it. Nothing else is
created before the work starts: the writer makes missing directories.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvpager.cli.errors import fail


def _nearest_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_writable_parent(path: Path, option: str) -> None:
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise fail(f"{option} {str(path)!r}: {str(anchor)!r} is a file, not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise fail(f"{option} {str(path)!r}: no permission to write in {str(anchor)!r}")
    _probe(anchor, path, option)


def _probe(directory: Path, path: Path, option: str) -> None:
    """Create a file in the existing `directory` (removed again), or fail naming `option`."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise fail(f"{option} {str(path)!r}: cannot write there: "
                   f"{exc.strerror or exc}") from None


def check_out_dir(path: Path, option: str = "--out") -> Path:
    """A run or sweep directory to write into: an existing directory or a new one."""
    if path.exists() and not path.is_dir():
        raise fail(f"{option} {str(path)!r} is an existing file; give a directory (it is "
                   "created if missing)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise fail(f"{option} {str(path)!r}: no permission to write in this directory")
        _probe(path, path, option)
        return path
    _check_writable_parent(path, option)
    return path


def check_out_file(path: Path, option: str, suffixes: tuple[str, ...]) -> Path:
    """A file to (over)write, whose name ends in one of `suffixes` (e.g. ".html")."""
    if path.suffix.lower() not in suffixes:
        raise fail(f"{option} {str(path)!r}: the file name must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise fail(f"{option} {str(path)!r} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise fail(f"{option} {str(path)!r}: no permission to overwrite this file")
    _check_writable_parent(path, option)
    return path
