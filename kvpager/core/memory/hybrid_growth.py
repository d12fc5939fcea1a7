"""The growth of a hybrid manager's sequences: one token or a batch step in every group,
with the windows' release and the state groups' copy-on-write.

`GroupGrowth` is a collaborator of `HybridKVCacheManager`: it is handed the groups'
managers (their public planning API), the shared pool, the windowed groups and the state
pages, and owns one piece of state, the count of released window blocks. Three paths:

- a one-token step where no group writes into a shared or cached block (most decode steps):
  `group_step.step_rows` / `step_row` do every group at once, sharing the token counts,
  positions and checks, so a second group costs only its own table lookups and new blocks;
- otherwise the planned path: every group is planned first (`append.plan_append`), their
  pages summed against the one pool, then each plan applied;
- windows release after each step, testing only the rows whose window just crossed a block
  (`window.crossing`; a per-sequence step tests its one row, `window.crossing_phase`).

See `docs/architecture.md`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from kvpager.core.errors import OutOfBlocksError
from kvpager.core.memory.append import plan_append
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.group_step import step_row, step_rows
from kvpager.core.memory.manager import KVCacheManager, TokenIds
from kvpager.core.memory.seq_store import ON_GPU
from kvpager.core.memory.state_pages import StatePages
from kvpager.core.memory.window import (
    WindowSpec,
    crossing,
    crossing_phase,
    release,
    release_row,
)
from kvpager.core.plans import EMPTY_PAIRS, AppendResult

_NO_ROWS = np.zeros(0, dtype=np.int64)


class GroupGrowth:
    """`append_slots`, `append_slots_batch`, `blocks_needed_batch` and the windows'
    release over a hybrid manager's groups (which keep their rows in step).

    managers: the paged groups' managers over `pool` (group 0 first); windows: the indices
    of the windowed groups with their specs; state: the state groups' pages or None.
    """

    def __init__(self, managers: Sequence[KVCacheManager], pool: BlockPool,
                 windows: Sequence[tuple[int, WindowSpec]], state: StatePages | None,
                 block_size: int, max_model_len: int | None) -> None:
        self._managers = list(managers)
        self._first = self._managers[0]
        self._stores = [m.rows for m in self._managers]
        self._chains = [m.prefix_chains for m in self._managers]
        self._has_chains = any(c is not None for c in self._chains)
        self._windows = [(self._stores[g], spec) for g, spec in windows]
        # the per-sequence step's scalar crossing test of each window
        self._window_phases = [(store, spec, *crossing_phase(spec, block_size))
                               for store, spec in self._windows]
        self._state = state
        self._pool = pool
        self._block_size = block_size
        self._max_model_len = max_model_len
        per_seq = 0 if state is None else state.per_seq
        #: Free pages a one-token step of one sequence can take at most (each group a new
        #: block or a copy, and the state's copies).
        self._one_step_pages = 2 * len(self._managers) + per_seq
        #: Window blocks released so far (to the pool's front, `BlockPool.free_released`).
        self.num_released_blocks = 0

    # ---- release ------------------------------------------------------------------------
    def release(self, rows: np.ndarray, num_tokens: np.ndarray) -> None:
        """Windows release, for each of `rows` (on the GPU), what a query at
        `num_tokens - 1` or later no longer reads."""
        for store, spec in self._windows:
            self.num_released_blocks += release(store, self._pool, spec, rows, num_tokens,
                                                self._block_size)

    def release_computed(self, rows: np.ndarray, num_computed: np.ndarray | None) -> None:
        """After `mark_computed_batch`: windows release, for the rows on the GPU, what the
        query after their first `num_computed` (None: all held) tokens no longer reads."""
        store = self._stores[0]
        gpu = store.where[rows] == ON_GPU
        on = rows[gpu]
        held = store.ntokens[on]
        done = held if num_computed is None else np.minimum(
            np.asarray(num_computed, dtype=np.int64)[gpu], held)
        self.release(on, done)

    def _release_crossing(self, rows: np.ndarray, before: np.ndarray, offset: np.ndarray
                          ) -> None:
        """After a one-token step from `before` tokens (`offset`: `before % block_size`):
        release in the rows whose window just moved past a block (the others free
        nothing)."""
        for store, spec in self._windows:
            moved = crossing(spec, before, offset, self._block_size)
            if moved.size:
                self.num_released_blocks += release(store, self._pool, spec, rows[moved],
                                                    before[moved] + 1, self._block_size)

    # ---- one sequence -------------------------------------------------------------------
    def append_slots(self, seq_id: Hashable, num_new_tokens: int = 1,
                     num_lookahead_slots: int = 0, *, token_ids: TokenIds | None = None
                     ) -> AppendResult:
        """`append_slots_batch` of one sequence (its row checked by group 0)."""
        rows = self._first.rows_of([seq_id])
        tokens = None
        if token_ids is not None:
            tokens = np.asarray(token_ids, dtype=np.int64)
            if tokens.shape != (num_new_tokens,):
                raise ValueError(f"token_ids has shape {tokens.shape}, expected "
                                 f"({num_new_tokens},)")
        return self.append_slots_batch(rows, num_new_tokens, num_lookahead_slots,
                                       token_ids=tokens)

    def append_one(self, seq_id: Hashable, row: int, token_ids: TokenIds | None
                   ) -> AppendResult:
        """One token of the sequence at `row` (`token_ids`: None or its one id) in every
        group: all groups at once when none needs a plan (`group_step.step_row`), else
        group by group; then the windows' scalar crossing test and the state's
        copy-on-write. With fewer free pages than one step can take it goes through the
        planned path, which checks them all first."""
        pool = self._pool
        if pool.num_free < self._one_step_pages:
            return self.append_slots(seq_id, 1, 0, token_ids=token_ids)
        bs = self._block_size
        copies: list[np.ndarray] = []
        stepped = step_row(self._stores, pool, row, bs, self._max_model_len)
        if stepped is None:  # past max_model_len: the planner names the error
            return self.append_slots(seq_id, 1, 0, token_ids=token_ids)
        if self._has_chains or None in stepped:
            slots = self._finish_each(seq_id, row, token_ids, stepped, copies)
        else:
            slots = stepped  # type: ignore[assignment]
        if self._window_phases:
            n = self._stores[0].ntokens.item(row)
            for store, spec, period, phase in self._window_phases:
                if n % period == phase:  # the window entered a new block: release
                    self.num_released_blocks += release_row(store, pool, spec, row, n, bs)
        state = self._state
        if state is not None:  # every step rewrites the state: copy it if shared
            one = np.asarray([row], dtype=np.int64)
            pairs = state.copy_on_write(one, state.writers_that_copy(one, pool), pool)
            if pairs.size:
                copies.append(pairs)
        per_group = tuple([np.array((slot,), dtype=np.int64) for slot in slots])
        return AppendResult(per_group[0], np.concatenate(copies) if copies else EMPTY_PAIRS,
                            per_group)

    def _finish_each(self, seq_id: Hashable, row: int, token_ids: TokenIds | None,
                     stepped: list[int | None], copies: list[np.ndarray]) -> list[int]:
        """Group by group after `step_row`: a group it left (a write into a shared or
        cached block) plans its own append (copy pairs to `copies`); the others record
        the token in their chains."""
        slots: list[int] = []
        for m, store, chains, slot in zip(self._managers, self._stores, self._chains,
                                          stepped, strict=True):
            if slot is None:
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
        return slots

    # ---- a batch ------------------------------------------------------------------------
    def append_slots_batch(self, rows: np.ndarray, num_new_tokens: int = 1,
                           num_lookahead_slots: int = 0, *,
                           token_ids: np.ndarray | None = None) -> AppendResult:
        """A step for every row in every group; checked for all groups first (their
        blocks summed against the shared pool). Slots of group 0 in `slots`, every group's
        in `group_slots`; copies of all groups (page copies) together."""
        rows = np.asarray(rows, dtype=np.int64)
        tokens = None
        if token_ids is not None:
            tokens = np.asarray(token_ids, dtype=np.int64).reshape(rows.size, -1)
            if tokens.shape[1] != num_new_tokens:
                raise ValueError(f"token_ids must be [{rows.size}, {num_new_tokens}], got "
                                 f"{np.shape(token_ids)}")
        if rows.size and _is_int(num_new_tokens, 1) and _is_int(num_lookahead_slots, 0):
            self._stores[0].check_rows(rows, ON_GPU)
            result = self._decode_step(rows, tokens)
            if result is not None:
                return result
        return self._planned(rows, num_new_tokens, num_lookahead_slots, tokens)

    def _decode_step(self, rows: np.ndarray, tokens: np.ndarray | None
                     ) -> AppendResult | None:
        """The one-token step of checked rows when no group needs a plan (None otherwise,
        nothing changed)."""
        pool, state = self._pool, self._state
        state_copy = _NO_ROWS
        reserve = 0
        if state is not None:
            state_copy = state.writers_that_copy(rows, pool)
            reserve = state_copy.size * state.per_seq
        stepped = step_rows(self._stores, pool, rows, self._block_size,
                            self._max_model_len, reserve)
        if stepped is None:
            return None
        slots, before, offset = stepped
        if self._has_chains:
            for chains in self._chains:
                if chains is not None:
                    chains.record_tokens(rows, before, tokens)
        if self._windows:
            self._release_crossing(rows, before, offset)
        copies = EMPTY_PAIRS
        if state_copy.size:
            copies = state.copy_on_write(rows, state_copy, pool)  # type: ignore[union-attr]
        return AppendResult(slots[0], copies, tuple(slots))

    def _planned(self, rows: np.ndarray, num_new_tokens: int, num_lookahead_slots: int,
                 tokens: np.ndarray | None) -> AppendResult:
        """Plan every group (group 0 checks the rows and arguments), sum their pages
        against the pool, then apply each plan."""
        bs, pool = self._block_size, self._pool
        plans = [self._first.plan(rows, num_new_tokens, num_lookahead_slots)]
        for store in self._stores[1:]:
            plans.append(plan_append(store, pool, rows, int(num_new_tokens),
                                     int(num_lookahead_slots), bs, self._max_model_len))
        need = sum(p.num_blocks for p in plans)
        state = self._state
        state_copy = _NO_ROWS
        if state is not None and num_new_tokens:
            state_copy = state.writers_that_copy(rows, pool)
            need += state_copy.size * state.per_seq
        if need > pool.num_free:
            raise OutOfBlocksError("gpu", need, pool.num_free)
        results = [m.apply_plan(p, tokens) for m, p in zip(self._managers, plans, strict=True)]
        if self._windows and rows.size:
            if num_new_tokens == 1:  # a decode step: only rows whose window moved a block
                before = plans[0].ntokens
                self._release_crossing(rows, before, before % bs)
            else:  # the step's first query (at the old length) still reads its window
                self.release(rows, plans[0].ntokens + 1)
        copies = [r.copies for r in results if r.copies.size]
        if state_copy.size:
            copies.append(state.copy_on_write(rows, state_copy, pool))  # type: ignore[union-attr]
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
            need[self._state.writers_that_copy(rows, self._pool)] += self._state.per_seq
        return need


def _is_int(value: object, expected: int) -> bool:
    """Whether `value` is the int `expected` (not a bool or float that compares equal)."""
    return (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            and value == expected)
