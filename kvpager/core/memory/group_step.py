"""The one-token step of several KV-cache groups' rows at once, when no group needs a plan.

A hybrid manager's paged groups hold the same rows with the same token counts (every group
sees every append, `docs/architecture.md`), and with one block size their blocks fill at
the same positions. So a decode step shares everything but the tables: the token counts,
the positions' logical blocks and offsets, and the max-length check are worked out once;
each group only reads its `room` (`SequenceStore`), takes a block for each row whose token
starts a fresh block, and looks up its slots. A group whose `room` says a row writes into a
shared or cached block (copy on write) or a lookahead block needs the planner
(`append.plan_append`): these functions then change nothing and return None, and the caller
plans every group (`hybrid_growth`).

`step_rows` is the batch form (a fixed number of array operations per group); it checks
every group before changing any, so a group can never be left a token ahead of another.
`step_row` is the per-sequence form (scalar reads and writes), which advances the groups
that need no plan and leaves the others to the caller's planner (whose pool check it made
first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvpager.core.errors import OutOfBlocksError
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.seq_store import ON_GPU, SequenceStore


def step_rows(stores: Sequence[SequenceStore], pool: BlockPool, rows: np.ndarray,
              block_size: int, max_model_len: int | None, reserve: int = 0
              ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray] | None:
    """One token for every row of `rows` (int64, distinct, on the GPU: checked by the
    caller) in every group's store, or None (nothing changed) when some group needs a plan
    or a row would pass `max_model_len` (the planner names the error).

    Returns (per group int64 `[len(rows)]` slots, int64 `[len(rows)]` token counts before
    the step, and those counts `% block_size`). Blocks of all groups come from `pool` in
    one `allocate`; raises OutOfBlocksError (nothing changed) when the pool lacks them plus
    `reserve` more (what the caller takes after, as state copies).
    """
    bs = block_size
    ntokens = stores[0].ntokens.take(rows)
    if max_model_len is not None and int(ntokens.max()) >= max_model_len:
        return None
    shift = bs.bit_length() - 1
    if bs == 1 << shift:  # a power of two (the usual block size): shifts, not divisions
        logical = ntokens >> shift
        offset = ntokens & (bs - 1)
    else:
        logical = ntokens // bs
        offset = ntokens - logical * bs
    # Check every group first: each row with no room must start a fresh block (it holds
    # exactly `nblocks * block_size` tokens), which no other holder can be reading.
    plans: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    total = 0
    for store in stores:
        room = store.room.take(rows)
        slow = (room == 0).nonzero()[0]
        if slow.size:
            srows = rows.take(slow)
            nblocks = store.nblocks.take(srows)
            if (ntokens.take(slow) != nblocks * bs).any():
                return None  # a write into an existing (maybe shared) block: plan it
            total += slow.size
        else:
            srows = nblocks = slow
        plans.append((room, slow, srows, nblocks))
    if total + reserve > pool.num_free:
        raise OutOfBlocksError(pool.device, total + reserve, pool.num_free)
    ids = pool.allocate(total) if total else slow
    after = ntokens + 1
    # A slow row's new block is at its `logical`, so the widest table needed is the
    # largest `logical` + 1 (a row at that `logical` without room is a slow row).
    top = int(logical.max()) + 1 if total else 0
    slots: list[np.ndarray] = []
    flat = rows
    width = -1
    taken = 0
    for store, (room, slow, srows, nblocks) in zip(stores, plans, strict=True):
        room -= 1
        if slow.size:
            if top > store.table.shape[1]:
                store.ensure_width(top)
            store.table[srows, nblocks] = ids[taken : taken + slow.size]
            taken += slow.size
            store.nblocks[srows] = nblocks + 1
            if max_model_len is None:
                room[slow] = bs - 1
            else:
                room[slow] = np.minimum(bs - 1, max_model_len - after.take(slow))
        table = store.table
        if table.shape[1] != width:  # the groups' tables usually share a width
            width = table.shape[1]
            flat = rows * width + logical
        group_slots = table.take(flat).astype(np.int64)
        group_slots *= bs
        group_slots += offset
        slots.append(group_slots)
        store.ntokens[rows] = after
        store.room[rows] = room
    return slots, ntokens, offset


def step_row(stores: Sequence[SequenceStore], pool: BlockPool, row: int, block_size: int,
             max_model_len: int | None) -> list[int | None] | None:
    """The one-token step of one row in every group's store with scalar reads and writes:
    each group's slot of the row's next token, None for a group that needs a plan (that
    group unchanged: the caller plans it), or None for all (nothing changed) when the row
    would pass `max_model_len`. The caller made sure the pool has a free block for every
    group (OutOfBlocksError otherwise, part way)."""
    bs = block_size
    n = stores[0].ntokens.item(row)
    if max_model_len is not None and n >= max_model_len:
        return None
    logical = n // bs
    offset = n - logical * bs
    slots: list[int | None] = []
    for store in stores:
        left = store.room.item(row)
        if left > 0:  # the next slot is in the row's own last block
            slots.append(store.table.item(row, logical) * bs + offset)
            store.room[row] = left - 1
        elif offset == 0 and store.nblocks.item(row) == logical and (
                store.where.item(row) == ON_GPU):  # a fresh block past the table
            block = pool.allocate(1).item(0)
            if logical + 1 > store.table.shape[1]:
                store.ensure_width(logical + 1)
            store.table[row, logical] = block
            store.nblocks[row] = logical + 1
            store.room[row] = bs - 1 if max_model_len is None else min(
                bs - 1, max_model_len - n - 1)
            slots.append(block * bs)
        else:  # a write into an existing (maybe shared) block: the caller plans it
            slots.append(None)
            continue
        store.ntokens[row] = n + 1
    return slots
