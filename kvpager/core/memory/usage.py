"""Where the KV memory of a paged cache goes: the vLLM paper's breakdown, in slots.

- token states: slots holding a token's KV;
- reserved: allocated slots that a sequence will still fill (the rest of its last block);
- internal fragmentation: allocated slots no token will ever use (the tail of a block past
  the sequence's final length);
- external fragmentation: free slots that cannot be used. Zero for paging: any free block
  serves any sequence. Contiguous allocators report theirs;
- cached: slots of free blocks that still hold prefix-cached content (reference count 0,
  evictable). An allocation may take them, but doing so throws a prefix hit away, so a
  planner reading "free" must not count them as idle memory;
- free: slots of clean blocks.

They sum to the cache's capacity. A block shared by several sequences (fork, prefix cache)
counts once, with the most any of its holders fills or will fill.
"""

from __future__ import annotations

import numpy as np

from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.seq_store import SequenceStore

FIELDS = ("token", "reserved", "internal", "external", "cached", "free")


def paged_breakdown(
    seqs: SequenceStore, pool: BlockPool, block_size: int, rows: np.ndarray,
    final_slots: np.ndarray,
) -> dict[str, int]:
    """Slot counts by kind for a GPU pool and the rows of a manager's store.

    Args:
        rows: int64 rows of the sequences on the GPU (from `rows_of`).
        final_slots: int64 slots each of them will hold at the end (>= its current count).
    """
    bs = block_size
    rows = np.asarray(rows, dtype=np.int64)
    nblocks = seqs.nblocks[rows].astype(np.int64)
    total = int(nblocks.sum())
    token = future_total = 0
    if total:
        owner = np.repeat(np.arange(rows.size), nblocks)
        logical = np.arange(total) - np.repeat(np.cumsum(nblocks) - nblocks, nblocks)
        block = seqs.table[rows[owner], logical]
        start = logical * bs
        held = seqs.ntokens[rows][owner]
        # minimum/maximum rather than clip: np.clip on integers looks up np.iinfo every call
        now = np.minimum(np.maximum(held - start, 0), bs)
        end = np.minimum(np.maximum(np.maximum(final_slots[owner], held) - start, 0), bs)
        if block.size and int(block.min()) < 0:  # released window entries hold nothing
            keep = block >= 0
            block, now, end = block[keep], now[keep], end[keep]
        # a block held once counts its holder's figures; only blocks several rows hold
        # (shared prefixes, forks) need the maximum over holders (ufunc.at is slow)
        shared = np.bincount(block, minlength=pool.num_blocks)[block] > 1
        alone = ~shared
        token, future_total = int(now[alone].sum()), int(end[alone].sum())
        if shared.any():
            held_by = block[shared]
            filled = np.zeros(pool.num_blocks, dtype=np.int64)
            future = np.zeros(pool.num_blocks, dtype=np.int64)
            np.maximum.at(filled, held_by, now[shared])
            np.maximum.at(future, held_by, end[shared])
            token += int(filled.sum())
            future_total += int(future.sum())
    used = pool.num_used
    reserved = future_total - token
    cached = pool.num_evictable * bs
    free = (pool.num_free - pool.num_evictable) * bs
    internal = used * bs - token - reserved
    return {"token": token, "reserved": reserved, "internal": internal, "external": 0,
            "cached": cached, "free": free}
