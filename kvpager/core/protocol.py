"""The memory-manager interface the scheduler drives: its whole contract, and why.

`KVCacheManager` (paged) implements it; so do the simulator's contiguous baselines, which
reserve one contiguous region per sequence the way pre-paging servers did. Keeping the
scheduler behind this interface is what lets the simulator compare cache strategies under the
*same* scheduling policy: only memory management differs.

Promises every implementation keeps (the scheduler relies on them):

- **Check first.** A call that raises changes nothing. The scheduler catches
  `OutOfBlocksError`, preempts someone and retries; a half-done call would leak blocks.
- **Plans, not memory.** Calls that change tables answer with the work an executor does
  (slots, (src, dst) block pairs); the manager never touches K/V memory, so one manager
  serves an engine and a simulator.
- **Rows are handles.** `rows_of` maps sequence ids to int64 rows for the batched calls,
  valid until the sequence is freed. Batched calls are equivalent to their per-sequence
  forms applied in row order.
- **Computed before shared.** Content is shared between sequences (prefix caching) only
  after `mark_computed` says its KV is written, so no sequence reads KV still being
  written in the same step.

- **One row table.** `rows` is the manager's `kvpager.core.rows.RowTable`: the one owner of
  per-sequence state by row. A row's every column is reset when the row is reused, so no
  layer grows an array of its own indexed by rows or depends on clean-up order. Other
  layers register their own per-row columns on it (`rows.add_column`, e.g. the
  scheduler's per-row stop lengths) and write only those; rows are added and removed only
  by the manager (`allocate`, `fork`, `free`). Read a column afresh after the manager may
  have added rows (growth replaces the arrays).

Reservation hints: `max_tokens` is the most tokens a sequence can reach (prompt plus its
output limit) and `num_seqs` the sequences a request will fork into after its prompt
(parallel samples, beams). A paged manager ignores both, since it allocates on demand and
shares the prompt; a contiguous manager must reserve everything up front.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from kvpager.core.plans import Allocation, AllocStatus, AppendResult
from kvpager.core.rows import RowTable


@runtime_checkable
class KVManager(Protocol):
    """What `Scheduler` needs from a KV memory manager. Block counts are in the manager's
    own allocation unit; the scheduler only compares them with each other."""

    block_size: int
    #: Tokens a sequence may hold at most (None: no limit). The manager owns the limit (it
    #: refuses appends past it); the scheduler reads it here so that the two never disagree.
    max_model_len: int | None

    @property
    def rows(self) -> RowTable:
        """The row table behind `rows_of` (see "One row table" above): register a layer's
        own per-row columns here; never add or remove rows."""
        ...

    @property
    def has_swap_space(self) -> bool:
        """Whether `swap_out` can be used at all (else preemption recomputes)."""
        ...

    def __contains__(self, seq_id: object) -> bool:
        """Whether the manager holds the sequence (on any device)."""
        ...

    def num_free_blocks(self, device: str = "gpu") -> int:
        """Free units of "gpu" or "cpu", for messages and admission heuristics."""
        ...

    def num_tokens(self, seq_id: Hashable) -> int:
        """Tokens the sequence holds: slots written, or written by the step being planned."""
        ...

    def rows_of(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """int64 row handles of live sequences (UnknownSequenceError otherwise)."""
        ...

    def seq_lens(self, rows: np.ndarray) -> np.ndarray:
        """int64 token counts of rows: a copy, safe to keep."""
        ...

    def can_allocate(
        self, num_tokens: int, *, token_ids: Sequence[int] | np.ndarray | None = None,
        block_hashes: Sequence[Hashable] | None = None, max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> AllocStatus:
        """OK if `allocate` with the same arguments would succeed now and leave the
        admission watermark free; LATER if it would after running sequences finish; NEVER if
        it cannot fit even in an empty cache (the scheduler rejects the request)."""
        ...

    def can_allocate_many(
        self, token_counts: Sequence[int], *, max_tokens: int | None = None
    ) -> AllocStatus:
        """`can_allocate` for independent sequences admitted together (a recomputed group,
        which no longer shares its prompt)."""
        ...

    def allocate(
        self, seq_id: Hashable, num_tokens: int | None = None, *,
        token_ids: Sequence[int] | np.ndarray | None = None,
        block_hashes: Sequence[Hashable] | None = None, max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> Allocation:
        """Room for a new sequence's `num_tokens` tokens; `num_cached_tokens` of them already
        hold KV (prefix hits) and need no computing. Raises OutOfBlocksError if it does not
        fit (nothing changed)."""
        ...

    def mark_computed(self, seq_id: Hashable, num_computed_tokens: int) -> int:
        """The first `num_computed_tokens` tokens' KV is written: their full blocks may now be
        shared by content. Returns the blocks newly shared (0 for managers that share none)."""
        ...

    def mark_computed_batch(
        self, rows: np.ndarray, num_computed: np.ndarray | None = None
    ) -> int:
        """`mark_computed` for rows; `num_computed` defaults to all they hold (after a
        decode step)."""
        ...

    def blocks_needed_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> np.ndarray:
        """int64 per-row units `append_slots_batch` would take now; changes nothing."""
        ...

    def append_slots_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0, *,
        token_ids: np.ndarray | None = None,
    ) -> AppendResult:
        """`num_new_tokens` slots for every row (row-major) plus the copies to do before
        writing them; `token_ids` (`[B, k]`, -1 unknown) name the tokens written, so their
        blocks can be shared once computed. Raises OutOfBlocksError (nothing changed)."""
        ...

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """A new sequence holding everything the parent holds (shared where the manager can
        share; a write into a shared block copies it first)."""
        ...

    def fork_many(self, parent_ids: Sequence[Hashable], child_ids: Sequence[Hashable]) -> None:
        """`fork` for pairs at once."""
        ...

    def free(self, seq_id: Hashable) -> int:
        """Drop the sequence; returns the tokens it held (to recompute later)."""
        ...

    def free_many(self, seq_ids: Sequence[Hashable]) -> np.ndarray:
        """`free` for distinct sequences at once; int64 token counts."""
        ...

    def can_swap_out(self, seq_ids: Iterable[Hashable]) -> bool:
        """Whether the whole group fits in the CPU swap area now."""
        ...

    def swap_out(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move a group to the CPU, all or nothing; (gpu, cpu) pairs to copy."""
        ...

    def can_swap_in(self, seq_ids: Iterable[Hashable]) -> AllocStatus:
        """Whether the swapped-out group fits back on the GPU (OK / LATER / NEVER)."""
        ...

    def swap_in(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """Move a swapped-out group back to the GPU, all or nothing; (cpu, gpu) pairs."""
        ...

    def take_host_transfers(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies to and from a host prefix tier planned since the last call: offloads
        (gpu, host) to do first in the step, loads (host, gpu) to do before the forward
        pass. Empty for managers without a tier."""
        ...


@runtime_checkable
class PagedKVManager(KVManager, Protocol):
    """A `KVManager` whose sequences live in blocks a kernel can address: the scheduler puts
    their slot mappings and block tables into `SchedulerOutput` for the executor."""

    def slot_mapping(self, seq_id: Hashable, start: int, end: int) -> np.ndarray:
        """int64 cache slots of positions `start .. end - 1`."""
        ...

    def block_tables_array(
        self, rows: np.ndarray, width: int | None = None, pad: int = 0
    ) -> np.ndarray:
        """int32 `[len(rows), width]` GPU block tables, padded with `pad`."""
        ...

    def block_ids(self, seq_id: Hashable) -> np.ndarray:
        """int32 copy of the sequence's block table (GPU ids while it runs)."""
        ...


@runtime_checkable
class GroupedKVManager(PagedKVManager, Protocol):
    """A `PagedKVManager` of a hybrid model: several KV-cache groups (full attention, a
    window, ...), each with its own block tables and slots, which the executor needs per
    group (`SchedulerOutput.decode_group_block_tables`, `PrefillChunk.group_slots`)."""

    @property
    def num_groups(self) -> int:
        """KV-cache groups; the table and slot methods above are group 0's."""
        ...

    def group_slot_mapping(self, group: int, seq_id: Hashable, start: int,
                           end: int) -> np.ndarray:
        """int64 slots of positions `start .. end - 1` in group `group`'s blocks."""
        ...

    def group_block_tables(self, rows: np.ndarray, pad: int = 0) -> tuple[np.ndarray, ...]:
        """One int32 `[len(rows), width]` table per group."""
        ...

    @property
    def num_state_groups(self) -> int:
        """State groups (linear attention / Mamba): no tables, whole pages per sequence."""
        ...

    def state_pages(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per state group, int32 `[len(rows), P_g]` pages of each row's state."""
        ...
