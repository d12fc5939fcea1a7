"""Releasing the blocks of a windowed group that no future query can read.

A sliding-window (or chunked local) group's query at position `p` reads keys from
`spec.first_needed(p + 1)` on; positions only grow, so every block wholly before that
position is dead for the sequence. `release` frees such blocks to the pool and writes
`NULL_BLOCK` in their table entries, so the table keeps its positions (logical block `i`
still holds tokens `i * block_size ..`) and a kernel, which never reads outside the window,
never sees a released id. The per-row count of released leading blocks lives in the
group's own row column `released` (registered by `add_released_column`).
"""

from __future__ import annotations

import numpy as np

from kvpager.core.groups import NULL_BLOCK, ChunkedLocalSpec, SlidingWindowSpec
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.seq_store import SequenceStore

WindowSpec = SlidingWindowSpec | ChunkedLocalSpec


def add_released_column(store: SequenceStore) -> None:
    """Register the int32 per-row count of leading blocks released."""
    store.add_column("released", np.int32, 0)


def first_needed_blocks(spec: WindowSpec, num_tokens: np.ndarray, block_size: int
                        ) -> np.ndarray:
    """int64 `[n]`: logical blocks wholly before what a query at `num_tokens - 1` (or
    later) reads."""
    if isinstance(spec, SlidingWindowSpec):
        first = np.maximum(num_tokens - spec.window, 0)
    else:
        first = np.maximum(num_tokens - 1, 0) // spec.chunk * spec.chunk
    return first // block_size


def crossing(spec: WindowSpec, num_tokens: np.ndarray, offset: np.ndarray, block_size: int
             ) -> np.ndarray:
    """int64 indices of rows that grow by one token from `num_tokens` (int64; `offset` is
    `num_tokens % block_size`) at which the first needed position enters a new block: the
    only rows a one-token step can let release anything (a row that is behind, as one
    appended to without `mark_computed`, catches up at its next crossing)."""
    if isinstance(spec, SlidingWindowSpec):  # (n + 1 - W) % block_size == 0
        return (offset == (spec.window - 1) % block_size).nonzero()[0]
    # the query at n starts a chunk whose first block follows the old one
    return (num_tokens % spec.chunk == 0).nonzero()[0]


def crossing_phase(spec: WindowSpec, block_size: int) -> tuple[int, int]:
    """(period, phase): a one-token step to `n` tokens crosses (see `crossing`) when
    `n % period == phase`, the scalar test of a per-sequence step."""
    if isinstance(spec, SlidingWindowSpec):
        return block_size, spec.window % block_size
    return spec.chunk, 1 % spec.chunk


def release(store: SequenceStore, pool: BlockPool, spec: WindowSpec, rows: np.ndarray,
            num_tokens: np.ndarray, block_size: int) -> int:
    """Release, for each of `rows` (int64, on the GPU) whose next query is at
    `num_tokens - 1` or later, the blocks before its window; returns how many entries
    became null. Blocks still shared by a fork keep their other holders' references."""
    dead = np.minimum(first_needed_blocks(spec, num_tokens, block_size),
                      store.nblocks.take(rows))
    done = store.released.take(rows)
    count = dead - done
    todo = (count > 0).nonzero()[0]
    if todo.size == 0:
        return 0
    if todo.size < rows.size:
        r, start, count, dead = rows[todo], done[todo].astype(np.int64), count[todo], dead[todo]
    else:
        r, start = rows, done.astype(np.int64)
    if count.max() == 1:  # a decode step: one block per row
        flat_rows, cols = r, start
    else:
        flat_rows = np.repeat(r, count)
        cols = np.repeat(start, count) + (np.arange(int(count.sum()))
                                          - np.repeat(np.cumsum(count) - count, count))
    table = store.table
    flat = flat_rows * table.shape[1] + cols
    ids = table.take(flat)
    live = ids != NULL_BLOCK  # a prefix hit may have left leading entries null already
    if not live.all():
        ids = ids[live]
    # Reused before other cached blocks, the oldest first: a released block serves only
    # hits that end within a window of it.
    pool.free_released(ids[::-1])
    table.put(flat, NULL_BLOCK)
    store.released[r] = dead
    return int(ids.size)


def release_row(store: SequenceStore, pool: BlockPool, spec: WindowSpec, row: int,
                num_tokens: int, block_size: int) -> int:
    """`release` of one row with scalar reads and writes (a per-sequence step whose
    window crossed a block, `crossing_phase`); returns how many entries became null."""
    if isinstance(spec, SlidingWindowSpec):
        first = max(num_tokens - spec.window, 0)
    else:
        first = max(num_tokens - 1, 0) // spec.chunk * spec.chunk
    dead = min(first // block_size, store.nblocks.item(row))
    done = store.released.item(row)
    table = store.table
    freed = 0
    for col in range(dead - 1, done - 1, -1):  # newest first: the oldest ends frontmost
        block = table.item(row, col)
        if block != NULL_BLOCK:
            pool.free_released_one(block)
            table[row, col] = NULL_BLOCK
            freed += 1
    if dead > done:
        store.released[row] = dead
    return freed


def check_truncate(store: SequenceStore, spec: WindowSpec, row: int, num_tokens: int,
                   block_size: int) -> None:
    """A truncation to `num_tokens` must not need a block already released."""
    need = int(first_needed_blocks(spec, np.asarray([num_tokens]), block_size)[0])
    if need < int(store.released[row]):
        raise ValueError(f"num_tokens={num_tokens}: the {spec.kind} group already released "
                         f"the blocks a query there reads (blocks < {int(store.released[row])}"
                         " are gone); truncate less far")
