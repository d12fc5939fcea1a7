"""A binary buddy allocator over a token-addressed KV space.

Pre-paging servers (FasterTransformer, Orca as re-implemented in the vLLM paper) give every
sequence one contiguous region of the KV cache. The vLLM paper's Orca baselines place those
regions with a buddy allocator, so their memory waste has two parts that this module makes
measurable instead of assumed: *rounding* (a region of n slots occupies a block of
`2**ceil(log2 n)` slots) and *external fragmentation* (enough free slots in total, but no free
block large enough).

The space is `capacity` slots (not necessarily a power of two). It is covered by maximal
power-of-two *top-level* blocks laid out largest first (13 slots: 8 at 0, 4 at 8, 1 at 12),
so every block of order k starts at a multiple of `2**k`, and a block of order k at offset o
has its buddy at `o ^ 2**k`. Two free buddies always merge: both halves lie inside the space,
and an aligned block inside a layout of decreasing powers of two cannot straddle two
top-level blocks, so the merged block is a valid block (a top-level block's would-be buddy
past the end, or in a larger block, is never a free block of its order). With `min_order` > 0 the
smallest block is `2**min_order` slots and the last `capacity % 2**min_order` slots are never
handed out (`unusable_slots`).

Placement: `alloc` takes a free block of the smallest sufficient order, the one at the lowest
address among those, and splits it, keeping the lower half each time. Lowest address first
keeps allocations packed towards the start and makes every decision deterministic, which is
what lets tests state exact offsets.

Why per-order sets plus heaps: a 20,000-request trace allocates and frees tens of thousands
of regions; each call must cost O(log capacity), never a scan of the space. Free blocks of
each order are a set (O(1) membership for coalescing) and a min-heap of offsets (lowest
address first) from which removed entries are skipped lazily.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import NoReturn

import numpy as np

from kvpager.core.errors import DoubleFreeError, OutOfBlocksError, UnknownBlockError


class NoFreeBlockError(OutOfBlocksError):
    """No free block is large enough for a region, though the free total may be (external
    fragmentation). An `OutOfBlocksError`, so callers that back off on one handle both."""

    def __init__(self, device: str, needed: int, free: int, largest: int) -> None:
        super().__init__(device, needed, free)
        self.largest = largest
        self.args = (f"no free {device} block of {needed} slots: the largest free block has "
                     f"{largest} slots ({free} slots free in total)",)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class BuddyAllocator:
    """Power-of-two blocks of a space of `capacity` slots, with buddy coalescing.

    Args:
        capacity: slots in the space, >= `2**min_order`.
        min_order: log2 of the smallest block, >= 0.
        device: a name for messages ("gpu", "cpu").

    Every method either does all of its work or raises before changing anything.
    """

    def __init__(self, capacity: int, min_order: int = 0, device: str = "gpu") -> None:
        capacity = _check_int("capacity", capacity, 1)
        min_order = _check_int("min_order", min_order, 0)
        if capacity < (1 << min_order):
            raise ValueError(f"capacity must be >= 2**min_order = {1 << min_order} slots, "
                             f"got {capacity}")
        self.device = device
        self.capacity = capacity
        self.min_order = min_order
        #: Slots that blocks cover: `capacity` rounded down to a multiple of `2**min_order`.
        self.usable = capacity - capacity % (1 << min_order)
        self.max_order = self.usable.bit_length() - 1
        orders = self.max_order + 1
        self._free: list[set[int]] = [set() for _ in range(orders)]
        self._heap: list[list[int]] = [[] for _ in range(orders)]
        self._used: dict[int, int] = {}  # offset -> order of each allocated block
        self.free_slots = 0
        offset = 0
        for order in range(self.max_order, min_order - 1, -1):
            if self.usable >> order & 1:
                self._push(offset, order)
                offset += 1 << order
        self._initial = self.free_counts()

    # ---- queries ------------------------------------------------------------------------
    @property
    def used_slots(self) -> int:
        """Slots in allocated blocks, rounding included (`free_slots + used_slots == usable`)."""
        return self.usable - self.free_slots

    @property
    def unusable_slots(self) -> int:
        """Slots past the last block that no allocation can ever get (`min_order` > 0)."""
        return self.capacity - self.usable

    @property
    def num_allocated(self) -> int:
        return len(self._used)

    def order_for(self, num_slots: int) -> int:
        """The order of the block `alloc(num_slots)` takes: `max(min_order, ceil(log2 n))`."""
        n = _check_int("num_slots", num_slots, 1)
        return max(self.min_order, (n - 1).bit_length())

    def block_size_for(self, num_slots: int) -> int:
        """Slots of the block `alloc(num_slots)` takes (its rounding included)."""
        return 1 << self.order_for(num_slots)

    def largest_free(self) -> int:
        """Slots of the largest free block (0 when none is free): the largest region that
        `alloc` can place now, whatever the free total."""
        for order in range(self.max_order, self.min_order - 1, -1):
            if self._free[order]:
                return 1 << order
        return 0

    def free_counts(self) -> list[int]:
        """Free blocks per order, index = order (orders below `min_order` are 0)."""
        return [len(s) for s in self._free]

    def free_regions(self) -> list[int]:
        """Sizes of the free blocks, largest first. Adjacent free blocks that are not buddies
        stay separate: the allocator cannot hand them out as one region."""
        return [1 << k for k in range(self.max_order, self.min_order - 1, -1)
                for _ in range(len(self._free[k]))]

    def free_blocks(self) -> list[tuple[int, int]]:
        """(offset, size) of every free block, by offset."""
        return sorted((o, 1 << k) for k, s in enumerate(self._free) for o in s)

    def allocated_blocks(self) -> list[tuple[int, int]]:
        """(offset, size) of every allocated block, by offset."""
        return sorted((o, 1 << k) for o, k in self._used.items())

    def size_of(self, offset: int) -> int:
        """Slots of the allocated block starting at `offset`."""
        try:
            return 1 << self._used[offset]
        except (KeyError, TypeError):
            raise UnknownBlockError(f"offset {offset!r} is not the start of an allocated "
                                    f"{self.device} block") from None

    def free_slots_below(self, num_slots: int) -> int:
        """Free slots in free blocks smaller than the block `alloc(num_slots)` would take:
        the free memory that a region of `num_slots` cannot use."""
        top = min(self.order_for(num_slots), self.max_order + 1)
        return sum(len(self._free[k]) << k for k in range(self.min_order, top))

    def fits(self, sizes: Iterable[int], *, empty: bool = False) -> bool:
        """Whether `alloc(n)` for each n of `sizes`, in that order, would succeed now (or in
        an empty allocator, `empty=True`). Mirrors `alloc` on the counts of free blocks per
        order, which is all its success depends on; O(len(sizes) * orders)."""
        counts = list(self._initial if empty else self.free_counts())
        for n in sizes:
            k = self.order_for(n)
            j = k
            while j <= self.max_order and not counts[j]:
                j += 1
            if j > self.max_order:
                return False
            counts[j] -= 1
            for i in range(k, j):  # splitting leaves one free block of each order k..j-1
                counts[i] += 1
        return True

    # ---- allocation ---------------------------------------------------------------------
    def alloc(self, num_slots: int) -> int:
        """Offset of a new block of `block_size_for(num_slots)` slots.

        Raises:
            ValueError: `num_slots` is not an int >= 1.
            NoFreeBlockError: no free block is large enough (nothing changed).
        """
        k = self.order_for(num_slots)
        j = k
        while j <= self.max_order and not self._free[j]:
            j += 1
        if j > self.max_order:
            raise NoFreeBlockError(self.device, 1 << k, self.free_slots, self.largest_free())
        offset = self._pop_lowest(j)
        while j > k:  # split: keep the lower half, free the upper one
            j -= 1
            self._push(offset + (1 << j), j)
        self._used[offset] = k
        return offset

    def free(self, offset: int) -> int:
        """Free the block starting at `offset`, merging it with free buddies; returns its size.

        Raises:
            DoubleFreeError: `offset` lies in a block that is already free.
            UnknownBlockError: `offset` is outside the space or not the start of a block.
        """
        order = self._used.get(offset) if isinstance(offset, (int, np.integer)) else None
        if order is None:
            self._raise_bad_offset(offset)
        offset = int(offset)
        del self._used[offset]
        size = 1 << order
        while order < self.max_order:
            buddy = offset ^ (1 << order)
            if buddy not in self._free[order]:  # a free buddy is a block: the merge is valid
                break
            self._free[order].discard(buddy)  # its heap entry goes stale, skipped on pop
            self.free_slots -= 1 << order
            offset, order = min(offset, buddy), order + 1
        self._push(offset, order)
        return size

    # ---- internals ----------------------------------------------------------------------
    def _push(self, offset: int, order: int) -> None:
        self._free[order].add(offset)
        heap = self._heap[order]
        heapq.heappush(heap, offset)
        if len(heap) > 2 * len(self._free[order]) + 32:  # too many stale entries: rebuild
            self._heap[order] = sorted(self._free[order])
        self.free_slots += 1 << order

    def _pop_lowest(self, order: int) -> int:
        heap, live = self._heap[order], self._free[order]
        while True:
            offset = heapq.heappop(heap)
            if offset in live:
                live.remove(offset)
                self.free_slots -= 1 << order
                return offset

    def _raise_bad_offset(self, offset: object) -> NoReturn:
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
            raise UnknownBlockError(f"offset must be an int, got {type(offset).__name__} "
                                    f"{offset!r}")
        o = int(offset)
        if not 0 <= o < self.usable:
            raise UnknownBlockError(f"offset {o} is outside the {self.device} allocator's "
                                    f"blocks 0..{self.usable - 1}")
        for k in range(self.min_order, self.max_order + 1):
            base = o & ~((1 << k) - 1)
            if base in self._free[k]:
                raise DoubleFreeError(f"offset {o} of {self.device} is in the free block "
                                      f"[{base}, {base + (1 << k)}): freed twice?")
            if self._used.get(base) == k:
                raise UnknownBlockError(f"offset {o} is inside the {self.device} block "
                                        f"allocated at {base}, not its start")
        raise UnknownBlockError(f"offset {o} is not the start of a {self.device} block")


__all__ = ["BuddyAllocator", "NoFreeBlockError"]
