"""State groups (linear attention, Mamba): a constant-size state per sequence, in whole
pages of the shared pool.

A `StateSpec` group has no block table: each sequence holds `state_pages(spec, page)`
pages of the hybrid manager's one pool (the common page of `page_bytes`), whatever its
length. The page ids live in a 2-D int32 column per state group on the manager's rows
(`state_pages_<g>`, `[rows, P_g]`, -1 for a row without them), so a sequence keeps its
row numbering with every other group.

Sharing: a fork shares the parent's pages (one more reference each, no copy); every step
rewrites a sequence's whole state, so the first append after a fork copies the shared
pages (copy pairs in the append's `copies`, done by the executor before the forward pass),
as copy-on-write does for KV blocks: when all holders of a page write in one step, the
last keeps it (`BlockPool.writes_that_copy`). A truncation cannot roll a recurrent state
back: the hybrid manager refuses it for models with a state group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvpager.core.groups import StateSpec, state_pages
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.seq_store import SequenceStore
from kvpager.core.plans import EMPTY_PAIRS


class StatePages:
    """The state pages of every state group, as columns of `rows` (group 0's table).

    Args:
        rows: the manager's row table.
        specs: the state groups, in order.
        page: bytes of one page of the pool.
    """

    def __init__(self, rows: SequenceStore, specs: Sequence[StateSpec], page: int) -> None:
        self._rows = rows
        self.widths = [state_pages(spec, page) for spec in specs]
        self.names = [f"state_pages_{i}" for i in range(len(specs))]
        for name, width in zip(self.names, self.widths, strict=True):
            rows.add_column(name, np.int32, -1, width=width)
        #: Pages one sequence holds over all state groups.
        self.per_seq = sum(self.widths)

    def pages(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per state group, int32 `[len(rows), P_g]` page ids of `rows` (what an executor
        reads and writes the group's state through)."""
        return tuple(self._rows.column(name)[rows] for name in self.names)

    def held(self, rows: np.ndarray) -> np.ndarray:
        """int32 flat page ids the rows hold (with repeats where forks share)."""
        if not rows.size or not self.names:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([self._rows.column(n)[rows].ravel() for n in self.names])

    # ---- changes (the caller checked that the pool has the pages) ---------------------
    def add(self, row: int, pool: BlockPool) -> None:
        """Fresh pages for a new sequence's state."""
        if not self.per_seq:
            return
        ids = pool.allocate(self.per_seq)
        at = 0
        for name, width in zip(self.names, self.widths, strict=True):
            self._rows.column(name)[row] = ids[at : at + width]
            at += width

    def fork(self, parents: np.ndarray, children: np.ndarray, pool: BlockPool) -> None:
        """Children share their parents' pages (int64 rows, pairwise)."""
        if not self.per_seq or not children.size:
            return
        for name in self.names:
            column = self._rows.column(name)
            column[children] = column[parents]
        pool.share_counted(self.held(parents))

    def writers_that_copy(self, rows: np.ndarray, pool: BlockPool) -> np.ndarray:
        """int64 indices into `rows` (distinct GPU rows writing their state this step, in
        order) whose state pages are shared and must be copied first."""
        if not self.per_seq or not rows.size:
            return np.zeros(0, dtype=np.int64)
        first = self._rows.column(self.names[0])[rows, 0]
        return np.flatnonzero(pool.writes_that_copy(first))

    def copy_on_write(self, rows: np.ndarray, copy: np.ndarray, pool: BlockPool
                      ) -> np.ndarray:
        """Give `rows[copy]` fresh pages in place of their shared ones; int64 `[n, 2]`
        (src, dst) page copies to do before the step writes the states."""
        if not copy.size:
            return EMPTY_PAIRS
        writers = rows[copy]
        old = self.held(writers)
        new = pool.allocate(old.size)
        at = 0
        for name, width in zip(self.names, self.widths, strict=True):
            column = self._rows.column(name)
            src = column[writers].ravel()
            dst = new[at : at + src.size]
            column[writers] = dst.reshape(-1, width)
            at += src.size
        pool.free(old)
        return np.stack([old.astype(np.int64), new.astype(np.int64)], axis=1)

    def free(self, rows: np.ndarray, pool: BlockPool) -> None:
        """Drop the rows' references to their pages (before the rows are removed)."""
        held = self.held(rows)
        if held.size:
            pool.free(held)

    def move(self, rows: np.ndarray, src: BlockPool, dst: BlockPool) -> np.ndarray:
        """Move the rows' pages to `dst` (swap), sharing kept inside the rows; int64
        `[n, 2]` (src, dst) pairs, one per distinct page. The caller checked room."""
        held = self.held(rows)
        if not held.size:
            return EMPTY_PAIRS
        distinct, counts = np.unique(held, return_counts=True)
        new = dst.allocate(distinct.size)
        if (counts > 1).any():
            dst.share(np.repeat(new, counts - 1))
        src.free(held)
        for name in self.names:
            column = self._rows.column(name)
            column[rows] = new[np.searchsorted(distinct, column[rows])]
        return np.stack([distinct.astype(np.int64), new.astype(np.int64)], axis=1)

    def distinct(self, rows: np.ndarray) -> int:
        """Distinct pages the rows hold (what a swap moves)."""
        return int(np.unique(self.held(rows)).size)
