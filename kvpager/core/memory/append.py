"""Appends: the one module that writes a row's blocks and token count as it grows, and `room`.

`set_prompt` fills a new row, `append_one` is the per-sequence decode step that needs no
plan, `plan_append` / `apply_append` are the one implementation behind `append_slots` and
`append_slots_batch`, `shrink` cuts a row back (truncation), and `clear_room` /
`refresh_room` are the only other writers of `room`.

An append of `k` tokens (+ lookahead slots) to a set of rows needs, per row: new blocks
when the tokens outgrow its table, and a copy-on-write copy of every existing block the
write touches that is shared or prefix-cached. `plan_append` works that out for any number
of rows with a fixed number of array operations and changes nothing; `apply_append` carries
a plan out. A single-sequence append is the same plan over one row.

The per-row `room` (see `SequenceStore`) short-cuts the common case: a row whose last block
is its own, uncached and has free slots needs no planning at all, and most decode steps of
most rows are such. Every plan leaves `room` exact for the rows it touched; every other
change of sharing (fork, swap, truncation) zeroes it, which only sends the row back through
the planner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvpager.core.errors import OutOfBlocksError, SequenceTooLongError
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.seq_store import ON_GPU, SequenceStore
from kvpager.core.plans import EMPTY_PAIRS, AppendResult

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class AppendPlan:
    """What an append needs, computed without changing anything.

    rows, ntokens, nblocks: int64 `[B]` rows and their state before the append.
    slow: int64 indices into `rows` of the rows that need planning (the rest only advance
    inside their `room`). extra: int64 new blocks per slow row. cow_*: `[C]` the writes
    that copy first: row, logical block index, shared source block.
    """

    rows: np.ndarray
    num_new_tokens: int
    ntokens: np.ndarray
    nblocks: np.ndarray
    slow: np.ndarray
    extra: np.ndarray
    num_new: int
    cow_rows: np.ndarray
    cow_logical: np.ndarray
    cow_src: np.ndarray

    @property
    def num_blocks(self) -> int:
        """Blocks the append takes from the pool: new blocks plus copies."""
        return self.num_new + int(self.cow_src.size)

    def blocks_per_row(self) -> np.ndarray:
        """int64 `[B]`: blocks each row takes (new blocks plus its copies)."""
        need = np.zeros(self.rows.size, dtype=np.int64)
        if self.slow.size:
            need[self.slow] = self.extra
            if self.cow_rows.size:
                order = np.argsort(self.rows)
                at = order[np.searchsorted(self.rows, self.cow_rows, sorter=order)]
                np.add.at(need, at, 1)
        return need


def plan_append(
    store: SequenceStore, pool: BlockPool, rows: np.ndarray, k: int, lookahead: int,
    block_size: int, max_model_len: int | None,
) -> AppendPlan:
    """Plan `k` new tokens (+ `lookahead` slots) for every row of `rows` (int64, distinct,
    on the GPU: the caller checked); changes nothing.

    Raises:
        SequenceTooLongError: a row would pass `max_model_len`.
    """
    ntokens = store.ntokens.take(rows)
    nblocks = store.nblocks.take(rows)
    if rows.size == 0:
        return AppendPlan(rows, k, ntokens, nblocks, _EMPTY, _EMPTY, 0, _EMPTY, _EMPTY, _EMPTY)
    if max_model_len is not None and k and int(ntokens.max()) + k > max_model_len:
        i = int(np.argmax(ntokens + k > max_model_len))
        raise SequenceTooLongError(
            f"sequence {store.seq_of[int(rows[i])]!r} holds {int(ntokens[i])} tokens: "
            f"{k} more would pass max_model_len={max_model_len}")
    slow = (store.room.take(rows) < k + lookahead).nonzero()[0]
    if slow.size == 0:
        return AppendPlan(rows, k, ntokens, nblocks, _EMPTY, _EMPTY, 0, _EMPTY, _EMPTY, _EMPTY)
    if slow.size == rows.size:
        srows, sn, snb = rows, ntokens, nblocks
    else:
        srows, sn, snb = rows[slow], ntokens[slow], nblocks[slow]
    extra = (sn + (k + lookahead + block_size - 1)) // block_size - snb
    np.maximum(extra, 0, out=extra)
    first = sn // block_size
    if k == 1:  # a decode step: at most one existing block written per row
        exists = first < snb
        crow, clog = srows[exists], first[exists]
    else:  # existing blocks written: logical first .. min(nblocks, end) - 1 per row
        count = np.minimum(snb, (sn + (k + block_size - 1)) // block_size) - first
        np.maximum(count, 0, out=count)
        crow = np.repeat(srows, count)
        clog = np.repeat(first, count) + (
            np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
    if crow.size:
        csrc = store.table.take(crow * store.table.shape[1] + clog)
        copy = pool.writes_that_copy(csrc)
        if copy.any():
            crow, clog, csrc = crow[copy], clog[copy], csrc[copy]
        else:
            crow = clog = csrc = _EMPTY
    else:
        csrc = _EMPTY
    return AppendPlan(rows, k, ntokens, nblocks, slow, extra, int(extra.sum()),
                      crow, clog, csrc)


def apply_append(
    store: SequenceStore, pool: BlockPool, plan: AppendPlan, block_size: int,
    max_model_len: int | None,
) -> AppendResult:
    """Carry out a plan: take blocks, fill tables, advance token counts, keep `room` exact.

    Slots come back row-major (`[B * k]`, each row's `k` in order); copies are int64
    `[C, 2]` (src, dst) to do before the write (a lookahead block with no token yet is
    replaced, not copied).

    Raises:
        OutOfBlocksError: the pool lacks the blocks (nothing changed).
    """
    if plan.num_blocks > pool.num_free:
        raise OutOfBlocksError(pool.device, plan.num_blocks, pool.num_free)
    rows, ntokens, k = plan.rows, plan.ntokens, plan.num_new_tokens
    copies = EMPTY_PAIRS
    if plan.slow.size:
        copies = _take_blocks(store, pool, plan, block_size)
    width = store.table.shape[1]
    if k == 1:
        positions, flat_rows = ntokens, rows
    else:  # row-major [B, k]
        positions = (ntokens[:, None] + np.arange(k)).ravel()
        flat_rows = np.repeat(rows, k)
    slots = store.table.take(flat_rows * width + positions // block_size).astype(np.int64)
    slots *= block_size
    slots += positions % block_size
    after = ntokens + k
    store.ntokens[rows] = after
    if not plan.slow.size:
        store.room[rows] -= k
    elif plan.slow.size == rows.size and k:
        _room_after_write(store, rows, after, block_size, max_model_len)
    else:
        store.room[rows] -= k
        slow = rows[plan.slow]
        if k:
            _room_after_write(store, slow, after[plan.slow], block_size, max_model_len)
        else:
            refresh_room(store, pool, slow, block_size, max_model_len)
    return AppendResult(slots, copies)


def _room_after_write(store: SequenceStore, rows: np.ndarray, ntokens: np.ndarray,
                      block_size: int, max_model_len: int | None) -> None:
    """Room of rows that were just written up to `ntokens`: the block holding their next
    token, when it is not a fresh boundary, is the block they wrote last, which a write
    leaves theirs alone (copied first if it was shared or cached)."""
    room = (block_size - ntokens % block_size) % block_size  # 0 at a block boundary
    if max_model_len is not None:
        np.minimum(room, max_model_len - ntokens, out=room)
    store.room[rows] = room


def _take_blocks(
    store: SequenceStore, pool: BlockPool, plan: AppendPlan, block_size: int
) -> np.ndarray:
    """New blocks and copy-on-write replacements of the slow rows; returns copy pairs."""
    slow = plan.slow
    if slow.size == plan.rows.size:
        rows, nblocks = plan.rows, plan.nblocks
    else:
        rows, nblocks = plan.rows[slow], plan.nblocks[slow]
    extra = plan.extra
    ids = pool.allocate(plan.num_blocks)
    if plan.num_new:
        grown = nblocks + extra
        store.ensure_width(grown.max().item())
        if plan.num_new == rows.size and extra.max().item() == 1:  # the decode step's case
            store.table[rows, nblocks] = ids[: plan.num_new]
        else:
            starts = np.repeat(np.cumsum(extra) - extra, extra)
            cols = np.repeat(nblocks, extra) + (np.arange(plan.num_new) - starts)
            store.table[np.repeat(rows, extra), cols] = ids[: plan.num_new]
        store.nblocks[rows] = grown
    if not plan.cow_src.size:
        return EMPTY_PAIRS
    dst = ids[plan.num_new :]
    store.table[plan.cow_rows, plan.cow_logical] = dst
    pool.free(plan.cow_src)
    has_data = store.ntokens[plan.cow_rows] > plan.cow_logical * block_size
    if not has_data.any():
        return EMPTY_PAIRS
    return np.stack([plan.cow_src[has_data].astype(np.int64),
                     dst[has_data].astype(np.int64)], axis=1)


def refresh_room(
    store: SequenceStore, pool: BlockPool, rows: np.ndarray, block_size: int,
    max_model_len: int | None,
) -> None:
    """Recompute `room` of rows on the GPU: the free slots of the block holding their next
    token, when that block is theirs alone and not cached, capped by `max_model_len`."""
    n = store.ntokens.take(rows)
    offset = n % block_size
    logical = n // block_size
    inside = (offset != 0) & (logical < store.nblocks.take(rows))
    room = np.zeros(rows.size, dtype=np.int64)
    if inside.any():
        at = np.flatnonzero(inside)
        blocks = store.table.take(rows[at] * store.table.shape[1] + logical[at])
        room[at] = np.where(pool.writable(blocks), block_size - offset[at], 0)
    if max_model_len is not None:
        np.minimum(room, max_model_len - n, out=room)
    store.room[rows] = room


def room_after_fresh(num_tokens: int, block_size: int, max_model_len: int | None) -> int:
    """Room of a row whose last block is fresh (its own) and holds
    `num_tokens % block_size` tokens, capped by `max_model_len`."""
    offset = num_tokens % block_size
    room = block_size - offset if offset else 0
    if max_model_len is not None:
        room = min(room, max_model_len - num_tokens)
    return room


def set_prompt(store: SequenceStore, row: int, blocks: np.ndarray, num_tokens: int,
               block_size: int, max_model_len: int | None) -> None:
    """Fill a new row with its prompt's `blocks` (int32, the last one fresh: prefix hits
    stop before the last token, so its free slots are this sequence's to write)."""
    total = blocks.size
    store.ensure_width(total)
    store.table[row, :total] = blocks
    store.nblocks[row] = total
    store.ntokens[row] = num_tokens
    store.room[row] = room_after_fresh(num_tokens, block_size, max_model_len)


def append_one(store: SequenceStore, pool: BlockPool, row: int, block_size: int,
               max_model_len: int | None) -> int | None:
    """The decode step of one GPU row when it needs no plan: returns the new token's slot,
    or None (nothing changed) when the planner must decide (a shared or cached block is
    written, or a lookahead block lies ahead).

    Two cases need none, and they are most steps of most sequences: the next slot is in
    the row's own last block (its `room`, which only a plan sets), or the token starts a
    new block past the row's table, which only takes a free block from the pool (no
    existing block is written, so nothing can need copying). Scalar reads and writes.

    Raises:
        OutOfBlocksError: the pool has no free block (nothing changed).
    """
    bs = block_size
    left = store.room.item(row)
    n = store.ntokens.item(row)
    if left > 0:
        slot = store.table.item(row, n // bs) * bs + n % bs
        store.room[row] = left - 1
    else:
        nb = store.nblocks.item(row)
        if n != nb * bs or store.where.item(row) != ON_GPU or (
                max_model_len is not None and n >= max_model_len):
            return None
        block = pool.allocate(1).item(0)
        if nb + 1 > store.table.shape[1]:
            store.ensure_width(nb + 1)
        store.table[row, nb] = block
        store.nblocks[row] = nb + 1
        store.room[row] = min(bs - 1, max_model_len - n - 1) \
            if max_model_len is not None else bs - 1
        slot = block * bs
    store.ntokens[row] = n + 1
    return slot


def clear_room(store: SequenceStore, rows: np.ndarray | int) -> None:
    """The rows' sharing changed (fork, swap): their next append plans again."""
    store.room[rows] = 0


def shrink(store: SequenceStore, pool: BlockPool, row: int, num_tokens: int,
           block_size: int, max_model_len: int | None, on_gpu: bool) -> None:
    """Cut a row back to its first `num_tokens` (<= what it holds) tokens, releasing the
    blocks past them to `pool` (the row's own) tail first."""
    keep = -(-num_tokens // block_size)
    nb = int(store.nblocks[row])
    if keep < nb:
        pool.free(store.table[row, keep:nb][::-1])
        store.nblocks[row] = keep
    store.ntokens[row] = num_tokens
    if on_gpu:
        refresh_room(store, pool, np.asarray([row], dtype=np.int64), block_size, max_model_len)
    else:
        clear_room(store, row)
