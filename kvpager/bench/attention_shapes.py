"""The decode shapes of the attention benchmark, their byte counts, and their inputs.

One *shape* is one paged-attention decode call of one layer: `batch` sequences of `context`
tokens each, `num_heads` query heads over `num_kv_heads` KV heads of `head_size`, a cache of
`block_size`-token blocks in `dtype` or FP8. Inputs are paged as a serving engine leaves
them: every sequence's blocks are scattered over the cache (a random permutation), so no
kernel can read the cache as one contiguous stream by accident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpager.backends.layout import PARTITION_SIZE

if TYPE_CHECKING:
    import torch

#: --dtype names -> (query / output dtype name, kv_cache_dtype)
DTYPES: dict[str, tuple[str, str]] = {
    "float16": ("float16", "auto"),
    "bfloat16": ("bfloat16", "auto"),
    "fp8": ("float16", "fp8_e4m3"),
    "fp8_e4m3": ("float16", "fp8_e4m3"),
    "fp8_e5m2": ("float16", "fp8_e5m2"),
    "float32": ("float32", "auto"),  # for CPU smoke runs; no GPU serves fp32 caches
}
_ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
#: Random values are generated this many float32 elements at a time (256 MiB).
FILL_CHUNK_ELEMENTS = 2**26


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    context: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    block_size: int
    dtype: str  # a key of DTYPES

    @property
    def query_dtype(self) -> str:
        return DTYPES[self.dtype][0]

    @property
    def kv_cache_dtype(self) -> str:
        return DTYPES[self.dtype][1]

    @property
    def cache_element_bytes(self) -> int:
        return 1 if self.kv_cache_dtype != "auto" else _ELEMENT_BYTES[self.query_dtype]

    @property
    def blocks_per_seq(self) -> int:
        return math.ceil(self.context / self.block_size)

    @property
    def kv_bytes(self) -> int:
        """K and V bytes one call reads: every token of every sequence, every kv head."""
        return 2 * self.batch * self.context * self.num_kv_heads * self.head_size * \
            self.cache_element_bytes

    @property
    def io_bytes(self) -> int:
        """K + V read, query read, output written: the bytes behind the reported GB/s
        (block tables, lengths and v2's partition buffers are not counted)."""
        q_out = 2 * self.batch * self.num_heads * self.head_size * \
            _ELEMENT_BYTES[self.query_dtype]
        return self.kv_bytes + q_out

    @property
    def cache_bytes(self) -> int:
        """Bytes of the paged K and V caches allocated for the call (whole blocks)."""
        return 2 * self.batch * self.blocks_per_seq * self.block_size * self.num_kv_heads * \
            self.head_size * self.cache_element_bytes

    def as_dict(self) -> dict:
        return {"batch": self.batch, "context": self.context, "num_heads": self.num_heads,
                "num_kv_heads": self.num_kv_heads, "head_size": self.head_size,
                "block_size": self.block_size, "dtype": self.query_dtype,
                "kv_cache_dtype": self.kv_cache_dtype}


@dataclass
class DecodeInputs:
    """Arguments of one paged_attention call, plus v2's workspace, on one device."""

    shape: DecodeShape
    query: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    scale: float
    k_scale: float
    v_scale: float
    out: torch.Tensor
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    def args(self) -> tuple:
        """vLLM's arguments after `out` (v1) / after `out, exp_sums, max_logits, tmp_out`."""
        s = self.shape
        return (self.query, self.key_cache, self.value_cache, s.num_kv_heads, self.scale,
                self.block_tables, self.seq_lens, s.block_size, s.context, None,
                s.kv_cache_dtype, self.k_scale, self.v_scale)


def make_inputs(shape: DecodeShape, device: torch.device | str, *, seed: int = 0
                ) -> DecodeInputs:
    """Random inputs with scattered blocks. FP8 caches hold N(0, 1) / scale, quantized."""
    import torch

    from kvpager.backends.fp8 import quantize
    from kvpager.backends.layout import allocate_kv_cache, v2_workspace

    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, shape.query_dtype)
    num_blocks = shape.batch * shape.blocks_per_seq
    key_cache, value_cache = allocate_kv_cache(
        num_blocks, shape.num_kv_heads, shape.head_size, shape.block_size, dtype=dtype,
        kv_cache_dtype=shape.kv_cache_dtype, device=device)
    k_scale, v_scale = (0.5, 0.25) if shape.kv_cache_dtype != "auto" else (1.0, 1.0)
    chunk = max(1, FILL_CHUNK_ELEMENTS // key_cache[0].numel())  # blocks per fill step
    for cache, scale in ((key_cache, k_scale), (value_cache, v_scale)):
        for first in range(0, num_blocks, chunk):  # float32 temporaries of <= 256 MiB
            part = cache[first:first + chunk]
            values = torch.randn(part.shape, generator=gen, device=device)
            part.copy_(quantize(values, scale, shape.kv_cache_dtype)
                       if shape.kv_cache_dtype != "auto" else values.to(dtype))
    order = torch.randperm(num_blocks, generator=gen, device=device)
    block_tables = order.to(torch.int32).reshape(shape.batch, shape.blocks_per_seq)
    seq_lens = torch.full((shape.batch,), shape.context, dtype=torch.int32, device=device)
    query = torch.randn(shape.batch, shape.num_heads, shape.head_size, generator=gen,
                        device=device).to(dtype)
    workspace = v2_workspace(shape.batch, shape.num_heads, shape.head_size, shape.context,
                             dtype=dtype, device=device)
    return DecodeInputs(shape, query, key_cache, value_cache, block_tables, seq_lens,
                        1.0 / math.sqrt(shape.head_size), k_scale, v_scale,
                        torch.empty_like(query), workspace)


def contiguous_kv(inputs: DecodeInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The same keys and values as dense [batch, kv_heads, context, head_size] tensors in the
    query dtype (FP8 dequantized): what `scaled_dot_product_attention` reads."""
    import torch

    from kvpager.backends.fp8 import dequantize

    s = inputs.shape
    ids = inputs.block_tables.long()  # [B, n]
    dtype = inputs.query.dtype
    keys = torch.empty(s.batch, s.num_kv_heads, s.blocks_per_seq * s.block_size, s.head_size,
                       dtype=dtype, device=inputs.query.device)
    values = torch.empty_like(keys)
    for row in range(s.batch):  # one sequence at a time: bounded temporaries
        k = inputs.key_cache[ids[row]]  # [n, K, D // x, bs, x]
        v = inputs.value_cache[ids[row]]  # [n, K, D, bs]
        k = k.permute(1, 0, 3, 2, 4).reshape(s.num_kv_heads, -1, s.head_size)
        v = v.permute(1, 0, 3, 2).reshape(s.num_kv_heads, -1, s.head_size)
        if s.kv_cache_dtype != "auto":
            k = dequantize(k, inputs.k_scale, s.kv_cache_dtype)
            v = dequantize(v, inputs.v_scale, s.kv_cache_dtype)
        keys[row] = k.to(dtype)
        values[row] = v.to(dtype)
    return keys[:, :, : s.context], values[:, :, : s.context]


def default_version(shape: DecodeShape) -> str:
    """The version `kvpager.ops.paged_attention` (vLLM's heuristic) runs for this shape."""
    from kvpager.backends.layout import use_v1

    return "v1" if use_v1(shape.context, shape.batch, shape.num_heads) else "v2"


def partitions(shape: DecodeShape) -> int:
    return math.ceil(shape.context / PARTITION_SIZE)


__all__ = [
    "DTYPES",
    "DecodeInputs",
    "DecodeShape",
    "contiguous_kv",
    "default_version",
    "make_inputs",
    "partitions",
]
