"""Read public GPU operator profiles (Vidur's `data/profiling/` layout) for calibration.

Layout under DIR (DIR itself, or DIR/vidur):

    compute/<gpu>/<org>/<model>/mlp.csv        per-layer linear and elementwise operators
    network/<gpu>_<topology>/all_reduce.csv    collectives
    legacy/<gpu>/attention.csv                 decode / prefill attention (one model)
    legacy/<gpu>/cpu_overheads.csv             per-iteration CPU work of the engine

Times are milliseconds (the median of each profiled shape is used, robust to outliers);
they are returned in seconds. Every value used is checked: a missing column, a non-numeric
or non-positive time raises ProfileError naming the file, the data row (1 = the first row
after the header) and the column. Only the standard library: the simulator must not need
pandas.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from kvpager.core.errors import KVPagerError

#: kvpager GPU preset -> the profiles' folder name.
PROFILE_GPUS = {"a100-80gb": "a100", "h100-80gb": "h100"}
#: Operators of one layer that the linear term covers, GEMMs first.
GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
LINEAR_OPS = GEMM_OPS + ELEMENTWISE_OPS
SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size",
                 "use_gated_mlp", "num_tokens", "num_tensor_parallel_workers")
CPU_PARTS = ("schedule", "sampler_e2e", "prepare_inputs_e2e", "process_model_outputs")


class ProfileError(KVPagerError, ValueError):
    """A profile folder or file that cannot be used; names the file, row and column."""


@dataclass(frozen=True)
class LayerShape:
    """The shape of one transformer layer as the profiles describe it (before sharding)."""

    hidden: int
    heads: int
    kv_heads: int
    head_size: int
    intermediate: int
    gated: bool


@dataclass(frozen=True)
class LinearRow:
    """One profiled (tokens, tp) point of one model: seconds per operator of one layer."""

    model: str
    shape: LayerShape
    tokens: int
    tp: int
    seconds: dict[str, float]

    @property
    def total(self) -> float:
        """The layer's linear and elementwise seconds (the operators this model has)."""
        return sum(self.seconds.values())


@dataclass(frozen=True)
class CollectiveRow:
    workers: int
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class DecodeRow:
    """Decode attention of one layer: `batch` sequences of `context` tokens each, with the
    per-GPU heads of `shape` at `tp`."""

    shape: LayerShape
    tp: int
    batch: int
    context: int
    seconds: float


@dataclass(frozen=True)
class PrefillRow:
    shape: LayerShape
    tp: int
    chunk: int
    context_before: int
    seconds: float


@dataclass(frozen=True)
class CpuRow:
    model: str
    batch: int
    tp: int
    seconds: float


def profile_root(path: Path) -> Path:
    """DIR or DIR/vidur, whichever holds `compute/`; ProfileError otherwise."""
    for root in (path, path / "vidur"):
        if (root / "compute").is_dir():
            return root
    if not path.exists():
        raise ProfileError(f"{path}: no such directory")
    raise ProfileError(f"{path}: not a profile folder: expected compute/<gpu>/<org>/<model>/"
                       "mlp.csv inside it (or inside its vidur/ folder)")


def gpu_folder(gpu_name: str) -> str:
    """The profiles' folder name of a kvpager GPU preset name."""
    key = gpu_name.lower()
    if key not in PROFILE_GPUS:
        raise ProfileError(f"--gpu: the profiles cover {', '.join(PROFILE_GPUS)}, not "
                           f"{gpu_name!r}")
    return PROFILE_GPUS[key]


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise ProfileError(f"{path}: row 0 (header): column {missing[0]!r}: missing")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}") from None
    if not rows:
        raise ProfileError(f"{path}: no data rows")
    return rows


@overload
def _num(path: Path, k: int, row: dict[str, str], col: str, *, integer: Literal[True],
         positive: bool = True) -> int: ...
@overload
def _num(path: Path, k: int, row: dict[str, str], col: str, *, integer: Literal[False] = False,
         positive: bool = True) -> float: ...
def _num(path: Path, k: int, row: dict[str, str], col: str, *, integer: bool = False,
         positive: bool = True) -> float:
    raw = row.get(col)
    try:
        value = float(raw) if raw not in (None, "") else math.nan
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if ok and integer:
        ok = value == int(value)
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise ProfileError(f"{path}: row {k}: column {col!r}: expected {what} "
                           f"{'> 0' if positive else '>= 0'}, got {raw!r}")
    return int(value) if integer else value


def _bool(path: Path, k: int, row: dict[str, str], col: str) -> bool:
    raw = (row.get(col) or "").strip().lower()
    if raw not in ("true", "false"):
        raise ProfileError(f"{path}: row {k}: column {col!r}: expected True or False, got "
                           f"{row.get(col)!r}")
    return raw == "true"


