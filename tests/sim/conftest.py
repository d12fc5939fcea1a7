"""Fixtures of the simulator-data tests: small trace files written on the fly, the example
slices shipped in `examples/`, and (when present) the full public traces."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SHARED_TRACES = Path(os.environ.get("KVPAGER_TRACES_DIR", "/work/shared/traces"))


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], str]:
    """write(name, text) -> name: a file in a fresh cwd, so messages show the bare name."""
    monkeypatch.chdir(tmp_path)

    def _write(name: str, text: str | bytes) -> str:
        p = tmp_path / name
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")
        return name

    return _write


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def shared_trace(relative: str) -> Path:
    """A file of the full public traces, or skip (they are not shipped with the repo)."""
    p = SHARED_TRACES / relative
    if not p.is_file():
        pytest.skip(f"{p} not present (set KVPAGER_TRACES_DIR to the traces folder)")
    return p
