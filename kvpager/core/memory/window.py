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


def due(store: SequenceStore, spec: WindowSpec, row: int, num_tokens: int,
        block_size: int) -> bool:
    """Scalar test of one row: whether `release` would free anything (a per-sequence
    append asks it every step; it is true once per block)."""
    if isinstance(spec, SlidingWindowSpec):
        first = num_tokens - spec.window
    else:
        first = (num_tokens - 1) // spec.chunk * spec.chunk
    return first > 0 and first // block_size > store.released.item(row)


def release(store: SequenceStore, pool: BlockPool, spec: WindowSpec, rows: np.ndarray,
            num_tokens: np.ndarray, block_size: int) -> int:
    """Release, for each of `rows` (int64, on the GPU) whose next query is at
    `num_tokens - 1` or later, the blocks before its window; returns how many entries
    became null. Blocks still shared by a fork keep their other holders' references."""
    dead = np.minimum(first_needed_blocks(spec, num_tokens, block_size),
                      store.nblocks.take(rows))
    done = store.released.take(rows)
    todo = np.flatnonzero(dead > done)
    if todo.size == 0:
        return 0
    r, start, count = rows[todo], done[todo].astype(np.int64), (dead - done)[todo]
    flat_rows = np.repeat(r, count)
    cols = np.repeat(start, count) + (np.arange(int(count.sum()))
                                      - np.repeat(np.cumsum(count) - count, count))
    ids = store.table[flat_rows, cols]
    live = ids != NULL_BLOCK  # a prefix hit may have left leading entries null already
    # Reused before other cached blocks (`BlockPool.free(first=True)`), the oldest first:
    # a released block serves only hits that end within a window of it.
    pool.free(ids[live][::-1], first=True)
    store.table[flat_rows, cols] = NULL_BLOCK
    store.released[r] = dead[todo]
    return int(live.sum())


def check_truncate(store: SequenceStore, spec: WindowSpec, row: int, num_tokens: int,
                   block_size: int) -> None:
    """A truncation to `num_tokens` must not need a block already released."""
    need = int(first_needed_blocks(spec, np.asarray([num_tokens]), block_size)[0])
    if need < int(store.released[row]):
        raise ValueError(f"num_tokens={num_tokens}: the {spec.kind} group already released "
                         f"the blocks a query there reads (blocks < {int(store.released[row])}"
                         " are gone); truncate less far")
