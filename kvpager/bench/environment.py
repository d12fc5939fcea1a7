"""What a benchmark records beside its figures: machine, versions, command, date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(gpu: bool = False) -> dict:
    """Machine and library versions, so that a figure can be traced to where it was
    measured. Versions come from package metadata, so nothing heavy is imported; `gpu=True`
    imports torch to name the GPU and its CUDA version (kernel benchmarks)."""
    env = {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "system": platform.platform(),
        "python": sys.version.split()[0],
        **{name: _version(name) for name in ("numpy", "torch", "triton", "simpy", "kvpager")},
    }
    if gpu:
        import torch

        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    return env


def record(name: str, results: dict, command: list[str] | None = None,
           gpu: bool = False) -> dict:
    """`{benchmark, date, command, environment, results}`, the shape of
    `benchmarks/results/*.json`."""
    return {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command if command is not None else ["python", *sys.argv]),
        "environment": environment(gpu),
        "results": results,
    }
