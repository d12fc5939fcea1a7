"""Recording benchmark results: `benchmarks/results/<name>.json` with the machine, versions
and command beside the figures (the record itself is `kvpager.bench.environment.record`)."""

from __future__ import annotations

import json
from pathlib import Path

from kvpager.bench.environment import record as make_record

RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, results: dict, out: Path | None = None, gpu: bool = False) -> Path:
    """Write the record of `results` to `benchmarks/results/<name>.json` (or `out`)."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_record(name, results, gpu=gpu), indent=2) + "\n")
    return path