def _shape(path: Path, k: int, row: dict[str, str], q_head: str = "n_head",
           with_mlp: bool = True) -> LayerShape:
    heads = _num(path, k, row, q_head, integer=True)
    hidden = _num(path, k, row, "n_embd", integer=True)
    if hidden % heads:
        raise ProfileError(f"{path}: row {k}: column 'n_embd': {hidden} is not a multiple of "
                           f"{q_head} = {heads}")
    return LayerShape(
        hidden=hidden, heads=heads, kv_heads=_num(path, k, row, "n_kv_head", integer=True),
        head_size=hidden // heads,
        intermediate=_num(path, k, row, "n_expanded_embd", integer=True) if with_mlp else 0,
        gated=_bool(path, k, row, "use_gated_mlp") if with_mlp else False)


def _median_ms(path: Path, k: int, row: dict[str, str], op: str) -> float:
    return _num(path, k, row, f"time_stats.{op}.median") * 1e-3


def compute_models(root: Path, gpu: str) -> dict[str, Path]:
    """Model name (`org/model`) -> its mlp.csv, for one profile GPU folder."""
    base = root / "compute" / gpu
    if not base.is_dir():
        have = sorted(p.name for p in (root / "compute").iterdir() if p.is_dir())
        raise ProfileError(f"{base}: no compute profiles for this GPU (have: "
                           f"{', '.join(have) or 'none'})")
    found = {f"{p.parent.parent.name}/{p.parent.name}": p for p in sorted(base.glob("*/*/mlp.csv"))}
    if not found:
        raise ProfileError(f"{base}: no <org>/<model>/mlp.csv files")
    return found


def read_linear(path: Path, model: str) -> list[LinearRow]:
    """The rows of one model's mlp.csv. The four GEMMs are required; an elementwise
    operator the model lacks (phi-2 has one norm per layer) is simply absent."""
    cols = tuple(f"time_stats.{op}.median" for op in GEMM_OPS) + SHAPE_COLUMNS
    rows = _rows(path, cols)
    ops = GEMM_OPS + tuple(op for op in ELEMENTWISE_OPS
                           if f"time_stats.{op}.median" in rows[0])
    out = []
    for k, row in enumerate(rows, start=1):
        out.append(LinearRow(
            model=model, shape=_shape(path, k, row),
            tokens=_num(path, k, row, "num_tokens", integer=True),
            tp=_num(path, k, row, "num_tensor_parallel_workers", integer=True),
            seconds={op: _median_ms(path, k, row, op) for op in ops}))
    return out


def read_all_reduce(path: Path) -> list[CollectiveRow]:
    cols = ("time_stats.all_reduce.median", "num_workers", "size")
    return [CollectiveRow(_num(path, k, row, "num_workers", integer=True),
                          _num(path, k, row, "size", integer=True),
                          _median_ms(path, k, row, "all_reduce"))
            for k, row in enumerate(_rows(path, cols), start=1)]


def read_attention(path: Path) -> tuple[list[DecodeRow], list[PrefillRow]]:
    """Decode rows (is_prefill False) and single-sequence prefill rows."""
    cols = ("n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size",
            "prefill_chunk_size", "kv_cache_size", "is_prefill",
            "time_stats.attn_decode.median", "time_stats.attn_prefill.median")
    decode, prefill = [], []
    for k, row in enumerate(_rows(path, cols), start=1):
        shape = _shape(path, k, row, "n_q_head", with_mlp=False)
        tp = _num(path, k, row, "num_tensor_parallel_workers", integer=True)
        if _bool(path, k, row, "is_prefill"):
            if _num(path, k, row, "batch_size", integer=True) != 1:
                continue
            prefill.append(PrefillRow(
                shape, tp, _num(path, k, row, "prefill_chunk_size", integer=True),
                _num(path, k, row, "kv_cache_size", integer=True, positive=False),
                _median_ms(path, k, row, "attn_prefill")))
        else:
            decode.append(DecodeRow(
                shape, tp, _num(path, k, row, "batch_size", integer=True),
                _num(path, k, row, "kv_cache_size", integer=True),
                _median_ms(path, k, row, "attn_decode")))
    return decode, prefill


def read_cpu(path: Path) -> list[CpuRow]:
    """Per-iteration CPU seconds: schedule + prepare inputs + sampler + process outputs."""
    cols = tuple(f"{p}_median" for p in CPU_PARTS) + ("model_name", "batch_size",
                                                     "tensor_parallel_degree")
    out = []
    for k, row in enumerate(_rows(path, cols), start=1):
        secs = sum(_num(path, k, row, f"{p}_median") for p in CPU_PARTS) * 1e-3
        out.append(CpuRow(row["model_name"], _num(path, k, row, "batch_size", integer=True),
                          _num(path, k, row, "tensor_parallel_degree", integer=True), secs))
    return out
