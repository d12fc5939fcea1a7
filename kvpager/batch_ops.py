"""Whole-batch operations on the manager's row arrays: a decode step, fork and free.

A decode step runs every iteration for every running sequence, and a step of beam search or
of a busy server forks and frees many sequences at once. These functions do that work with a
fixed number of numpy operations whatever the batch size, with no Python loop over sequences
except for dictionary bookkeeping of ids. Per-block Python work is left to rare events
(evicting cached blocks).

Copy-on-write inside one batch: when all `r` holders of a shared block write into it in the
same step (e.g. every beam of a group), the first `r - 1` of them in batch order copy and the
last keeps the original, exactly what appends one by one would do, so no block is copied
needlessly.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from kvpager.blocks import BlockPool
from kvpager.config import EMPTY_PAIRS, AppendResult
from kvpager.errors import OutOfBlocksError, UnknownSequenceError, WrongDeviceError
from kvpager.seq_store import ON_CPU, ON_GPU, UNUSED, SequenceStore


@dataclass
class DecodePlan:
    """What a decode step needs, computed without changing anything."""

    rows: np.ndarray  # int64 [B]
    num_new_tokens: int  # tokens each row gains
    ntokens: np.ndarray  # int64 [B] tokens before the step
    nblocks: np.ndarray  # int32 [B] blocks before the step
    extra: np.ndarray  # int64 [B] new blocks per row
    num_new: int
    cow_rows: np.ndarray  # int64 [C] rows that copy a block they write (repeats possible)
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
    if _has_repeats(rows, scratch):
        raise ValueError("rows lists a sequence twice")


def _has_repeats(rows: np.ndarray, scratch: np.ndarray) -> bool:
    """Whether `rows` has a repeat, in O(len(rows)): write each position to its row's
    scratch cell; a repeated row keeps only its last position."""
    order = np.arange(rows.size)
    scratch[rows] = order
    return bool((scratch[rows] != order).any())


def plan_decode(
    seqs: SequenceStore,
    gpu: BlockPool,
    rows: np.ndarray,
    k: int,
    lookahead: int,
    block_size: int,
) -> DecodePlan:
    """Plan `k` new tokens (+ lookahead slots) for every row; changes nothing."""
    ntokens = seqs.ntokens.take(rows)
    nblocks = seqs.nblocks.take(rows)
    extra = (ntokens + (k + lookahead + block_size - 1)) // block_size - nblocks
    np.maximum(extra, 0, out=extra)
    first = ntokens // block_size
    if k == 1:  # the common decode step: at most one existing block written per row
        exists = first < nblocks
        if exists.all():
            crow, clog = rows, first
        else:
            crow, clog = rows[exists], first[exists]
    else:  # existing blocks written: logical first .. min(nblocks, end) - 1 per row
        count = np.minimum(nblocks, (ntokens + (k + block_size - 1)) // block_size) - first
        np.maximum(count, 0, out=count)
        crow = np.repeat(rows, count)
        clog = np.repeat(first, count) + (
            np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
    csrc = seqs.table.take(crow * seqs.table.shape[1] + clog)
    ref, cached = gpu._ref, gpu._cached  # friend access: no view per call on the hot path
    must = ref.take(csrc) > 1
    must |= cached.take(csrc)
    if must.any():
        crow, clog, csrc = crow[must], clog[must], csrc[must]
        # As with appends one by one: earlier writers copy, the last one keeps the block.
        uniq, first_rev, writers = np.unique(csrc[::-1], return_index=True, return_counts=True)
        keeps = (ref[uniq] == writers) & ~cached[uniq]
        if keeps.any():
            copy = np.ones(csrc.size, dtype=bool)
            copy[csrc.size - 1 - first_rev[keeps]] = False
            crow, clog, csrc = crow[copy], clog[copy], csrc[copy]
    else:
        crow, clog, csrc = crow[:0], clog[:0], csrc[:0]
    return DecodePlan(rows, k, ntokens, nblocks, extra, int(extra.sum()), crow, clog, csrc)


def blocks_needed(plan: DecodePlan) -> np.ndarray:
    """Per-row blocks the step takes (int64 `[B]`): new blocks plus its copies."""
    need = plan.extra.copy()
    if plan.cow_rows.size:
        order = np.argsort(plan.rows)
        np.add.at(need, order[np.searchsorted(plan.rows, plan.cow_rows, sorter=order)], 1)
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
        if plan.num_new == int(np.count_nonzero(extra)):  # at most one new block per row
            grow = extra > 0
            seqs.table.ravel()[rows[grow] * seqs.table.shape[1] + nblocks[grow]] = (
                ids[: plan.num_new])
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
    width = seqs.table.shape[1]
    if plan.num_new_tokens == 1:
        positions, flat_rows = ntokens, rows
    else:  # row-major [B, k]: each row's k slots in order, then the next row's
        positions = (ntokens[:, None] + np.arange(plan.num_new_tokens)).ravel()
        flat_rows = np.repeat(rows, plan.num_new_tokens)
    slots = seqs.table.take(flat_rows * width + positions // block_size).astype(np.int64)
    slots *= block_size
    slots += positions % block_size
    seqs.ntokens[rows] = ntokens + plan.num_new_tokens
    return AppendResult(slots, copies)


def gather_blocks(seqs: SequenceStore, rows: np.ndarray, tail_first: bool = False) -> np.ndarray:
    """All block ids the rows hold, int32, row by row (each row's tail first if asked)."""
    nblocks = seqs.nblocks[rows]
    width = int(nblocks.max()) if rows.size else 0
    sub = seqs.table[rows, :width]
    mask = np.arange(width)[None, :] < nblocks[:, None]
    if tail_first:
        return sub[:, ::-1][mask[:, ::-1]]
    return sub[mask]


def add_references(pool: BlockPool, blocks: np.ndarray) -> None:
    """One more reference per occurrence in `blocks` (ids in use, repeats allowed)."""
    uniq, counts = np.unique(blocks, return_counts=True)
    pool._ref[uniq] += counts.astype(np.int32)


class BatchMixin:
    """Batched methods of `KVCacheManager` (uses its `_seqs`, pools and prefix-key maps)."""

    def append_slots_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> AppendResult:
        """A decode step for a batch: `num_new_tokens` new slots for every row in `rows`.

        `rows` (int array from `rows_of`) must be distinct sequences on the GPU. Slots come back
        row-major, in `rows` order. Same semantics as `append_slots(seq, num_new_tokens,
        num_lookahead_slots)` applied to each row in turn, done with whole-batch array
        operations. `num_new_tokens > 1` serves multi-step decoding (and lets a simulator
        advance several steps in one call).

        Raises:
            OutOfBlocksError (nothing changed), UnknownSequenceError, WrongDeviceError.
        """
        plan = self._plan_batch(rows, num_new_tokens, num_lookahead_slots)
        if plan is None:
            return AppendResult(np.zeros(0, dtype=np.int64), EMPTY_PAIRS)
        result = apply_decode(self._seqs, self.gpu, plan, self.block_size)
        self.num_cow_copies += result.num_copies
        return result

    def blocks_needed_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> np.ndarray:
        """Per-row GPU blocks `append_slots_batch` would take now, int64 `[len(rows)]`."""
        plan = self._plan_batch(rows, num_new_tokens, num_lookahead_slots)
        return np.zeros(0, dtype=np.int64) if plan is None else blocks_needed(plan)

    def _plan_batch(self, rows: np.ndarray, k: int, lookahead: int) -> DecodePlan | None:
        rows = np.asarray(rows, dtype=np.int64)
        if k < 1 or lookahead < 0:
            raise ValueError(f"num_new_tokens must be >= 1 and num_lookahead_slots >= 0, "
                             f"got {k} and {lookahead}")
        if rows.size == 0:
            return None
        check_rows(self._seqs, rows, self._scratch_for_rows())
        return plan_decode(self._seqs, self.gpu, rows, k, lookahead, self.block_size)

    def fork_many(self, parent_ids: Sequence[Hashable], child_ids: Sequence[Hashable]) -> None:
        """`fork(p, c)` for each pair, with one array operation for all reference counts.

        Raises before changing anything if any parent is unknown, any child exists or is
        listed twice, or the lists differ in length.
        """
        if len(parent_ids) != len(child_ids):
            raise ValueError(f"parent_ids has {len(parent_ids)} ids, child_ids "
                             f"{len(child_ids)}: they must pair up")
        parents = self._seqs.rows(parent_ids)
        for child in child_ids:
            self._seqs.check_new(child)
        if len(set(child_ids)) != len(child_ids):
            raise ValueError("child_ids lists a sequence twice")
        for where in (ON_GPU, ON_CPU):
            on = parents[self._seqs.where[parents] == where]
            if on.size:
                add_references(self._pool_at(where), gather_blocks(self._seqs, on))
        children = self._seqs.add_many(list(child_ids), self._seqs.where[parents])
        width = int(self._seqs.nblocks[parents].max())
        self._seqs.table[children, :width] = self._seqs.table[parents, :width]
        self._seqs.nblocks[children] = self._seqs.nblocks[parents]
        self._seqs.ntokens[children] = self._seqs.ntokens[parents]
        if self._keys:
            for parent, child in zip(parents.tolist(), children.tolist(), strict=True):
                if parent in self._keys:
                    self._keys[child] = self._keys[parent]
                    self._registered[child] = self._registered[parent]

    def free_many(self, seq_ids: Sequence[Hashable]) -> np.ndarray:
        """`free` each sequence, with one array operation per pool; returns int64 token counts.

        Raises before changing anything if any id is unknown or listed twice.
        """
        rows = self._seqs.rows(seq_ids)
        if _has_repeats(rows, self._scratch_for_rows()):
            raise ValueError("seq_ids lists a sequence twice")
        counts = self._seqs.ntokens[rows].copy()
        for where in (ON_GPU, ON_CPU):
            on = rows[self._seqs.where[rows] == where]
            if on.size:
                self._pool_at(where).free(gather_blocks(self._seqs, on, tail_first=True))
        if self._keys:
            for row in rows.tolist():
                self._keys.pop(row, None)
                self._registered.pop(row, None)
        self._seqs.remove_many(rows)
        return counts

    def _scratch_for_rows(self) -> np.ndarray:
        if self._scratch.size < self._seqs.where.size:
            self._scratch = np.zeros(self._seqs.where.size, dtype=np.int64)
        return self._scratch
