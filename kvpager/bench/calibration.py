"""Turn measured decode-attention times into a simulator calibration file.

The schema is `kvpager.sim.cost_model.calibration`'s: `decode_attention` entries that form a
full grid of batch x context, each the seconds of ONE layer's paged-attention call. The
benchmark measures more than one configuration (kv heads, dtypes, backends, v1 and v2);
a calibration describes one model's per-GPU head layout on one backend, so the caller picks
them, and the time per point is that of the version an engine would run: the one
`kvpager.ops.paged_attention` picks (vLLM's heuristic, "auto"), or the faster ("best").
Grid points the benchmark skipped (too large for memory) are dropped by removing whole
batch rows or context columns, the one with most gaps first, until the grid is full.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

VERSION_RULES = ("auto", "best")

#: torch device-name fragment -> the simulator's GPU preset (kvpager.sim.presets.GPUS)
_GPU_PRESETS = (("H200", "H200"), ("H100", "H100-80GB"), ("A100", "A100"))


def gpu_preset(device_name: str | None, memory_bytes: int | None = None) -> str | None:
    """The simulator preset for a CUDA device name ("NVIDIA H200" -> "H200"), or None."""
    if not device_name:
        return None
    for fragment, preset in _GPU_PRESETS:
        if fragment in device_name.upper():
            if preset == "A100":
                return "A100-80GB" if (memory_bytes or 0) > 60 * 2**30 else "A100-40GB"
            return preset
    return None


def _full_grid(points: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    batches = sorted({b for b, _ in points})
    contexts = sorted({c for _, c in points})
    while batches and contexts:
        missing_b = {b: sum((b, c) not in points for c in contexts) for b in batches}
        missing_c = {c: sum((b, c) not in points for b in batches) for c in contexts}
        worst_b = max(batches, key=lambda b: (missing_b[b], b))
        worst_c = max(contexts, key=lambda c: (missing_c[c], c))
        if missing_b[worst_b] == 0:
            break
        if missing_b[worst_b] / len(contexts) >= missing_c[worst_c] / len(batches):
            batches.remove(worst_b)
        else:
            contexts.remove(worst_c)
    return {(b, c): points[b, c] for b in batches for c in contexts}


def calibration_document(
    points: list[dict], *, backend: str, dtype: str, num_kv_heads: int,
    version: str = "auto", gpu: str | None = None, model: str | None = None,
    tp: int | None = None,
) -> dict:
    """The calibration JSON (a dict) from the benchmark's `points` records.

    Raises ValueError naming the selection when nothing measured matches it.
    """
    if version not in VERSION_RULES:
        raise ValueError(f"version must be one of {VERSION_RULES}, got {version!r}")
    chosen = [p for p in points if p["backend"] == backend and p["dtype_name"] == dtype
              and p["num_kv_heads"] == num_kv_heads]
    if not chosen:
        raise ValueError(f"no measurement for backend {backend!r}, dtype {dtype!r}, "
                         f"num_kv_heads {num_kv_heads}: measured "
                         + ", ".join(sorted({f"{p['backend']}/{p['dtype_name']}/"
                                             f"kv{p['num_kv_heads']}" for p in points})))
    seconds: dict[tuple[int, int], float] = {}
    for p in chosen:
        key = (p["batch"], p["context"])
        if version == "auto" and p["version"] != p["auto_version"]:
            continue
        t = p["us_per_call"] / 1e6
        seconds[key] = min(t, seconds.get(key, float("inf")))
    grid = _full_grid(seconds)
    if not grid:
        raise ValueError("the measured points do not contain a grid of batch x context")
    first = chosen[0]
    doc: dict = {"version": 1}
    for name, value in (("gpu", gpu), ("model", model), ("tp", tp)):
        if value is not None:
            doc[name] = value
    doc.update({
        "backend": backend, "dtype": first["dtype"], "kv_cache_dtype": first["kv_cache_dtype"],
        "num_heads": first["num_heads"], "num_kv_heads": num_kv_heads,
        "head_size": first["head_size"], "block_size": first["block_size"],
        "version_rule": version,
        "notes": "kvpager bench attention: median seconds of one layer's decode call; "
                 f"timing: {first['timing']}",
        "entries": [{"kind": "decode_attention", "batch": b, "context": c, "seconds": t}
                    for (b, c), t in sorted(grid.items())],
    })
    return doc


def write_calibration(path: str | os.PathLike, doc: dict) -> Path:
    """Validate `doc` with the simulator's own parser, then write it."""
    from kvpager.sim.cost_model.calibration import parse_calibration

    path = Path(path)
    parse_calibration(doc, os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


__all__ = ["VERSION_RULES", "calibration_document", "gpu_preset", "write_calibration"]
