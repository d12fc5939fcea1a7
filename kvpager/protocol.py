"""The memory-manager interface the scheduler drives.

`KVCacheManager` (paged) implements it; so do the simulator's contiguous baselines, which
reserve one contiguous region per sequence the way pre-paging servers did. Keeping the
scheduler behind this interface is what lets the simulator compare cache strategies under the
*same* scheduling policy: only memory management differs.

Reservation hints: `max_tokens` is the most tokens a sequence can reach (prompt plus its
output limit) and `num_seqs` the sequences a request will fork into after its prompt
(parallel samples, beams). A paged manager ignores both, since it allocates on demand and
shares the prompt; a contiguous manager must reserve everything up front.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from kvpager.config import Allocation, AllocStatus, AppendResult


@runtime_checkable
class KVManager(Protocol):
    """What `Scheduler` needs from a KV memory manager. Block counts are in the manager's
    own allocation unit; the scheduler only compares them with each other."""

    block_size: int

    @property
    def has_swap_space(self) -> bool: ...

    def __contains__(self, seq_id: object) -> bool: ...

    def num_free_blocks(self, device: str = "gpu") -> int: ...

    def num_tokens(self, seq_id: Hashable) -> int: ...

    def rows_of(self, seq_ids: Iterable[Hashable]) -> np.ndarray: ...

    def seq_lens(self, rows: np.ndarray) -> np.ndarray: ...

    def can_allocate(
        self,
        num_tokens: int,
        *,
        token_ids: Sequence[int] | np.ndarray | None = None,
        block_hashes: Sequence[Hashable] | None = None,
        max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> AllocStatus: ...

    def can_allocate_many(
        self, token_counts: Sequence[int], *, max_tokens: int | None = None
    ) -> AllocStatus: ...

    def allocate(
        self,
        seq_id: Hashable,
        num_tokens: int | None = None,
        *,
        token_ids: Sequence[int] | np.ndarray | None = None,
        block_hashes: Sequence[Hashable] | None = None,
        max_tokens: int | None = None,
        num_seqs: int = 1,
    ) -> Allocation: ...

    def mark_computed(self, seq_id: Hashable, num_computed_tokens: int) -> int: ...

    def blocks_needed_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> np.ndarray: ...

    def append_slots_batch(
        self, rows: np.ndarray, num_new_tokens: int = 1, num_lookahead_slots: int = 0
    ) -> AppendResult: ...

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None: ...

    def fork_many(self, parent_ids: Sequence[Hashable], child_ids: Sequence[Hashable]) -> None:
        ...

    def free(self, seq_id: Hashable) -> int: ...

    def free_many(self, seq_ids: Sequence[Hashable]) -> np.ndarray: ...

    def can_swap_out(self, seq_ids: Iterable[Hashable]) -> bool: ...

    def swap_out(self, seq_ids: Iterable[Hashable]) -> np.ndarray: ...

    def can_swap_in(self, seq_ids: Iterable[Hashable]) -> AllocStatus: ...

    def swap_in(self, seq_ids: Iterable[Hashable]) -> np.ndarray: ...
