"""What every benchmark records beside its figures: machine, versions, command, date."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Machine and library versions, so a figure can be traced to where it was measured."""
    env = {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "system": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "triton": _version("triton"),
        "simpy": _version("simpy"),
        "kvpager": _version("kvpager"),
    }
    try:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def record(name: str, results: dict, out: Path | None = None) -> Path:
    """Write `{environment, command, date, results}` to `benchmarks/results/<name>.json`."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "environment": environment(),
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
