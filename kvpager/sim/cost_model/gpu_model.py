"""Fitted performance curves of one GPU: what a calibration learns from operator profiles.

The curves describe the *GPU*, not a model, so a model without a profile is predicted from
its shape alone:

- GEMM (M tokens x K x N, fp16, per GPU): a smooth maximum of a compute time and a memory
  time plus a launch cost,
      t = launch + (t_c^p + t_m^p)^(1/p),
      t_c = 2 M' K N / (peak x eff),  M' = M rounded up to a multiple of `tile_m`
            (tensor-core tiles compute padded rows: the wave-quantisation step in M),
      t_m = 2 (K N + M K + M N) / bw     (weights, input and output once).
  Five numbers: achieved bandwidth `bw`, compute efficiency `eff`, `launch`, the sharpness
  `p` of the knee between the two regimes, and `tile_m` (one of 16 ... 256).
- Elementwise kernels (norms, rotary, activation, residual add): launch + bytes / bw.
- All-reduce of S bytes over w GPUs: the measured curve (median per size bin), since its
  time depends only on S and w; past the largest size, its last slope.
- Decode attention of one layer, b sequences of c tokens, per GPU: launch + per-sequence
  cost x b + KV bytes read / bw: memory bound, so it generalises to other head layouts
  through the bytes (kv_heads per GPU x head size x 2 (K and V) x 2 bytes x c x b).
- Prefill attention of one chunk: launch + 4 x heads per GPU x head size x pairs / flops.
- CPU overhead per step: a + b x batch (schedule, prepare inputs, sample, process outputs).

`GpuFit.to_doc()` / `GpuFit.from_doc()` are the "gpu_fit" section of a calibration file
(`kvpager.sim.cost_model.calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, fields
from itertools import pairwise

import numpy as np

WEIGHT_BYTES = 2  # the profiles are fp16/bf16


@dataclass(frozen=True)
class GemmCurve:
    bw: float
    eff: float
    launch: float
    sharpness: float
    tile_m: float

    def seconds(self, m: np.ndarray, k: float, n: float, peak: float) -> np.ndarray:
        """Seconds of an (m x k) @ (k x n) GEMM for each m (array)."""
        m = np.asarray(m, dtype=float)
        padded = np.ceil(m / self.tile_m) * self.tile_m
        comp = 2.0 * padded * k * n / (peak * self.eff)
        mem = WEIGHT_BYTES * (k * n + m * k + m * n) / self.bw
        p = self.sharpness
        big = np.maximum(comp, mem)
        return self.launch + big * ((comp / big) ** p + (mem / big) ** p) ** (1.0 / p)


@dataclass(frozen=True)
class StreamCurve:
    """launch + bytes / bw: an elementwise kernel or a decode-attention call."""

    bw: float
    launch: float
    per_item: float = 0.0

    def seconds(self, nbytes: np.ndarray, items: np.ndarray | float = 0.0) -> np.ndarray:
        return self.launch + self.per_item * np.asarray(items, float) + np.asarray(
            nbytes, float) / self.bw


@dataclass(frozen=True)
class LinearCost:
    """a + b x (its argument): all-reduce bytes, prefill FLOPs, CPU batch size."""

    fixed: float
    slope: float

    def seconds(self, x: float) -> float:
        return self.fixed + self.slope * x


@dataclass(frozen=True)
class MeasuredCurve:
    """seconds(x) piecewise linear through measured points (x increasing), extended past
    the last point along the last segment's slope: collectives, whose time depends only on
    the bytes and the GPU count, so measured points apply to every model."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    def seconds(self, x: np.ndarray | float) -> np.ndarray:
        xs, ys = np.asarray(self.x), np.asarray(self.y)
        x = np.asarray(x, float)
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
        return np.where(x > xs[-1], ys[-1] + slope * (x - xs[-1]), np.interp(x, xs, ys))


