"""What every benchmark records beside its figures: machine, versions, command, date.

A figure without the machine, GPU and library versions it was measured on cannot be
compared with anything, so every result file carries them. `benchmarks/_common.py` (the
scripts' helper) and `kvpager bench` both write this format:

    {"benchmark": name, "date": ISO-8601 UTC, "command": "...", "environment": {...},
     "results": {...}}
"""

from __future__ import annotations

import datetime as _dt
import json
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


def environment(gpu: bool | None = None) -> dict:
    """Machine and library versions, so a figure can be traced to where it was measured.

    Versions come from package metadata, so nothing heavy is imported. The GPU (name,
    memory, compute capability, CUDA version) is described when `gpu` is True, or, when it is
    None, if torch is already imported (a kernel benchmark ran): a memory-manager benchmark
    never pays for importing torch.
    """
    env = {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "system": platform.platform(),
        "python": sys.version.split()[0],
        **{name: _version(name) for name in ("numpy", "torch", "triton", "simpy", "kvpager")},
    }
    if gpu or (gpu is None and "torch" in sys.modules):
        try:
            import torch
        except ImportError:
            return env
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_memory_bytes"] = props.total_memory
            env["gpu_capability"] = f"{props.major}.{props.minor}"
            env["gpu_count"] = torch.cuda.device_count()
            env["cuda"] = torch.version.cuda
    return env


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def record(name: str, results: dict, command: str | None = None) -> dict:
    """The record `{benchmark, date, command, environment, results}` of `results`."""
    return {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else command_line(),
        "environment": environment(),
        "results": results,
    }


def write_record(path: str | os.PathLike, name: str, results: dict,
                 command: str | None = None) -> Path:
    """Write the record of `results` as JSON to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record(name, results, command), indent=2) + "\n")
    return path


__all__ = ["command_line", "environment", "record", "write_record"]
