"""Measured kernel and step times that override the roofline where they exist.

File schema (JSON; `kvpager bench` is meant to write it):

    {
      "version": 1,
      "gpu": "H100-80GB",          optional: checked against the cost model's GPU name
      "model": "Llama-2-7B",       optional: checked against the model name
      "tp": 1,                     optional: checked against the tensor-parallel degree
      "entries": [
        {"kind": "decode_attention", "batch": 8, "context": 1024, "seconds": 2.1e-5},
        {"kind": "step", "prefill_tokens": 0, "decode_seqs": 64,
         "decode_context_tokens": 65536, "seconds": 0.0123}
      ]
    }

Other top-level and entry fields (notes, backend, dtype, ...) are allowed and ignored.

Version 2 adds an optional "gpu_fit" object: the fitted performance curves of the GPU
(`kvpager.sim.cost_model.gpu_model.GpuFit`), written by `kvpager calibrate from-profiles`.
They replace the roofline's linear, attention, all-reduce and overhead terms for any model
on that GPU (so "model" and "tp" are absent from such files); "entries" may then be empty.
Entries still take precedence where they exist (a measured decode grid of this very model).

- `decode_attention`: one paged-attention decode call for ONE layer, `batch` sequences of
  `context` tokens each (the per-GPU head configuration of the model). The entries must
  form a full grid (every batch with every context). The cost model uses
  `num_layers x f(decode_seqs, decode_context_tokens / decode_seqs)` for the decode
  attention term, f bilinear between grid points (exact for times proportional to
  batch x context). Outside the grid the roofline is scaled by measured / roofline at the
  nearest grid point, so the curve stays continuous.
- `step`: a whole engine step, with the arguments of `CostModel.step_time`
  (`prefill_tokens`, `decode_seqs`, `decode_context_tokens` required;
  `prefill_attention_work` defaults to one fresh prompt, p (p + 1) / 2; `prefill_seqs` to
  0). The roofline time of each measured step is computed and the measured seconds are
  interpolated piecewise-linearly *as a function of the roofline time*: a correction curve
  that applies to any step mix. Beyond the measured range the ratio at the nearest end
  scales the roofline.

Errors (CalibrationError, a ValueError) name the file, the entry and the field.
"""

from __future__ import annotations

import json
import math
import os
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvpager.core.errors import KVPagerError
from kvpager.sim.cost_model.gpu_model import GpuFit

if TYPE_CHECKING:
    from kvpager.sim.cost_model.roofline import CostModel

KINDS = ("decode_attention", "step")
VERSIONS = (1, 2)


class CalibrationError(KVPagerError, ValueError):
    """A calibration file that cannot be used; the message names file, entry and field."""


@dataclass(frozen=True)
class DecodePoint:
    batch: int
    context: int
    seconds: float


@dataclass(frozen=True)
class StepPoint:
    prefill_tokens: int
    prefill_attention_work: float
    decode_seqs: int
    decode_context_tokens: int
    prefill_seqs: int
    seconds: float


