"""`sweep.json`: write a sweep document, read one back (checked) for reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

from kvpager.sweep.execute import KIND

SWEEP_FILE = "sweep.json"


def _clean(obj: object) -> object:
    """JSON-safe: numpy scalars to Python, tuples to lists, non-finite floats to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    item = getattr(obj, "item", None)
    if callable(item) and not isinstance(obj, (str, bytes)):
        obj = item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_sweep(doc: dict, out_dir: str | Path) -> Path:
    """Write `doc` to `out_dir/sweep.json` (the directory is created); returns the path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"sweep output {str(out)!r} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / SWEEP_FILE
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n", encoding="utf-8")
    return path


def read_sweep(path: str | Path) -> dict:
    """A sweep document from `sweep.json` or the directory holding it.

    Raises FileNotFoundError naming the path, ValueError naming the file and field for
    content that is not a sweep document.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SWEEP_FILE
    if not p.is_file():
        raise FileNotFoundError(2, "no sweep document (write one with `kvpager sweep "
                                   "TRACE --out DIR`)", str(p))
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ValueError(f"{p}: field 'kind' must be {KIND!r}: not a kvpager sweep document")
    for key, kind in (("spec", dict), ("points", list), ("sustained", dict)):
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"{p}: field {key!r} must be a JSON "
                             f"{'object' if kind is dict else 'array'}")
    for i, point in enumerate(doc["points"]):
        if not isinstance(point, dict) or not {"value", "strategy", "metrics"} <= set(point):
            raise ValueError(f"{p}: points[{i}] must be an object with value, strategy and "
                             "metrics")
    return doc
