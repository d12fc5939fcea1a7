"""Triton kernels for `convert_vertical_slash_indexes` (both variants).

Same contract as `kvpager.sparse.reference.vertical_slash_blocks` / `..._columns`, whose
docstrings explain the algorithm. Each program owns ``BLOCK_R`` consecutive row blocks of one
(sequence, head): the slash and vertical lists are shared by all rows of a head, so the loops
run over the lists with one scalar load per step while every lane (row) keeps its own merge
state. vLLM's CUDA kernel instead gives one thread one row and merges verticals and slashes in
one interleaved loop; splitting the work in two kernels (blocks, then columns by binary search
in the blocks just written) keeps every loop bound known and avoids reading global memory
written by another thread of the same program.

Uses only Triton 3.0-era language features. Checked under TRITON_INTERPRET=1 on the CPU and
by compiling for sm_80 without a GPU (tests/sparse/test_sparse_triton_compile.py); the
``gpu``-marked tests run them on a CUDA device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R = 32  # row blocks per program: a warp's worth of lanes


@triton.jit
def _blocks_kernel(
    q_seqlens_ptr, kv_seqlens_ptr, slash_ptr, n_slash_ptr,
    block_count_ptr, block_offset_ptr,
    num_heads, rows, nnz_s, capacity,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    q_len = tl.load(q_seqlens_ptr + b)
    kv_len = tl.load(kv_seqlens_ptr + b)
    n_s = tl.load(n_slash_ptr + bh)

    m = tile * BLOCK_R + tl.arange(0, BLOCK_R)
    in_table = m < rows
    start_m = m * BLOCK_M
    valid = in_table & (start_m < q_len)
    # First key position past what the row block's last query may see (causal), or past the
    # keys shifted by the row block's end (not causal): the slash ranges end relative to it.
    frontier = (kv_len - q_len if CAUSAL else kv_len) + start_m + BLOCK_M
    row = bh.to(tl.int64) * rows + m
    out_row = block_offset_ptr + row * capacity

    count = tl.zeros([BLOCK_R], dtype=tl.int32)
    range_end = tl.zeros([BLOCK_R], dtype=tl.int32)
    started = tl.zeros([BLOCK_R], dtype=tl.int32)
    slash_row = slash_ptr + bh.to(tl.int64) * nnz_s
    for j in range(0, n_s):
        s = tl.load(slash_row + j)
        # (`j` broadcast to the lanes first: the interpreter turns scalar-bool & vector-bool
        # into integers, which a store mask refuses.)
        is_last = (frontier * 0 + j) == n_s - 1
        reaches = (s < frontier) | (is_last & (s == frontier))
        applies = valid & reaches  # (no start_m test: see the reference)
        end = tl.maximum(frontier - s, BLOCK_M)
        jump = end > range_end + BLOCK_M
        opens = applies & ((started == 0) | jump)
        grows = applies & (started != 0) & (~jump) & (end > range_end)
        base = tl.where(opens, end - BLOCK_M, range_end)
        for t in tl.static_range(BLOCK_M // BLOCK_N):
            offset = base + t * BLOCK_N
            write = (opens | grows) & (offset < kv_len)
            tl.store(out_row + count, offset, mask=write)
            count += write.to(tl.int32)
        range_end = tl.where(opens, end, tl.where(grows, range_end + BLOCK_M, range_end))
        started = tl.where(applies, 1, started)
    if CAUSAL:
        write = valid & (started == 0) & (frontier < kv_len)
        tl.store(out_row + count, frontier, mask=write)
        count += write.to(tl.int32)
    tl.store(block_count_ptr + row, count, mask=in_table)


@triton.jit
def _columns_kernel(
    q_seqlens_ptr, vertical_ptr, n_vertical_ptr,
    block_count_ptr, block_offset_ptr, column_count_ptr, column_index_ptr,
    num_heads, rows, nnz_v, capacity,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_R: tl.constexpr, SEARCH_STEPS: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // num_heads
    q_len = tl.load(q_seqlens_ptr + b)
    n_v = tl.load(n_vertical_ptr + bh)

    m = tile * BLOCK_R + tl.arange(0, BLOCK_R)
    in_table = m < rows
    valid = in_table & (m * BLOCK_M < q_len)
    row = bh.to(tl.int64) * rows + m
    blocks = block_offset_ptr + row * capacity
    n_blocks = tl.load(block_count_ptr + row, mask=in_table, other=0)
    if CAUSAL:
        last = tl.load(blocks + n_blocks - 1, mask=valid & (n_blocks > 0), other=0)
        limit = tl.where(n_blocks > 0, last + BLOCK_N, 2147483647)
    else:
        limit = tl.full([BLOCK_R], 2147483647, dtype=tl.int32)
    out_row = column_index_ptr + row * nnz_v

    count = tl.zeros([BLOCK_R], dtype=tl.int32)
    vertical_row = vertical_ptr + bh.to(tl.int64) * nnz_v
    for i in range(0, n_v):
        v = tl.load(vertical_row + i)
        # Upper bound: how many of this row's block offsets are <= v.
        lo = tl.zeros([BLOCK_R], dtype=tl.int32)
        hi = n_blocks
        for _ in tl.static_range(SEARCH_STEPS):
            active = lo < hi
            mid = (lo + hi) // 2
            at_mid = tl.load(blocks + mid, mask=valid & active, other=0)
            right = active & (at_mid <= v)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(active & (~right), mid, hi)
        before = tl.load(blocks + lo - 1, mask=valid & (lo > 0), other=0)
        covered = (lo > 0) & (v < before + BLOCK_N)
        keep = valid & (~covered) & (v < limit)
        tl.store(out_row + count, v, mask=keep)
        count += keep.to(tl.int32)
    tl.store(column_count_ptr + row, count, mask=in_table)


def vertical_slash_blocks(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    slash: torch.Tensor,
    n_slash: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> None:
    """Triton twin of `kvpager.sparse.reference.vertical_slash_blocks` (same arguments)."""
    batch, heads, rows, capacity = block_offset.shape
    grid = (triton.cdiv(rows, BLOCK_R), batch * heads)
    _blocks_kernel[grid](
        q_seqlens, kv_seqlens, slash, n_slash, block_count, block_offset,
        heads, rows, slash.shape[2], capacity,
        BLOCK_M=block_size_M, BLOCK_N=block_size_N, CAUSAL=causal, BLOCK_R=BLOCK_R,
        num_warps=1,
    )


def vertical_slash_columns(
    q_seqlens: torch.Tensor,
    vertical: torch.Tensor,
    n_vertical: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    block_size_M: int,
    block_size_N: int,
    causal: bool,
) -> None:
    """Triton twin of `kvpager.sparse.reference.vertical_slash_columns` (same arguments)."""
    batch, heads, rows, capacity = block_offset.shape
    nnz_v = vertical.shape[2]
    if nnz_v == 0:
        return
    grid = (triton.cdiv(rows, BLOCK_R), batch * heads)
    _columns_kernel[grid](
        q_seqlens, vertical, n_vertical, block_count, block_offset, column_count, column_index,
        heads, rows, nnz_v, capacity,
        BLOCK_M=block_size_M, BLOCK_N=block_size_N, CAUSAL=causal, BLOCK_R=BLOCK_R,
        SEARCH_STEPS=max(1, capacity.bit_length()), num_warps=1,
    )
