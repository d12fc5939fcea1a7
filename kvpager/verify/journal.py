"""The verification run's record: one JSON line per event, flushed as it happens, and a
time budget that decides which steps still start.

A GPU lease can end at any moment (a per-command limit, the session's device time), so
nothing is kept in memory only: every case and every step is appended to
`DIR/results.jsonl` and fsync'd before the next one starts. Lines of earlier runs in the
same file stay; each line carries the run id, so `summary.json` describes one run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    """Plain JSON for what steps report (tuples, paths, floats that are not finite)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "nan" / "inf": strict JSON has no such numbers
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class Journal:
    """Appends events to `path` (JSON lines), each flushed and fsync'd at once."""

    def __init__(self, path: Path, run_id: str | None = None) -> None:
        self.path = path
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.events: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> dict:
        line = _jsonable({"run": self.run_id, "event": event,
                          "t": round(time.time(), 3), **fields})
        self.events.append(line)
        self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()
        with contextlib.suppress(OSError):  # a file system without fsync got the bytes
            os.fsync(self._fh.fileno())
        return line

    def close(self) -> None:
        self._fh.close()


@dataclass
class Budget:
    """Seconds the whole run may take, counted from construction (monotonic clock)."""

    total_s: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def fits(self, estimate_s: float) -> bool:
        return estimate_s <= self.left()


__all__ = ["Budget", "Journal"]
