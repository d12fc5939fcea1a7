"""One decode step for a whole batch: every sequence gets one more token slot.

This is the hot path of a serving loop (it runs every iteration for every running sequence),
so it works on the manager's row arrays with a fixed number of numpy operations whatever the
batch size: no Python loop over sequences. The only per-block Python work is in the rare
events (evicting cached blocks, freeing a copied block's last reference).

Copy-on-write inside one batch: when all `r` holders of a shared block write into it in the
same step (e.g. every beam of a group), `r - 1` of them copy and the last keeps the original,
exactly what sequential appends would do, so no block is copied needlessly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvpager.blocks import BlockPool
from kvpager.config import EMPTY_PAIRS, AppendResult
from kvpager.errors import OutOfBlocksError, UnknownSequenceError, WrongDeviceError
from kvpager.seq_store import ON_GPU, UNUSED, SequenceStore


@dataclass
class DecodePlan:
    """What a decode step needs, computed without changing anything."""

    rows: np.ndarray  # int64 [B]
    ntokens: np.ndarray  # int64 [B] tokens before the step
    nblocks: np.ndarray  # int32 [B] blocks before the step
    extra: np.ndarray  # int64 [B] new blocks per row
    num_new: int
    cow_rows: np.ndarray  # int64 [C] rows that copy their written block
    cow_logical: np.ndarray  # int64 [C] logical index of that block
    cow_src: np.ndarray  # int32 [C] the shared block

    @property
    def num_blocks(self) -> int:
        return self.num_new + int(self.cow_src.size)


def check_rows(seqs: SequenceStore, rows: np.ndarray, scratch: np.ndarray) -> None:
    """Rows must be alive, on the GPU and distinct; `scratch` is int64 `[>= num rows]`."""
    if rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
    if rows.min() < 0 or rows.max() >= seqs.where.size:
        bad = rows[(rows < 0) | (rows >= seqs.where.size)][0]
        raise UnknownSequenceError(f"row {int(bad)} holds no sequence")
    where = seqs.where[rows]
    if (where != ON_GPU).any():
        i = int(np.argmax(where != ON_GPU))
        if where[i] == UNUSED:
            raise UnknownSequenceError(f"row {int(rows[i])} holds no sequence")
        raise WrongDeviceError(
            f"sequence {seqs.seq_of[int(rows[i])]!r} is swapped out to the CPU"
        )
    order = np.arange(rows.size)
    scratch[rows] = order
    if (scratch[rows] != order).any():
        i = int(np.argmax(scratch[rows] != order))
        raise ValueError(f"rows lists sequence {seqs.seq_of[int(rows[i])]!r} twice")


def plan_decode(
    seqs: SequenceStore, gpu: BlockPool, rows: np.ndarray, lookahead: int, block_size: int
) -> DecodePlan:
    ntokens = seqs.ntokens[rows]
    nblocks = seqs.nblocks[rows]
    extra = (ntokens + (block_size + lookahead)) // block_size - nblocks
    np.maximum(extra, 0, out=extra)
    logical = ntokens // block_size
    exists = logical < nblocks
    crow, clog = rows[exists], logical[exists]
    csrc = seqs.table[crow, clog]
    must = (gpu.ref_counts[csrc] > 1) | gpu.cached_flags[csrc]
    if must.any():
        crow, clog, csrc = crow[must], clog[must], csrc[must]
        uniq, first, writers = np.unique(csrc, return_index=True, return_counts=True)
        keeps = (gpu.ref_counts[uniq] == writers) & ~gpu.cached_flags[uniq]
        if keeps.any():
            copy = np.ones(csrc.size, dtype=bool)
            copy[first[keeps]] = False
            crow, clog, csrc = crow[copy], clog[copy], csrc[copy]
    else:
        crow, clog, csrc = crow[:0], clog[:0], csrc[:0]
    return DecodePlan(rows, ntokens, nblocks, extra, int(extra.sum()), crow, clog, csrc)


def blocks_needed(plan: DecodePlan) -> np.ndarray:
    """Per-row blocks the step takes (int64 `[B]`): new blocks plus its copy, if any."""
    need = plan.extra.copy()
    if plan.cow_rows.size:  # rows are distinct and each copies at most one block
        order = np.argsort(plan.rows)
        need[order[np.searchsorted(plan.rows, plan.cow_rows, sorter=order)]] += 1
    return need


def apply_decode(
    seqs: SequenceStore, gpu: BlockPool, plan: DecodePlan, block_size: int
) -> AppendResult:
    if plan.num_blocks > gpu.num_free:
        raise OutOfBlocksError(gpu.device, plan.num_blocks, gpu.num_free)
    rows, ntokens, nblocks, extra = plan.rows, plan.ntokens, plan.nblocks, plan.extra
    ids = gpu.allocate(plan.num_blocks)
    if plan.num_new:
        seqs.ensure_width(int((nblocks + extra).max()))
        if int(extra.max()) == 1:
            grow = extra > 0
            seqs.table[rows[grow], nblocks[grow]] = ids[: plan.num_new]
        else:
            starts = np.repeat(np.cumsum(extra) - extra, extra)
            cols = np.repeat(nblocks, extra) + (np.arange(plan.num_new) - starts)
            seqs.table[np.repeat(rows, extra), cols] = ids[: plan.num_new]
        seqs.nblocks[rows] = nblocks + extra
    copies = EMPTY_PAIRS
    if plan.cow_src.size:
        dst = ids[plan.num_new :]
        seqs.table[plan.cow_rows, plan.cow_logical] = dst
        gpu.free(plan.cow_src)
        # A block with no token yet (a lookahead block) needs no copy, only replacing.
        has_data = seqs.ntokens[plan.cow_rows] > plan.cow_logical * block_size
        if has_data.any():
            copies = np.stack([plan.cow_src[has_data].astype(np.int64),
                               dst[has_data].astype(np.int64)], axis=1)
    slots = seqs.table[rows, ntokens // block_size].astype(np.int64) * block_size
    slots += ntokens % block_size
    seqs.ntokens[rows] = ntokens + 1
    return AppendResult(slots, copies)
