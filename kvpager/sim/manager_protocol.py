"""What the simulator needs of a memory manager, beyond what the scheduler needs.

The scheduler drives any `kvpager.core.protocol.KVManager`. The simulator also reports on
memory and times the copies a manager plans outside the scheduler's view, so a manager it
simulates must also be a `SimManager`: the paged manager (`PagedSimManager`, the library's
`KVCacheManager` plus the one answer it has no reason to carry) and the contiguous baseline
(`kvpager.sim.contiguous.ContiguousManager`) both are. The simulator calls these members
directly: nothing is probed at run time.

Counters are the managers' own (the simulator reads them instead of re-counting plans); units
are the manager's allocation unit (blocks for paged, slots for contiguous).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.memory.prefix import PrefixCache
from kvpager.core.plans import EMPTY_PAIRS
from kvpager.core.protocol import KVManager


@runtime_checkable
class SimManager(KVManager, Protocol):
    """A `KVManager` the simulator can report on.

    Attributes:
        prefix_cache: the manager's prefix cache (hit counts, tiers), None without one.
        num_cow_copies: copy-on-write copies planned so far (units).
        num_blocks_swapped_out, num_blocks_swapped_in: units moved by swaps so far.
    """

    @property
    def num_cow_copies(self) -> int: ...

    @property
    def prefix_cache(self) -> PrefixCache | None: ...

    @property
    def num_blocks_swapped_out(self) -> int: ...

    @property
    def num_blocks_swapped_in(self) -> int: ...

    def memory_breakdown(
        self, rows: np.ndarray, final_slots: np.ndarray, next_reservation: int | None = None,
        *, next_num_tokens: int | None = None,
    ) -> dict[str, int]:
        """GPU slots by kind (`kvpager.core.memory.usage.FIELDS`) summing to the capacity:
        `rows` (int64) of the resident sequences, `final_slots` (int64, same shape) the slots
        each holds at the end, and the head of the waiting queue (its final and current token
        counts) for external fragmentation."""
        ...

    def take_copies(self) -> np.ndarray:
        """int64 `[n, 2]` (src_slot, dst_slot) copies that forks planned since the last call
        and that the scheduler does not see (it drops what `fork_many` returns). The
        simulator times them before the next step."""
        ...


class PagedSimManager(KVCacheManager):
    """`KVCacheManager` as a `SimManager`: a paged fork shares its parent's blocks, so it
    plans no copies (copy-on-write ones come back from appends, in `SchedulerOutput`)."""

    def take_copies(self) -> np.ndarray:
        return EMPTY_PAIRS


__all__ = ["PagedSimManager", "SimManager"]
