"""Pure-torch implementations of the sparse index ops: the oracle for the Triton kernels.

These functions assume checked, normalised inputs (see `vertical_slash.py` and `topk.py`)
and write their results into the output tensors they are given, like the Triton launchers
with the same names. They are vectorised over all rows at once and loop only over the
index lists, so they stay usable on the CPU for real shapes, not just in tests.
"""

from __future__ import annotations

import torch

INT32_MAX = 2**31 - 1


def _row_coordinates(
    q_seqlens: torch.Tensor, num_heads: int, rows: int, block_size_M: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per table row (flattened ``[batch * num_heads * rows]``): batch index, start_m, and
    whether the row has any query (``start_m < q_seqlen``)."""
    batch = q_seqlens.shape[0]
    device = q_seqlens.device
    flat = torch.arange(batch * num_heads * rows, device=device)
    b = flat // (num_heads * rows)
    start_m = (flat % rows) * block_size_M
    valid = start_m < q_seqlens.to(torch.int64)[b]
    return b, start_m, valid


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
    """Merge each row block's slash ranges and list the key blocks that tile them.

    q_seqlens, kv_seqlens: int32 ``[batch]``. slash: int32 ``[batch, heads, nnz_s]`` sorted
    descending, real entries first; n_slash: int32 ``[batch, heads]``. Writes block_count
    ``[batch, heads, rows]`` and block_offset ``[batch, heads, rows, capacity]``.

    One pass over the slash lines, all rows at once. A slash ``s`` covers, for the row block
    ending at ``end_m``, the keys ``[e - M, e)`` with ``e = max(E - s, M)`` and ``E`` the
    frontier (``kv - q + end_m`` causal, ``kv + end_m`` not). Ends grow as ``s`` falls. A
    new range opens when ``e`` is more than ``M`` past the current end; otherwise a later end
    grows the range by a whole ``M``. Each opened or grown ``M``-wide piece is emitted at once
    as ``M / N`` blocks (those starting inside the keys), so blocks come out sorted.
    """
    batch, heads, rows, capacity = block_offset.shape
    nnz_s = slash.shape[2]
    big_m, big_n = block_size_M, block_size_N
    b, start_m, valid = _row_coordinates(q_seqlens, heads, rows, big_m)
    kv = kv_seqlens.to(torch.int64)[b]
    end_m = start_m + big_m
    frontier = kv - q_seqlens.to(torch.int64)[b] + end_m if causal else kv + end_m
    bh = torch.arange(batch * heads, device=slash.device).repeat_interleave(rows)
    slash_rows = slash.reshape(batch * heads, nnz_s).to(torch.int64)
    count_rows = n_slash.reshape(batch * heads).to(torch.int64)[bh]

    n_rows = bh.shape[0]
    out = torch.zeros(n_rows, capacity + 1, dtype=torch.int64, device=slash.device)
    trash = torch.full((n_rows,), capacity, dtype=torch.int64, device=slash.device)
    cnt = torch.zeros(n_rows, dtype=torch.int64, device=slash.device)
    range_end = torch.zeros(n_rows, dtype=torch.int64, device=slash.device)
    started = torch.zeros(n_rows, dtype=torch.bool, device=slash.device)

    def emit(offsets: torch.Tensor, mask: torch.Tensor) -> None:
        nonlocal cnt
        slot = torch.where(mask, cnt, trash)
        out.scatter_(1, slot.unsqueeze(1), offsets.unsqueeze(1))
        cnt = cnt + mask.to(torch.int64)

    for j in range(nnz_s):
        s = slash_rows[bh, j]
        in_list = j < count_rows
        # The smallest listed slash that sits exactly on the frontier still counts (vLLM).
        reaches = (s < frontier) | ((j == count_rows - 1) & (s == frontier))
        # (vLLM's kernel, not causal, also stops at the first slash below start_m; such a
        # slash only reaches keys past kv_seqlen, which are never listed, so no test here.)
        applies = in_list & valid & reaches
        end = torch.clamp(frontier - s, min=big_m)
        jump = end > range_end + big_m
        opens = applies & (~started | jump)
        grows = applies & started & ~jump & (end > range_end)
        base = torch.where(opens, end - big_m, range_end)
        for t in range(big_m // big_n):
            offset = base + t * big_n
            emit(offset, (opens | grows) & (offset < kv))
        range_end = torch.where(opens, end, torch.where(grows, range_end + big_m, range_end))
        started |= applies
    if causal:  # a row block no slash reaches gets the (fully masked) block at its frontier
        emit(frontier, valid & ~started & (frontier < kv))

    block_offset.copy_(out[:, :capacity].view(batch, heads, rows, capacity))
    block_count.copy_(cnt.view(batch, heads, rows))


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
    """Keep each vertical index that no listed block covers.

    vertical: int32 ``[batch, heads, nnz_v]`` sorted ascending inside ``[0, kv_seqlen)``,
    real entries first; n_vertical: int32 ``[batch, heads]``. Reads the tables written by
    `vertical_slash_blocks`; writes column_count ``[batch, heads, rows]`` and column_index
    ``[batch, heads, rows, nnz_v]``.

    Because blocks tile the slash ranges exactly (``N`` divides ``M``), "inside a range" is
    "inside a block" for every key below ``kv_seqlen``. Causal, a column must also lie below
    the end of the last block, the end of the last range.
    """
    batch, heads, rows, capacity = block_offset.shape
    nnz_v = vertical.shape[2]
    if nnz_v == 0:
        return
    _, _, valid = _row_coordinates(q_seqlens, heads, rows, block_size_M)
    device = vertical.device
    bh = torch.arange(batch * heads, device=device).repeat_interleave(rows)
    cols = vertical.reshape(batch * heads, nnz_v).to(torch.int64)[bh]
    real = torch.arange(nnz_v, device=device).unsqueeze(0) < (
        n_vertical.reshape(batch * heads).to(torch.int64)[bh].unsqueeze(1)
    )
    count = block_count.reshape(-1).to(torch.int64)
    offsets = block_offset.reshape(-1, capacity).to(torch.int64)
    used = torch.arange(capacity, device=device).unsqueeze(0) < count.unsqueeze(1)
    offsets = torch.where(used, offsets, torch.full_like(offsets, INT32_MAX))

    at_or_below = torch.searchsorted(offsets, cols, right=True)  # blocks starting <= col
    previous = offsets.gather(1, (at_or_below - 1).clamp(min=0))
    covered = (at_or_below > 0) & (cols < previous + block_size_N)
    keep = real & valid.unsqueeze(1) & ~covered
    if causal:
        last = offsets.gather(1, (count - 1).clamp(min=0).unsqueeze(1))
        limit = torch.where(count.unsqueeze(1) > 0, last + block_size_N, INT32_MAX)
        keep &= cols < limit

    n_rows = cols.shape[0]
    out = torch.zeros(n_rows, nnz_v + 1, dtype=torch.int64, device=device)
    slot = torch.where(keep, keep.to(torch.int64).cumsum(1) - 1, nnz_v)
    out.scatter_(1, slot, cols)
    column_index.copy_(out[:, :nnz_v].view(batch, heads, rows, nnz_v))
    column_count.copy_(keep.sum(1).view(batch, heads, rows))


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in ``[0, 2**32)`` whose integer order is the float order of `values`.

    values: any float dtype, converted to float32 (exact for fp16/bf16). The float32 bit
    pattern is flipped so that unsigned comparison orders floats; -0.0 is mapped to +0.0 so
    the two zeros tie, and every NaN gets the largest key (torch.topk also ranks NaN first).
    """
    x = values.to(torch.float32)
    bits = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    negative = bits >= 0x80000000
    keys = torch.where(negative, (~bits) & 0xFFFFFFFF, bits | 0x80000000)
    keys = torch.where(x == 0, torch.full_like(keys, 0x80000000), keys)
    return torch.where(torch.isnan(x), torch.full_like(keys, 0xFFFFFFFF), keys)


def top_k_rows(
    logits: torch.Tensor,
    row_starts: torch.Tensor,
    row_ends: torch.Tensor,
    indices: torch.Tensor,
    num_rows: int,
    top_k: int,
    rows_per_chunk: int = 256,
) -> None:
    """Write, per row, the positions (relative to the row start) of its `top_k` largest logits.

    logits: float ``[>= num_rows, num_cols]`` (any strides); row_starts, row_ends: int64
    ``[num_rows]`` with ``0 <= start`` and ``end <= num_cols``; indices: int32
    ``[>= num_rows, top_k]``. A row with at most `top_k` valid entries lists ``0 .. len - 1``
    then -1 (vLLM's contract). A longer row keeps the `top_k` largest values, ties going to
    the lower position, and lists the kept positions in increasing order. Rows are processed
    `rows_per_chunk` at a time to bound the int64 work tensors.
    """
    device = logits.device
    num_cols = logits.shape[1]
    take = min(top_k, num_cols)
    slots = torch.arange(top_k, device=device).unsqueeze(0)
    position = torch.arange(num_cols, device=device).unsqueeze(0)
    for first in range(0, num_rows, rows_per_chunk):
        last = min(first + rows_per_chunk, num_rows)
        starts = row_starts[first:last].to(torch.int64).unsqueeze(1)
        lengths = (row_ends[first:last].to(torch.int64).unsqueeze(1) - starts).clamp(min=0)
        result = torch.where(slots < lengths, slots, -1)
        long_rows = (lengths > top_k).squeeze(1)
        if bool(long_rows.any()):
            inside = (position >= starts) & (position < starts + lengths)
            # One int64 per entry: key in the high half (shifted to signed), ~position in the
            # low half, so the largest packed values are the largest logits, ties to the
            # lowest position; entries outside the row sort below everything.
            keys = order_keys(logits[first:last]) - 2**31
            packed = (keys << 32) | (0xFFFFFFFF - position)
            packed = torch.where(inside, packed, torch.iinfo(torch.int64).min)
            chosen = torch.topk(packed, take, dim=1, sorted=False).values
            chosen = (0xFFFFFFFF - (chosen & 0xFFFFFFFF)) - starts
            chosen = torch.sort(chosen, dim=1).values
            padded = torch.full_like(result, -1)
            padded[:, :take] = chosen
            result = torch.where(long_rows.unsqueeze(1), padded, result)
        indices[first:last, :top_k].copy_(result)
