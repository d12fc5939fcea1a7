"""Moving a group of sequences between the GPU pool and the CPU swap area.

A group (the beams of one beam search, the samples of one request) moves all or nothing:
running half a group is useless, and its members share blocks, which must stay shared on the
other side so that a swapped group takes no more room than it did.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

from kvpager.blocks import BlockPool
from kvpager.config import AllocStatus
from kvpager.errors import OutOfBlocksError, WrongDeviceError
from kvpager.seq_store import DEVICE_NAMES, ON_CPU, ON_GPU, SequenceStore


def group_rows(seqs: SequenceStore, seq_ids: Iterable[Hashable], where: int) -> np.ndarray:
    """Rows of a group, checked: non-empty, distinct, all on `where`."""
    ids = list(seq_ids)
    if not ids:
        raise ValueError("seq_ids must name at least one sequence")
    rows = seqs.rows(ids)
    if np.unique(rows).size != rows.size:
        raise ValueError(f"seq_ids lists a sequence twice: {ids!r}")
    wrong = seqs.where[rows] != where
    if wrong.any():
        seq = ids[int(np.argmax(wrong))]
        raise WrongDeviceError(
            f"sequence {seq!r} is on the {DEVICE_NAMES[1 - where]}, not the {DEVICE_NAMES[where]}"
        )
    return rows


def distinct_blocks(seqs: SequenceStore, rows: np.ndarray) -> np.ndarray:
    """Sorted distinct block ids referenced by the rows."""
    return np.unique(np.concatenate([seqs.blocks(r) for r in rows.tolist()]))


def move_rows(
    seqs: SequenceStore, rows: np.ndarray, src: BlockPool, dst: BlockPool, where: int
) -> np.ndarray:
    """Give the rows blocks of `dst` in place of their `src` blocks.

    Returns int64 `[num_distinct, 2]` (src_block, dst_block) pairs whose data the executor
    must copy. Each destination block gets as many references as the group held on its source
    block; the source loses exactly those (others outside the group keep theirs).

    Raises:
        OutOfBlocksError: `dst` lacks room (nothing changed).
    """
    refs = np.concatenate([seqs.blocks(r) for r in rows.tolist()])
    distinct, counts = np.unique(refs, return_counts=True)
    if distinct.size > dst.num_free:
        raise OutOfBlocksError(dst.device, int(distinct.size), dst.num_free)
    new = dst.allocate(distinct.size)
    if (counts > 1).any():
        dst.share(np.repeat(new, counts - 1))
    src.free(refs[::-1])
    for r in rows.tolist():
        nb = int(seqs.nblocks[r])
        seqs.table[r, :nb] = new[np.searchsorted(distinct, seqs.table[r, :nb])]
        seqs.where[r] = where
    return np.stack([distinct.astype(np.int64), new.astype(np.int64)], axis=1)


class SwapMixin:
    """Swapping methods of `KVCacheManager` (uses its `_seqs`, `gpu`, `cpu`, `config`)."""

    def can_swap_out(self, seq_ids: Iterable[Hashable]) -> bool:
        """Whether the CPU swap area has room for the group's distinct blocks."""
        rows = group_rows(self._seqs, seq_ids, ON_GPU)
        return self.cpu is not None and distinct_blocks(self._seqs, rows).size <= self.cpu.num_free

    def can_swap_in(self, seq_ids: Iterable[Hashable]) -> AllocStatus:
        """Whether the group's distinct blocks fit back on the GPU (keeping the watermark)."""
        rows = group_rows(self._seqs, seq_ids, ON_CPU)
        need = distinct_blocks(self._seqs, rows).size
        if self.gpu.num_blocks < need:
            return AllocStatus.NEVER
        if self.gpu.num_free - need >= self.config.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    def swap_out(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move a group of sequences to the CPU, all or nothing.

        Returns int64 `[num_blocks, 2]` (gpu_block, cpu_block) pairs to copy, one per distinct
        block: blocks shared inside the group stay shared on the CPU. A GPU block that others
        outside the group still use stays on the GPU for them.
        """
        if self.cpu is None:
            raise ValueError("swap_out: this manager has no CPU swap space (num_cpu_blocks=0)")
        return self._swap(seq_ids, ON_GPU, ON_CPU)

    def swap_in(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move a swapped-out group back to the GPU, all or nothing.

        Returns int64 `[num_blocks, 2]` (cpu_block, gpu_block) pairs to copy.
        """
        if self.cpu is None:
            raise ValueError("swap_in: this manager has no CPU swap space (num_cpu_blocks=0)")
        return self._swap(seq_ids, ON_CPU, ON_GPU)

    def _swap(self, seq_ids: Iterable[Hashable], src: int, dst: int) -> np.ndarray:
        rows = group_rows(self._seqs, seq_ids, src)
        pairs = move_rows(self._seqs, rows, self._pool_at(src), self._pool_at(dst), dst)
        if dst == ON_CPU:
            self.num_blocks_swapped_out += pairs.shape[0]
        else:
            self.num_blocks_swapped_in += pairs.shape[0]
        return pairs
