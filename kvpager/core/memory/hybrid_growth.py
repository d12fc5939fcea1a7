"""The growth of a `HybridKVCacheManager`'s sequences: one token or a batch step in every
group, with the windows' release and the state groups' copy-on-write.

`GroupedAppends` is a part of `HybridKVCacheManager` (a mixin over the same object, kept in
its own module for size): the batch step plans every group first and checks their pages
summed against the one pool before any group changes; the per-sequence step runs each
group's plan-free step (`append.append_one`) with scalars. See `docs/architecture.md`.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from kvpager.core.errors import OutOfBlocksError
from kvpager.core.groups import ChunkedLocalSpec, SlidingWindowSpec
from kvpager.core.memory.append import append_one, plan_append
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.manager import KVCacheManager, TokenIds
from kvpager.core.memory.prefix_chains import PrefixChains
from kvpager.core.memory.seq_store import SequenceStore
from kvpager.core.memory.state_pages import StatePages
from kvpager.core.memory.window import crossing, due, release, release_row
from kvpager.core.plans import EMPTY_PAIRS, AppendResult

_NO_ROWS = np.zeros(0, dtype=np.int64)


class GroupedAppends:
    """`append_slots`, `append_slots_batch` and `blocks_needed_batch` of the hybrid
    manager (which owns every attribute declared here)."""

    block_size: int
    max_model_len: int | None
    gpu: BlockPool
    num_released_blocks: int
    _managers: list[KVCacheManager]
    _first: KVCacheManager
    _steps: list[tuple[KVCacheManager, SequenceStore, PrefixChains | None]]
    _windows: list[tuple[KVCacheManager, SlidingWindowSpec | ChunkedLocalSpec]]
    _state: StatePages | None
    state_pages_per_seq: int

    def _release(self, rows: np.ndarray, num_tokens: np.ndarray) -> None:
        """Windows release, for each of `rows` (on the GPU), what a query at
        `num_tokens - 1` or later no longer reads."""
        for m, spec in self._windows:
            self.num_released_blocks += release(m.rows, self.gpu, spec, rows, num_tokens,
                                                self.block_size)

    def append_slots(self, seq_id: Hashable, num_new_tokens: int = 1,
                     num_lookahead_slots: int = 0, *, token_ids: TokenIds | None = None
                     ) -> AppendResult:
        """`append_slots_batch` of one sequence; a one-token step with at least two free
        pages per group (the most one step can take) goes through each group's
        per-sequence path."""
        try:
            row = self._first.rows.row_of.get(seq_id)
        except TypeError:  # unhashable: the planned path names the error
            row = None
        if (row is not None and num_new_tokens == 1 and num_lookahead_slots == 0
                and self.gpu.num_free >= 2 * len(self._managers) + self.state_pages_per_seq
                and (token_ids is None or len(token_ids) == 1)):
            return self._append_one(seq_id, row, token_ids)
        rows = self._first.rows_of([seq_id])
        tokens = None
        if token_ids is not None:
            tokens = np.asarray(token_ids, dtype=np.int64)
            if tokens.shape != (num_new_tokens,):
                raise ValueError(f"token_ids has shape {tokens.shape}, expected "
                                 f"({num_new_tokens},)")
        return self.append_slots_batch(rows, num_new_tokens, num_lookahead_slots,
                                       token_ids=tokens)

    def _append_one(self, seq_id: Hashable, row: int, token_ids: TokenIds | None
                    ) -> AppendResult:
        """One token of one sequence in every group (the pool has the two pages per group
        one token can take at most, so the groups cannot run out part way): each group's
        plan-free step (`append.append_one`, scalar), or its own planned append when the
        write needs a copy; then the windows' scalar release test."""
        bs, gpu, limit = self.block_size, self.gpu, self.max_model_len
        slots: list[int] = []
        copies: list[np.ndarray] = []
        for m, store, chains in self._steps:
            slot = append_one(store, gpu, row, bs, limit)
            if slot is None:  # a shared or cached block is written: the group plans
                planned = m.append_slots(seq_id, token_ids=token_ids)
                slots.append(planned.slots.item(0))
                if planned.copies.size:
                    copies.append(planned.copies)
                continue
            slots.append(slot)
            if chains is not None:
                if token_ids is None:
                    chains.end_chain(row)
                else:
                    chains.record_token(row, store.ntokens.item(row) - 1, int(token_ids[0]))
        if self._windows:
            n = self._first.rows.ntokens.item(row)
            for m, spec in self._windows:  # scalar test first: most steps free nothing
                if due(m.rows, spec, row, n, bs):
                    self.num_released_blocks += release_row(m.rows, gpu, spec, row, n, bs)
        state = self._state
        if state is not None:  # every step rewrites the state: copy it if shared
            one = np.asarray([row], dtype=np.int64)
            pairs = state.copy_on_write(one, state.writers_that_copy(one, gpu), gpu)
            if pairs.size:
                copies.append(pairs)
        per_group = tuple([np.array((slot,), dtype=np.int64) for slot in slots])
        return AppendResult(per_group[0], np.concatenate(copies) if copies else EMPTY_PAIRS,
                            per_group)

    def append_slots_batch(self, rows: np.ndarray, num_new_tokens: int = 1,
                           num_lookahead_slots: int = 0, *,
                           token_ids: np.ndarray | None = None) -> AppendResult:
        """A step for every row in every group; checked for all groups first (their
        blocks summed against the shared pool). Slots of group 0 in `slots`, every group's
        in `group_slots`; copies of all groups (page copies) together."""
        rows = np.asarray(rows, dtype=np.int64)
        first = self._first
        tokens = None
        if token_ids is not None:
            tokens = np.asarray(token_ids, dtype=np.int64).reshape(rows.size, -1)
            if tokens.shape[1] != num_new_tokens:
                raise ValueError(f"token_ids must be [{rows.size}, {num_new_tokens}], got "
                                 f"{np.shape(token_ids)}")
        plans = [first.plan(rows, num_new_tokens, num_lookahead_slots)]  # checks the rows
        for m in self._managers[1:]:
            plans.append(plan_append(m.rows, self.gpu, rows, int(num_new_tokens),
                                     int(num_lookahead_slots), self.block_size,
                                     self.max_model_len))
        need = sum(p.num_blocks for p in plans)
        state = self._state
        state_copy = _NO_ROWS
        if state is not None and num_new_tokens:
            state_copy = state.writers_that_copy(rows, self.gpu)
            need += state_copy.size * state.per_seq
        if need > self.gpu.num_free:
            raise OutOfBlocksError("gpu", need, self.gpu.num_free)
        results = [m.apply_plan(p, tokens) for m, p in zip(self._managers, plans, strict=True)]
        if self._windows and rows.size:
            after = plans[0].ntokens + num_new_tokens
            if num_new_tokens == 1:  # a decode step: only rows whose window moved a block
                for m, spec in self._windows:
                    moved = crossing(spec, after, self.block_size)
                    if moved.size:
                        self.num_released_blocks += release(
                            m.rows, self.gpu, spec, rows[moved], after[moved],
                            self.block_size)
            else:  # the step's first query (at the old length) still reads its window
                self._release(rows, plans[0].ntokens + 1)
        copies = [r.copies for r in results if r.copies.size]
        if state_copy.size:
            copies.append(state.copy_on_write(rows, state_copy, self.gpu))  # type: ignore[union-attr]
        return AppendResult(results[0].slots,
                            np.concatenate(copies) if copies else EMPTY_PAIRS,
                            tuple(r.slots for r in results))

    def blocks_needed_batch(self, rows: np.ndarray, num_new_tokens: int = 1,
                            num_lookahead_slots: int = 0) -> np.ndarray:
        """Per-row pages all groups' appends would take, int64 `[len(rows)]`."""
        rows = np.asarray(rows, dtype=np.int64)
        need = sum((m.blocks_needed_batch(rows, num_new_tokens, num_lookahead_slots)
                    for m in self._managers), np.zeros(len(rows), dtype=np.int64))
        if self._state is not None and num_new_tokens:
            need[self._state.writers_that_copy(rows, self.gpu)] += self._state.per_seq
        return need

