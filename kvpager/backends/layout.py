"""Cache layouts and sizes of vLLM's paged-attention kernels, as constants and helpers.

The key cache splits each head vector into chunks of `x` elements, `x` = 16 bytes / element
size of the cache dtype, and puts the token index *between* chunk and element:

    key_cache   [num_blocks, num_kv_heads, head_size // x, block_size, x]
    value_cache [num_blocks, num_kv_heads, head_size, block_size]

Why: in vLLM's CUDA kernel neighbouring threads read neighbouring tokens, and with this
layout each of them loads one 16-byte vector while the warp's loads stay contiguous. The
value cache puts tokens last because the value pass reduces over tokens. kvpager keeps the
layout so that caches, and code that builds them, are interchangeable with vLLM's.

Only the allocation helpers need torch; the constants and size arithmetic do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpager.backends.fp8 import is_fp8, normalize_kv_cache_dtype

if TYPE_CHECKING:
    import torch

#: Head sizes the attention ops accept (vLLM's kernel instantiations).
HEAD_SIZES: tuple[int, ...] = (32, 64, 80, 96, 112, 120, 128, 192, 256)
#: Block sizes (tokens per block) the attention ops accept.
BLOCK_SIZES: tuple[int, ...] = (8, 16, 32)
#: Names of the query / output dtypes the attention ops accept.
DTYPE_NAMES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: Tokens per partition of `paged_attention_v2`; every block size above divides it.
PARTITION_SIZE = 512
#: `paged_attention` uses v1 only up to this max_seq_len (vLLM's heuristic) ...
V1_MAX_SEQ_LEN = 8192
#: ... and, with more than one partition, only when num_seqs * num_heads exceeds this, i.e.
#: when the batch alone fills the GPU and splitting sequences would not add parallelism.
V1_MIN_SEQS_TIMES_HEADS = 512

_VECTOR_BYTES = 16


def attention_dtypes() -> tuple[torch.dtype, ...]:
    """The torch dtypes of `DTYPE_NAMES` (query, output, and an "auto" cache)."""
    import torch

    return tuple(getattr(torch, name) for name in DTYPE_NAMES)


def x_for(cache_dtype: torch.dtype) -> int:
    """Elements per 16-byte chunk of the key cache: 4 fp32, 8 fp16/bf16, 16 uint8 (FP8)."""
    import torch

    if not isinstance(cache_dtype, torch.dtype):
        raise ValueError(f"cache_dtype must be a torch.dtype, got {cache_dtype!r}")
    size = torch.empty((), dtype=cache_dtype).element_size()
    if _VECTOR_BYTES % size:
        raise ValueError(f"cache_dtype {cache_dtype} has element size {size}, which 16 bytes "
                         f"does not split evenly")
    return _VECTOR_BYTES // size


def cache_dtype_for(kv_cache_dtype: str, dtype: torch.dtype) -> torch.dtype:
    """The element dtype of the cache tensors: `dtype` for "auto", uint8 for FP8."""
    import torch

    return torch.uint8 if is_fp8(kv_cache_dtype) else dtype


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def kv_cache_shapes(
    num_blocks: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    cache_dtype: torch.dtype,
) -> tuple[tuple[int, int, int, int, int], tuple[int, int, int, int]]:
    """(key_cache shape, value_cache shape) for one layer; `cache_dtype` is the element type.

    Raises ValueError when head_size is not a multiple of x (e.g. 120 with an FP8 cache).
    """
    _positive_int("num_blocks", num_blocks)
    _positive_int("num_kv_heads", num_kv_heads)
    _positive_int("head_size", head_size)
    _positive_int("block_size", block_size)
    x = x_for(cache_dtype)
    if head_size % x:
        raise ValueError(f"head_size {head_size} is not a multiple of x={x}, the key-cache "
                         f"chunk of {cache_dtype} (16 bytes / element size)")
    return (
        (num_blocks, num_kv_heads, head_size // x, block_size, x),
        (num_blocks, num_kv_heads, head_size, block_size),
    )


def allocate_kv_cache(
    num_blocks: int,
    num_kv_heads: int,
    head_size: int,
    block_size: int,
    *,
    dtype: torch.dtype,
    kv_cache_dtype: str = "auto",
    device: torch.device | str = "cpu",
    pin_memory: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-filled (key_cache, value_cache) for one layer.

    dtype: the model dtype (used for an "auto" cache); an FP8 cache is uint8 whatever it is.
    pin_memory: page-lock a CPU cache so that `swap_blocks` to and from a GPU is asynchronous.
    Zero bytes decode to 0.0 in every supported format, so a fresh cache holds no NaN.
    """
    import torch

    normalize_kv_cache_dtype(kv_cache_dtype)
    cache_dtype = cache_dtype_for(kv_cache_dtype, dtype)
    key_shape, value_shape = kv_cache_shapes(
        num_blocks, num_kv_heads, head_size, block_size, cache_dtype
    )
    device = torch.device(device)
    if pin_memory and device.type != "cpu":
        raise ValueError(f"pin_memory applies to CPU caches only, got device {device}")
    return (
        torch.zeros(key_shape, dtype=cache_dtype, device=device, pin_memory=pin_memory),
        torch.zeros(value_shape, dtype=cache_dtype, device=device, pin_memory=pin_memory),
    )


def max_num_partitions(max_seq_len: int) -> int:
    """Partitions of `PARTITION_SIZE` tokens that paged_attention_v2 uses for `max_seq_len`."""
    return (max_seq_len + PARTITION_SIZE - 1) // PARTITION_SIZE


def use_v1(max_seq_len: int, num_seqs: int, num_heads: int) -> bool:
    """vLLM's choice between v1 (one pass) and v2 (partitions + reduce).

    v1 when the sequences fit one partition, or when the batch already has enough
    (sequence, head) pairs to fill the GPU; never beyond 8192 tokens, where one thread block
    per (sequence, head) would run too long and v1's shared-memory logits would not fit.
    """
    partitions = max_num_partitions(max_seq_len)
    return max_seq_len <= V1_MAX_SEQ_LEN and (
        partitions == 1 or num_seqs * num_heads > V1_MIN_SEQS_TIMES_HEADS
    )


def v2_workspace(
    num_seqs: int,
    num_heads: int,
    head_size: int,
    max_seq_len: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised (exp_sums, max_logits, tmp_out) for paged_attention_v2.

    exp_sums, max_logits: float32 [num_seqs, num_heads, max_num_partitions];
    tmp_out: `dtype` [num_seqs, num_heads, max_num_partitions, head_size].
    """
    import torch

    parts = max_num_partitions(_positive_int("max_seq_len", max_seq_len))
    shape = (num_seqs, num_heads, parts)
    return (
        torch.empty(shape, dtype=torch.float32, device=device),
        torch.empty(shape, dtype=torch.float32, device=device),
        torch.empty((*shape, head_size), dtype=dtype, device=device),
    )


__all__ = [
    "BLOCK_SIZES",
    "DTYPE_NAMES",
    "HEAD_SIZES",
    "PARTITION_SIZE",
    "V1_MAX_SEQ_LEN",
    "V1_MIN_SEQS_TIMES_HEADS",
    "allocate_kv_cache",
    "attention_dtypes",
    "cache_dtype_for",
    "kv_cache_shapes",
    "max_num_partitions",
    "use_v1",
    "v2_workspace",
    "x_for",
]
