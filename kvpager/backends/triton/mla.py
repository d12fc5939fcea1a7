"""Launcher of the Triton paged MLA decode kernel (`mla_kernels`): tile sizes and grid.

Arguments arrive checked by `kvpager.ops` (`kvpager.backends.mla_checks`): heads packed in
the query, `out` contiguous, latent rows packed, block ids valid where read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvpager.backends.triton import runtime
from kvpager.backends.triton.mla_kernels import paged_mla_decode_kernel

if TYPE_CHECKING:
    from kvpager.backends.op_args import MLADecodeArgs

#: Query heads per program: the 16 rows of the smallest `tl.dot` tile.
HEAD_BLOCK = 16
#: Tokens per tile on a GPU (a [16, 512] 16-bit latent tile is 16 KiB), and in the
#: interpreter, where every tile costs a fixed number of numpy calls.
GPU_TILE = 16
INTERPRETER_TILE = 128
#: Smallest reduction width of a `tl.dot`.
MIN_DOT_K = 16


def mla_config(kv_lora_rank: int, rope_dim: int, dtype: torch.dtype, *, interpreted: bool
               ) -> dict[str, int | bool]:
    """The kernel's compile-time arguments for one call (and for the compile test)."""
    return {
        "RANK": kv_lora_rank, "ROPE": rope_dim,
        "RANK_PAD": max(MIN_DOT_K, runtime.next_power_of_2(kv_lora_rank)),
        "ROPE_PAD": max(MIN_DOT_K, runtime.next_power_of_2(max(rope_dim, 1))),
        "HAS_ROPE": rope_dim > 0, "HEAD_BLOCK": HEAD_BLOCK,
        "TILE": INTERPRETER_TILE if interpreted else GPU_TILE,
        "FP32_DOT": interpreted or dtype == torch.float32,
    }


def paged_mla_decode(args: MLADecodeArgs) -> None:
    """Grid (num_seqs, ceil(num_heads / 16)); writes `args.out` [S, H, kv_lora_rank]."""
    query, cache = args.query, args.latent_cache
    config = mla_config(args.kv_lora_rank, args.rope_dim, query.dtype,
                        interpreted=runtime.interpreted())
    grid = (args.num_seqs, -(-args.num_heads // HEAD_BLOCK))
    paged_mla_decode_kernel[grid](
        args.out, query, cache, args.block_tables, args.seq_lens, args.scale,
        query.stride(0), cache.stride(0), args.block_tables.stride(0), args.num_heads,
        0 if args.sliding_window is None else args.sliding_window,
        BLOCK_SIZE=args.block_size, **config, num_warps=4 if args.kv_lora_rank <= 128 else 8,
    )


__all__ = ["GPU_TILE", "HEAD_BLOCK", "mla_config", "paged_mla_decode"]