@dataclass(frozen=True)
class Calibration:
    """Validated contents of a calibration file (see the module docstring)."""

    source: str
    decode: tuple[DecodePoint, ...]
    steps: tuple[StepPoint, ...]
    gpu: str | None = None
    model: str | None = None
    tp: int | None = None
    gpu_fit: GpuFit | None = None

    def bind(self, cost: CostModel) -> BoundCalibration:
        """The interpolators of this calibration for one cost model (checked to match)."""
        for name, mine, theirs in (("gpu", self.gpu, cost.gpu_spec.name),
                                   ("model", self.model, cost.model_spec.name)):
            if mine is not None and mine.lower() != theirs.lower():
                raise CalibrationError(f"{self.source}: field '{name}': measured for {mine!r}, "
                                       f"but the cost model is for {theirs!r}")
        if self.tp is not None and self.tp != cost.tp:
            raise CalibrationError(f"{self.source}: field 'tp': measured at tp={self.tp}, but "
                                   f"the cost model has tp={cost.tp}")
        return BoundCalibration(self, cost)


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear y(x) for xs[0] <= x <= xs[-1] (xs strictly increasing)."""
    if len(xs) == 1:
        return ys[0]
    i = min(max(bisect_right(xs, x) - 1, 0), len(xs) - 2)
    w = (x - xs[i]) / (xs[i + 1] - xs[i])
    return ys[i] + w * (ys[i + 1] - ys[i])


class BoundCalibration:
    """Interpolation tables of a Calibration against one CostModel's roofline."""

    def __init__(self, cal: Calibration, cost: CostModel) -> None:
        self.cal, self.cost = cal, cost
        self.layers = cost.model_spec.num_layers
        self.batches = sorted({p.batch for p in cal.decode})
        self.contexts = sorted({p.context for p in cal.decode})
        table = {(p.batch, p.context): p.seconds for p in cal.decode}
        self.table = [[table[b, c] for c in self.contexts] for b in self.batches]
        self.step_x: list[float] = []
        self.step_y: list[float] = []

    @property
    def has_decode_attention(self) -> bool:
        return bool(self.batches)

    @property
    def has_steps(self) -> bool:
        return bool(self.step_x)

    def fit_steps(self) -> None:
        """Roofline times of the measured steps (with decode attention already calibrated);
        equal roofline times are averaged."""
        pairs: dict[float, list[float]] = {}
        for p in self.cal.steps:
            roof = self.cost.breakdown(p.prefill_tokens, p.prefill_attention_work, p.decode_seqs,
                                       p.decode_context_tokens, p.prefill_seqs).roofline_s
            pairs.setdefault(roof, []).append(p.seconds)
        self.step_x = sorted(pairs)
        self.step_y = [sum(pairs[x]) / len(pairs[x]) for x in self.step_x]

    def step_seconds(self, roofline_s: float) -> float:
        xs, ys = self.step_x, self.step_y
        if roofline_s <= xs[0]:
            return roofline_s * ys[0] / xs[0]
        if roofline_s >= xs[-1]:
            return roofline_s * ys[-1] / xs[-1]
        return _interp(xs, ys, roofline_s)

    def _grid(self, batch: float, context: float) -> float:
        bs, cs, t = self.batches, self.contexts, self.table
        rows = [_interp(cs, t[i], context) for i in range(len(bs))]
        return _interp(bs, rows, batch)

    def decode_attention_seconds(self, decode_seqs: int, decode_context_tokens: float) -> float:
        """All layers' decode attention of a batch, measured where the grid covers it."""
        bs, cs = self.batches, self.contexts
        context = decode_context_tokens / decode_seqs
        b = min(max(decode_seqs, bs[0]), bs[-1])
        c = min(max(context, cs[0]), cs[-1])
        measured = self.layers * self._grid(b, c)
        if b == decode_seqs and c == context:
            return measured
        roof = self.cost.roofline_decode_attention
        return measured * roof(decode_seqs, decode_context_tokens) / roof(b, b * c)


def _number(path: str, where: str, entry: dict, name: str, *, minimum: float, integer: bool,
            default: float | None = None, strict: bool = False) -> float:
    value = entry.get(name, default)
    if value is None:
        raise CalibrationError(f"{path}: {where}: field '{name}': missing field")
    ok_type = type(value) is int if integer else (
        type(value) in (int, float) and math.isfinite(value))
    in_range = value > minimum if strict else value >= minimum
    if not (ok_type and in_range):
        what = "an integer" if integer else "a finite number"
        rel = ">" if strict else ">="
        raise CalibrationError(f"{path}: {where}: field '{name}': expected {what} {rel} "
                               f"{minimum:g}, got {json.dumps(value)}")
    return value


