"""Straightforward per-row Python statements of what the sparse ops must return.

They share no code with `kvpager.sparse`: plain lists, sets and loops, one row at a time,
written from the contract in the module docstrings (and, for the vertical-slash tables, from
the merge rule of vLLM's kernel: ranges of width M, a new range when the next end is more than
M past the current end, otherwise growth by M).
"""

from __future__ import annotations

import math

import torch


def vertical_slash_row(
    q_len: int,
    kv_len: int,
    vertical: list[int],
    slash: list[int],
    m: int,
    block_m: int,
    block_n: int,
    causal: bool,
) -> tuple[list[int], list[int]] | None:
    """(block offsets, columns) of row block `m`, or None when the row block has no query."""
    start_m, end_m = m * block_m, (m + 1) * block_m
    if start_m >= q_len:
        return None
    frontier = (kv_len - q_len if causal else kv_len) + end_m
    vertical = sorted({v for v in vertical if 0 <= v < kv_len})
    slash = sorted({s for s in slash if s >= 0}, reverse=True)

    # Which slashes take part: those below the frontier (the last listed one may sit on it);
    # not causal, only the first of them may start past the keys (s < start_m).
    used = []
    for j, s in enumerate(slash):
        reaches = s < frontier or (j == len(slash) - 1 and s == frontier)
        if reaches and (causal or not used or s >= start_m):
            used.append(s)
    ranges: list[list[int]] = []
    for s in used:
        end = max(frontier - s, block_m)
        if not ranges or end > ranges[-1][1] + block_m:
            ranges.append([end - block_m, end])
        elif end > ranges[-1][1]:
            ranges[-1][1] += block_m
    if not ranges and causal:
        ranges = [[frontier, frontier + block_n]]

    blocks = [
        start for lo, hi in ranges for start in range(lo, min(hi, kv_len), block_n)
    ]
    inside = set()
    for lo, hi in ranges:
        inside.update(range(lo, hi))
    limit = ranges[-1][1] if causal else math.inf
    columns = [v for v in vertical if v < limit and v not in inside]
    return blocks, columns


def vertical_slash_tables(
    q_seqlens: list[int],
    kv_seqlens: list[int],
    vertical: list[list[list[int]]],
    slash: list[list[list[int]]],
    context_size: int,
    block_m: int,
    block_n: int,
    causal: bool,
) -> dict[tuple[int, int, int], tuple[list[int], list[int]]]:
    """{(b, h, m): (blocks, columns)} for every row block that has a query."""
    rows = -(-context_size // block_m)
    result = {}
    for b, (q_len, kv_len) in enumerate(zip(q_seqlens, kv_seqlens, strict=True)):
        for h in range(len(slash[b])):
            for m in range(rows):
                row = vertical_slash_row(
                    q_len, kv_len, vertical[b][h], slash[b][h], m, block_m, block_n, causal
                )
                if row is not None:
                    result[(b, h, m)] = row
    return result


def listed_keys(
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    b: int,
    h: int,
    m: int,
    block_n: int,
) -> list[int]:
    """Every key position the tables list for row block `m`, with repeats."""
    keys = []
    for i in range(int(block_count[b, h, m])):
        start = int(block_offset[b, h, m, i])
        keys.extend(range(start, start + block_n))
    keys.extend(int(column_index[b, h, m, i]) for i in range(int(column_count[b, h, m])))
    return keys


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax attention in float64, one (batch, head) at a time.

    q: [batch, sq, heads, d]; k, v: [batch, sk, kv_heads, d]; allowed: bool
    [batch, heads, sq, sk]. Returns out [batch, sq, heads, d] (0 where nothing is allowed)
    and lse [batch, heads, sq] (-inf there).
    """
    batch, sq, heads, d = q.shape
    group = heads // k.shape[2]
    out = torch.zeros(batch, sq, heads, d, dtype=torch.float64)
    lse = torch.full((batch, heads, sq), -math.inf, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            qh = q[b, :, h].double()
            kh = k[b, :, h // group].double()
            vh = v[b, :, h // group].double()
            scores = (qh @ kh.T) * scale
            for i in range(sq):
                mask = allowed[b, h, i]
                if not bool(mask.any()):
                    continue
                row = scores[i][mask]
                weights = torch.softmax(row, dim=0)
                out[b, i, h] = weights @ vh[mask]
                lse[b, h, i] = torch.logsumexp(row, dim=0)
    return out, lse


def top_k_row(values: list[float], k: int) -> list[int]:
    """Positions of the k largest values (NaN largest, ties to the lower position), in
    increasing order; ``0..len-1`` then -1 when the row has at most k values."""
    n = len(values)
    if n <= k:
        return list(range(n)) + [-1] * (k - n)

    def rank(i: int) -> tuple[int, float, int]:
        x = values[i]
        if math.isnan(x):
            return (0, 0.0, i)
        return (1, -x, i)

    chosen = sorted(range(n), key=rank)[:k]
    return sorted(chosen)
