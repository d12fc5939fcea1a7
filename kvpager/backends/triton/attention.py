"""Launchers of the Triton paged-attention kernels: tile configuration, grids, arguments.

Arguments arrive checked by `kvpager.ops` (see `kvpager.backends.attention_checks`): heads
packed in `query` (its sequence stride is free), `out` / v2 buffers contiguous, caches packed
after the block dimension, canonical `kv_cache_dtype`. Shapes as in `kvpager.backends.base`.

Work split (why two variants exist at all):
- v1: grid (num_seqs, num_kv_heads); each program walks its whole sequence. Best when the
  batch alone gives the GPU enough programs, and for short contexts, where v2's second
  kernel and partition buffers would be pure overhead.
- v2: grid (num_seqs, num_kv_heads, max_num_partitions) over 512-token partitions, then
  the reduce on grid (num_seqs, num_heads). At long context and small batch v1 has too few
  programs to fill the GPU's SMs (batch 8 x 8 kv heads = 64 programs on 132 SMs); v2 gives
  every 512 tokens their own program, so the memory system sees enough parallel reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kvpager.backends.layout import PARTITION_SIZE, max_num_partitions
from kvpager.backends.triton import runtime
from kvpager.backends.triton.attention_kernels import (
    paged_attention_kernel,
    reduce_partitions_kernel,
)
from kvpager.backends.triton.fp8_codec import FORMAT_CODES, decode_factor

if TYPE_CHECKING:
    from kvpager.backends.op_args import PagedAttentionArgs, V2Workspace

#: Query-head rows of a `tl.dot`: the smallest MMA tile has 16 rows.
MIN_DOT_ROWS = 16
#: Elements of one K or V tile (HEAD_PAD x TILE). Chosen from ptxas register counts for
#: sm_90 at 4 warps (no GPU was at hand to time them): 4096 two-byte elements keep the dot
#: path at 115-190 registers without spills (two to four programs per SM); the
#: broadcast-and-sum path (MHA) and float32 tiles spill beyond 2048. `tuned()` overrides.
DOT_TILE_ELEMENTS = 4096
SMALL_TILE_ELEMENTS = 2048
MAX_TILE_TOKENS = 128
#: Tokens per tile in the interpreter, where every tile costs ~60 Python-level tensor ops
#: whatever its size: larger tiles keep the CPU tests fast. None: the GPU's choice.
INTERPRETER_TILE_TOKENS: int | None = 256
#: Partitions the reduce reads per step.
REDUCE_CHUNK = 32

_overrides: dict[str, int] = {}


@dataclass(frozen=True)
class AttentionConfig:
    """Compile-time shape of one attention launch (see `attention_kernels`)."""

    head_pad: int
    group: int
    group_pad: int
    tile: int
    use_dot: bool
    dot_f32: bool
    num_warps: int
    num_stages: int


@contextmanager
def tuned(
    *, tile: int | None = None, num_warps: int | None = None, num_stages: int | None = None
) -> Iterator[None]:
    """Override the tile size (tokens), warps and pipeline stages of attention launches made
    inside the block: the benchmark's `--sweep` uses it to time the alternatives on a GPU.

    A tile must be a power of two between 8 and 512; calls whose block size does not divide
    it raise ValueError. Not thread-safe (module state), like any launch configuration knob.
    """
    for name, value, allowed in (("tile", tile, (8, 16, 32, 64, 128, 256, 512)),
                                 ("num_warps", num_warps, (1, 2, 4, 8, 16)),
                                 ("num_stages", num_stages, (1, 2, 3, 4, 5))):
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    before = dict(_overrides)
    _overrides.update({k: v for k, v in (("tile", tile), ("num_warps", num_warps),
                                         ("num_stages", num_stages)) if v is not None})
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(before)


def attention_config(
    head_size: int, block_size: int, num_heads: int, num_kv_heads: int, dtype: torch.dtype,
    *, interpreted: bool,
) -> AttentionConfig:
    """Tile sizes for one call; raises ValueError for a block size the tiles cannot hold.

    TILE is a power of two, a multiple of block_size (tiles hold whole blocks, so a block is
    read with contiguous loads) and a divisor of PARTITION_SIZE (a v2 partition is a whole
    number of tiles).
    """
    if PARTITION_SIZE % block_size or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two dividing {PARTITION_SIZE} for the "
                         f"Triton attention kernels, got {block_size}")
    head_pad = runtime.next_power_of_2(head_size)
    group = num_heads // num_kv_heads
    use_dot = group > 1
    group_pad = max(MIN_DOT_ROWS, runtime.next_power_of_2(group)) if use_dot else 1
    budget = DOT_TILE_ELEMENTS if use_dot and dtype != torch.float32 else SMALL_TILE_ELEMENTS
    tile = max(block_size, min(MAX_TILE_TOKENS, budget // head_pad))
    if interpreted and INTERPRETER_TILE_TOKENS is not None:
        tile = max(block_size, INTERPRETER_TILE_TOKENS)
    tile = _overrides.get("tile", tile)
    if tile % block_size:
        raise ValueError(f"tile must be a multiple of block_size {block_size}, got {tile}")
    return AttentionConfig(
        head_pad=head_pad, group=group, group_pad=group_pad, tile=tile, use_dot=use_dot,
        dot_f32=use_dot and interpreted and dtype == torch.bfloat16,
        num_warps=_overrides.get("num_warps", 8 if group_pad >= 64 else 4),
        num_stages=_overrides.get("num_stages", 2),
    )


def _launch_attention(args: PagedAttentionArgs, workspace: V2Workspace | None) -> None:
    """v1 (no workspace) or v2's partition programs plus the reduce, for one checked call."""
    out, query, key_cache, value_cache = args.out, args.query, args.key_cache, args.value_cache
    block_tables, seq_lens, alibi_slopes = args.block_tables, args.seq_lens, args.alibi_slopes
    num_seqs, num_heads, head_size = query.shape
    if num_seqs == 0 or num_heads == 0:
        return
    num_kv_heads, block_size = args.num_kv_heads, args.block_size
    sliding_step = args.blocksparse_head_sliding_step
    partitioned = workspace is not None
    sparse = args.block_sparse
    group = num_heads // num_kv_heads
    # A sparse pattern that slides with the query head gives the heads of a group different
    # tokens: one program per query head then, so no head multiplies values it skips.
    per_program = 1 if sparse and sliding_step > 0 else group
    cfg = attention_config(head_size, block_size, num_heads, num_heads // per_program,
                           query.dtype, interpreted=runtime.interpreted())
    fmt = FORMAT_CODES[args.kv_cache_dtype]
    device = query.device
    k_arg, k_is_ptr, v_arg, v_is_ptr = runtime.scale_arguments(bool(fmt), args.k_scale,
                                                                args.v_scale, device)
    factor = decode_factor(fmt)
    parts = max_num_partitions(args.max_seq_len) if partitioned else 1
    # Unused pointer arguments get a harmless tensor: one kernel signature for every call.
    exp_sums = out if workspace is None else workspace.exp_sums
    max_logits = out if workspace is None else workspace.max_logits
    tmp_out = out if workspace is None else workspace.tmp_out
    # A float32 placeholder (never read) keeps one pointer type with and without ALiBi.
    alibi = seq_lens.view(torch.float32) if alibi_slopes is None else alibi_slopes
    sinks = seq_lens.view(torch.float32) if args.sinks is None else args.sinks
    window = 0 if args.sliding_window is None else args.sliding_window
    paged_attention_kernel[(num_seqs, num_heads // per_program, parts)](
        out, exp_sums, max_logits, tmp_out,
        query, key_cache, value_cache, block_tables, seq_lens, alibi, sinks,
        k_arg, v_arg, args.scale * factor, factor,
        query.stride(0), key_cache.stride(0), value_cache.stride(0), block_tables.stride(0),
        parts, num_kv_heads, group, per_program, int(alibi_slopes is not None), args.tp_rank,
        args.blocksparse_local_blocks, args.blocksparse_vert_stride if sparse else 1,
        args.blocksparse_block_size, sliding_step, window, int(args.sinks is not None),
        HEAD_SIZE=head_size, HEAD_PAD=cfg.head_pad, BLOCK_SIZE=block_size,
        X=key_cache.shape[4], GROUP_PAD=cfg.group_pad, TILE=cfg.tile,
        PARTITION_SIZE=PARTITION_SIZE, PARTITIONED=partitioned, KV_FP8=fmt,
        K_SCALE_PTR=k_is_ptr, V_SCALE_PTR=v_is_ptr, USE_DOT=cfg.use_dot, DOT_F32=cfg.dot_f32,
        NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if partitioned:
        reduce_partitions_kernel[(num_seqs, num_heads)](
            out, exp_sums, max_logits, tmp_out, seq_lens, sinks, num_heads, parts, window,
            int(args.sinks is not None),
            HEAD_SIZE=head_size, HEAD_PAD=cfg.head_pad, PARTITION_SIZE=PARTITION_SIZE,
            CHUNK=min(REDUCE_CHUNK, runtime.next_power_of_2(parts)), num_warps=4,
        )


def paged_attention_v1(args: PagedAttentionArgs) -> None:
    """One program per (sequence, kv head); writes `out` [S, H, D] only."""
    _launch_attention(args, None)


def paged_attention_v2(args: PagedAttentionArgs) -> None:
    """Partition programs write exp_sums / max_logits [S, H, P] and tmp_out [S, H, P, D] for
    p < ceil(seq_len / 512) (later entries untouched); the reduce then writes `out`."""
    _launch_attention(args, args.v2_workspace())


__all__ = [
    "AttentionConfig",
    "attention_config",
    "paged_attention_v1",
    "paged_attention_v2",
    "tuned",
]