def parse_calibration(doc: object, path: str) -> Calibration:
    """Validate a parsed calibration document (see the module docstring)."""
    if not isinstance(doc, dict):
        raise CalibrationError(f"{path}: expected a JSON object with 'version' and 'entries'")
    version = doc.get("version")
    if version not in VERSIONS or type(version) is not int:
        raise CalibrationError(f"{path}: field 'version': expected 1 or 2, got "
                               f"{json.dumps(version)}")
    gpu_fit = None
    if doc.get("gpu_fit") is not None:
        if version < 2:
            raise CalibrationError(f"{path}: field 'gpu_fit': needs version 2")
        try:
            gpu_fit = GpuFit.from_doc(doc["gpu_fit"], "gpu_fit")
        except ValueError as exc:
            raise CalibrationError(f"{path}: field {exc}") from None
    meta: dict = {}
    for name in ("gpu", "model"):
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise CalibrationError(f"{path}: field '{name}': expected a string, got "
                                   f"{json.dumps(value)}")
        meta[name] = value
    tp = doc.get("tp")
    if tp is not None and (type(tp) is not int or tp < 1):
        raise CalibrationError(f"{path}: field 'tp': expected an integer >= 1, got "
                               f"{json.dumps(tp)}")
    entries = doc.get("entries")
    if entries is None and gpu_fit is not None:
        entries = []
    if not isinstance(entries, list) or (not entries and gpu_fit is None):
        raise CalibrationError(f"{path}: field 'entries': expected a non-empty list")
    decode: list[DecodePoint] = []
    steps: list[StepPoint] = []
    seen: dict[tuple[int, int], int] = {}
    for k, entry in enumerate(entries):
        where = f"entries[{k}]"
        if not isinstance(entry, dict):
            raise CalibrationError(f"{path}: {where}: expected an object, got "
                                   f"{json.dumps(entry)[:40]}")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise CalibrationError(f"{path}: {where}: field 'kind': expected one of "
                                   f"{', '.join(KINDS)}, got {json.dumps(kind)}")
        seconds = _number(path, where, entry, "seconds", minimum=0, integer=False, strict=True)
        if kind == "decode_attention":
            b = int(_number(path, where, entry, "batch", minimum=1, integer=True))
            c = int(_number(path, where, entry, "context", minimum=1, integer=True))
            if (b, c) in seen:
                raise CalibrationError(f"{path}: {where}: duplicate point batch={b}, "
                                       f"context={c} (also entries[{seen[b, c]}])")
            seen[b, c] = k
            decode.append(DecodePoint(b, c, float(seconds)))
            continue
        p = int(_number(path, where, entry, "prefill_tokens", minimum=0, integer=True))
        d = int(_number(path, where, entry, "decode_seqs", minimum=0, integer=True))
        ctx = int(_number(path, where, entry, "decode_context_tokens", minimum=d, integer=True))
        work = _number(path, where, entry, "prefill_attention_work", minimum=p, integer=False,
                       default=p * (p + 1) / 2)
        ps = int(_number(path, where, entry, "prefill_seqs", minimum=0, integer=True, default=0))
        if p + d == 0:
            raise CalibrationError(f"{path}: {where}: a step needs prefill_tokens or "
                                   "decode_seqs > 0")
        steps.append(StepPoint(p, float(work), d, ctx, ps, float(seconds)))
    batches = sorted({b for b, _ in seen})
    contexts = sorted({c for _, c in seen})
    for b in batches:
        for c in contexts:
            if (b, c) not in seen:
                raise CalibrationError(f"{path}: decode_attention entries must form a full grid "
                                       f"of batch x context: missing batch={b}, context={c}")
    return Calibration(path, tuple(decode), tuple(steps), meta["gpu"], meta["model"], tp,
                       gpu_fit)


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read and validate a calibration file."""
    name = os.fspath(path)
    try:
        doc = json.loads(Path(name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{name}: cannot read the file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{name}: invalid JSON at line {exc.lineno}, column "
                               f"{exc.colno}: {exc.msg}") from None
    return parse_calibration(doc, name)


#: GPUs with a calibration shipped in the package (fitted to public operator profiles by
#: `kvpager calibrate from-profiles`; see docs/cost_model.md to regenerate them).
SHIPPED = {"a100-80gb": "a100-80gb.json", "h100-80gb": "h100-80gb.json"}


def shipped_calibration(gpu: str) -> Calibration:
    """The GPU fit shipped for `gpu` (A100-80GB or H100-80GB), read from package data."""
    name = SHIPPED.get(gpu.lower())
    if name is None:
        raise CalibrationError(f"no shipped calibration for {gpu!r}: have "
                               f"{', '.join(SHIPPED)}")
    return load_calibration(Path(__file__).with_name("calibrations") / name)

