"""Triton kernel for per-row top-k (`top_k_per_row_prefill` / `top_k_per_row_decode`).

Same contract as `kvpager.sparse.reference.top_k_rows`. One program per row. Instead of
sorting the row (which would need the whole row in registers), the kernel finds the k-th
largest order key by radix selection: eight passes over the row, each fixing four more bits
of the threshold by counting, for all 16 candidate digits at once, how many keys reach it.
A last pass writes the positions whose key beats the threshold plus the first ties, in
increasing position order, with a running prefix sum as the write cursor. Each pass streams
the row in ``BLOCK``-sized chunks, so any row length works with fixed register use.

Uses only Triton 3.0-era language features. Checked under TRITON_INTERPRET=1 on the CPU and
by compiling for sm_80 without a GPU; the ``gpu``-marked tests run it on a CUDA device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
RADIX_BITS = 4


@triton.jit
def _order_key(x):
    """int64 key in [0, 2**32) ordered like float32 `x`; zeros tie, NaN ranks highest."""
    bits = x.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    key = tl.where(bits >= 0x80000000, (~bits) & 0xFFFFFFFF, bits | 0x80000000)
    key = tl.where(x == 0.0, 0x80000000, key)
    return tl.where(x != x, 0xFFFFFFFF, key)


@triton.jit
def _topk_kernel(
    logits_ptr, stride0, stride1, starts_ptr, ends_ptr, out_ptr, out_stride0, out_stride1,
    top_k,
    BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + row).to(tl.int64)
    end = tl.load(ends_ptr + row).to(tl.int64)
    length = tl.maximum(end - start, 0)
    src = logits_ptr + row * stride0 + start * stride1
    dst = out_ptr + row * out_stride0
    if length <= top_k:
        # vLLM's short-row contract: every position, in order, then -1.
        for slot0 in range(0, top_k, BLOCK):
            slot = slot0 + tl.arange(0, BLOCK)
            tl.store(dst + slot * out_stride1, tl.where(slot < length, slot, -1),
                     mask=slot < top_k)
    else:
        digits = tl.arange(0, 1 << RADIX_BITS).to(tl.int64)
        threshold = tl.zeros([], dtype=tl.int64)
        for step in tl.static_range(32 // RADIX_BITS):
            shift = 32 - RADIX_BITS * (step + 1)
            candidate = threshold + (digits << shift)
            reach = tl.zeros([1 << RADIX_BITS], dtype=tl.int32)
            for first in range(0, length, BLOCK):
                pos = first + tl.arange(0, BLOCK)
                inside = pos < length
                x = tl.load(src + pos * stride1, mask=inside, other=0.0).to(tl.float32)
                key = tl.where(inside, _order_key(x), -1)
                reach += tl.sum((key[:, None] >= candidate[None, :]).to(tl.int32), axis=0)
            # Counts fall as the digit grows; keep the largest digit still reached top_k times.
            best = tl.max(tl.where(reach >= top_k, digits, 0), axis=0)
            threshold = threshold + (best << shift)
        above = tl.zeros([], dtype=tl.int32)
        for first in range(0, length, BLOCK):
            pos = first + tl.arange(0, BLOCK)
            inside = pos < length
            x = tl.load(src + pos * stride1, mask=inside, other=0.0).to(tl.float32)
            key = tl.where(inside, _order_key(x), -1)
            above += tl.sum((key > threshold).to(tl.int32), axis=0)
        ties_wanted = top_k - above
        ties_seen = tl.zeros([], dtype=tl.int32)
        written = tl.zeros([], dtype=tl.int32)
        for first in range(0, length, BLOCK):
            pos = first + tl.arange(0, BLOCK)
            inside = pos < length
            x = tl.load(src + pos * stride1, mask=inside, other=0.0).to(tl.float32)
            key = tl.where(inside, _order_key(x), -1)
            tie = key == threshold
            tie_rank = ties_seen + tl.cumsum(tie.to(tl.int32), axis=0) - 1
            take = (key > threshold) | (tie & (tie_rank < ties_wanted))
            cursor = written + tl.cumsum(take.to(tl.int32), axis=0) - 1
            tl.store(dst + cursor.to(tl.int64) * out_stride1, pos.to(tl.int32), mask=take)
            written += tl.sum(take.to(tl.int32), axis=0)
            ties_seen += tl.sum(tie.to(tl.int32), axis=0)


def top_k_rows(
    logits: torch.Tensor,
    row_starts: torch.Tensor,
    row_ends: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int,
    top_k: int,
) -> None:
    """Triton twin of `kvpager.sparse.reference.top_k_rows` (same arguments)."""
    if num_rows == 0:
        return
    _topk_kernel[(num_rows,)](
        logits, logits.stride(0), logits.stride(1), row_starts, row_ends,
        indices, indices.stride(0), indices.stride(1), top_k,
        BLOCK=BLOCK, RADIX_BITS=RADIX_BITS, num_warps=4,
    )