@dataclass(frozen=True)
class LayerDims:
    """Per-GPU dimensions of one layer at tensor-parallel degree tp."""

    hidden: int
    q: int           # query width per GPU (heads / tp x head size)
    kv: int          # K (or V) width per GPU (replicated heads count once)
    inter: int       # MLP intermediate width per GPU
    gated: bool

    @classmethod
    def of(cls, hidden: int, heads: int, kv_heads: int, head_size: int, intermediate: int,
           gated: bool, tp: int) -> LayerDims:
        return cls(hidden, heads // tp * head_size, max(1, kv_heads // tp) * head_size,
                   intermediate // tp, gated)

    def gemms(self) -> tuple[tuple[float, float], ...]:
        """(K, N) of QKV, output projection, MLP up (gate and up), MLP down."""
        up = (2 if self.gated else 1) * self.inter
        return ((self.hidden, self.q + 2 * self.kv), (self.q, self.hidden),
                (self.hidden, up), (self.inter, self.hidden))

    def elementwise_bytes(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Bytes each elementwise kernel moves (read + write), by the profiles' names."""
        t = np.asarray(tokens, float) * WEIGHT_BYTES
        act_in = (2 if self.gated else 1) * self.inter
        return {"input_layernorm": 2 * t * self.hidden,
                "post_attention_layernorm": 2 * t * self.hidden,
                "attn_rope": 2 * t * (self.q + self.kv),
                "mlp_act": t * (act_in + self.inter),
                "add": 3 * t * self.hidden}


@dataclass(frozen=True)
class GpuFit:
    """Everything fitted for one GPU (see the module docstring)."""

    peak_flops: float
    gemm: GemmCurve
    elementwise: StreamCurve
    decode_attention: StreamCurve | None
    prefill_attention: LinearCost | None
    allreduce: dict[int, MeasuredCurve]
    cpu_overhead: LinearCost | None
    attention_from: str | None = None  # attention measured on another GPU, scaled here

    def layer_seconds(self, dims: LayerDims, tokens: np.ndarray,
                      elementwise: Iterable[str] | None = None) -> np.ndarray:
        """Seconds of the linear and elementwise operators of one layer, per token count
        (`elementwise`: the kernels the model has; default all five of a Llama layer)."""
        tokens = np.asarray(tokens, float)
        t = sum(self.gemm.seconds(tokens, k, n, self.peak_flops) for k, n in dims.gemms())
        sizes = dims.elementwise_bytes(tokens)
        names = sizes if elementwise is None else elementwise
        return np.asarray(t + sum(self.elementwise.seconds(sizes[op]) for op in names))

    def head_seconds(self, hidden: int, vocab_per_gpu: int, rows: np.ndarray) -> np.ndarray:
        """The LM head GEMM for `rows` sampled positions (zero rows cost nothing)."""
        rows = np.asarray(rows, float)
        return np.where(rows > 0, self.gemm.seconds(np.maximum(rows, 1), hidden, vocab_per_gpu,
                                                    self.peak_flops), 0.0)

    def to_doc(self) -> dict:
        doc = {"peak_flops": self.peak_flops, "gemm": asdict(self.gemm),
               "elementwise": asdict(self.elementwise),
               "allreduce": {str(w): {"x": list(c.x), "y": list(c.y)}
                             for w, c in sorted(self.allreduce.items())}}
        for name in ("decode_attention", "prefill_attention", "cpu_overhead",
                     "attention_from"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value if isinstance(value, str) else asdict(value)
        return doc

    @classmethod
    def from_doc(cls, doc: object, where: str) -> GpuFit:
        """Parse and check the "gpu_fit" section; ValueError names the bad field."""
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected an object")

        def curve(kind: type, name: str, required: bool = True):
            sub = doc.get(name)
            if sub is None and not required:
                return None
            if not isinstance(sub, dict):
                raise ValueError(f"{where}.{name}: expected an object")
            values = {}
            for f in fields(kind):
                v = sub.get(f.name, None if f.default is MISSING else f.default)
                values[f.name] = _positive_number(f"{where}.{name}.{f.name}", v,
                                                  allow_zero=f.name in ("launch", "fixed",
                                                                        "per_item", "slope"))
            return kind(**values)

        peak = _positive_number(f"{where}.peak_flops", doc.get("peak_flops"))
        gemm = curve(GemmCurve, "gemm")
        if gemm.eff > 1.5 or gemm.sharpness < 1:
            raise ValueError(f"{where}.gemm: eff must be <= 1.5 and sharpness >= 1")
        ar = doc.get("allreduce", {})
        if not isinstance(ar, dict):
            raise ValueError(f"{where}.allreduce: expected an object of GPU counts")
        allreduce = {}
        for key, sub in ar.items():
            if not key.isdigit() or int(key) < 2:
                raise ValueError(f"{where}.allreduce: key {key!r}: expected a GPU count >= 2")
            allreduce[int(key)] = _curve(f"{where}.allreduce.{key}", sub)
        source = doc.get("attention_from")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"{where}.attention_from: expected a string, got {source!r}")
        return cls(peak, gemm, curve(StreamCurve, "elementwise"),
                   curve(StreamCurve, "decode_attention", False),
                   curve(LinearCost, "prefill_attention", False), allreduce,
                   curve(LinearCost, "cpu_overhead", False), source)


def _curve(where: str, sub: object) -> MeasuredCurve:
    xs = sub.get("x") if isinstance(sub, dict) else None
    ys = sub.get("y") if isinstance(sub, dict) else None
    if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys) >= 1):
        raise ValueError(f"{where}: expected lists 'x' and 'y' of one length >= 1")
    x = [_positive_number(f"{where}.x[{i}]", v) for i, v in enumerate(xs)]
    y = [_positive_number(f"{where}.y[{i}]", v) for i, v in enumerate(ys)]
    if any(b <= a for a, b in pairwise(x)):
        raise ValueError(f"{where}.x: expected increasing values")
    return MeasuredCurve(tuple(x), tuple(y))


def _positive_number(where: str, value: object, allow_zero: bool = False) -> float:
    number = value if isinstance(value, (int, float)) and type(value) in (int, float) else math.nan
    ok = math.isfinite(number) and (number >= 0 if allow_zero else number > 0)
    if not ok:
        raise ValueError(f"{where}: expected a finite number {'>= 0' if allow_zero else '> 0'}"
                         f", got {value!r}")
    return float(number)
