"""What every benchmark records beside its figures: machine, versions, command, date.

The format lives in `kvpager.bench.record`, shared with `kvpager bench`; this module keeps
the scripts' short names and their default folder, `benchmarks/results/`.
"""

from __future__ import annotations

from pathlib import Path

from kvpager.bench.record import environment, write_record

RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, results: dict, out: Path | None = None) -> Path:
    """Write `{environment, command, date, results}` to `benchmarks/results/<name>.json`."""
    return write_record(out or RESULTS / f"{name}.json", name, results)


__all__ = ["RESULTS", "environment", "record"]
