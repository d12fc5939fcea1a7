"""A host-memory tier for prefix blocks: where cached blocks go when the GPU evicts them.

A cached prefix block that the GPU pool evicts is normally lost, and the next request that
shares it recomputes it. With a tier, its content is first copied to host memory and its key
kept there, LRU, in a capacity of its own; a later prefix match that runs past the GPU's
blocks continues into the tier, and the matched blocks are loaded back into fresh GPU blocks
instead of recomputed (a host-link copy of a long prefix is far cheaper than its prefill).

The tier is inclusive: a block loaded back stays in the tier too, so evicting it from the GPU
again copies nothing. Host block ids are those of one host buffer shared with the swap area
of preempted sequences, divided statically: the swap area holds ids `0 .. num_cpu_blocks - 1`
and the tier `num_cpu_blocks .. num_cpu_blocks + capacity - 1` (see `KVCache.for_manager`),
so the two never compete for a block.

The tier only decides and records; the copies are plans, `(gpu, host)` offloads and
`(host, gpu)` loads, which an executor carries out at the start of the step they belong to:
offloads first (an evicted block is about to be reused), loads after swaps and before any
kernel reads the loaded blocks. A host block that a pending load reads is pinned until the
plans are taken, so no offload of the same step overwrites it.

KV events: a tier given an `events` sink reports, medium CPU, the keys it starts holding
(`offload_many`; their parents are not known here, eviction order is not chain order) and
the keys it drops to make room, while the sink listens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from kvpager.core.memory.block_pool import leading_hits
from kvpager.core.memory.event_sink import MEDIUM_CPU, KVEventSink
from kvpager.core.plans import EMPTY_PAIRS


class HostPrefixTier:
    """Prefix-block keys held in host memory, LRU, with their pending copies.

    Args:
        capacity: host blocks the tier may hold, > 0.
        base: the first host block id of the tier (the swap area's size).
        events: where to report keys stored and dropped, medium CPU (None: nowhere).
    """

    def __init__(self, capacity: int, base: int = 0, *,
                 events: KVEventSink | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or (
                capacity <= 0):
            raise ValueError(f"capacity must be an int > 0, got {capacity!r}")
        self.capacity = int(capacity)
        self.base = int(base)
        self._host_of: OrderedDict[Hashable, int] = OrderedDict()  # oldest first
        self._next = 0  # ids base + next .. are untouched (allocated lazily)
        self._pinned: set[int] = set()
        self._offloads: list[tuple[int, int]] = []
        self._loads: list[tuple[int, int]] = []
        self.offloaded_blocks = 0
        self.loaded_blocks = 0
        self._events = events

    def __len__(self) -> int:
        return len(self._host_of)

    def __contains__(self, key: object) -> bool:
        return key in self._host_of

    def lru(self) -> list[tuple[Hashable, int]]:
        """(key, host block) of every held key, least recently used first."""
        return list(self._host_of.items())

    def pinned(self) -> list[int]:
        """Host blocks pinned by pending loads, sorted."""
        return sorted(self._pinned)

    def pending_plans(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Copies of the offloads and loads planned and not yet taken, in order."""
        return list(self._offloads), list(self._loads)

    def match(self, keys: Sequence[Hashable]) -> list[int]:
        """Host ids of the longest run of leading `keys` held here; no side effects."""
        return leading_hits(self._host_of.get, keys)

    def pin(self, keys: Sequence[Hashable]) -> None:
        """Held `keys` are about to be loaded: they become the most recently used and their
        host blocks are pinned until the plans are taken, so no offload (of blocks the GPU
        evicts to make room for the load) overwrites them."""
        for key in keys:
            self._host_of.move_to_end(key)
            self._pinned.add(self._host_of[key])

    def load(self, keys: Sequence[Hashable], gpu_blocks: np.ndarray) -> None:
        """Plan copies of pinned `keys` into `gpu_blocks` (int32, fresh GPU blocks)."""
        for key, gpu in zip(keys, gpu_blocks.tolist(), strict=True):
            self._loads.append((self._host_of[key], gpu))
        self.loaded_blocks += len(keys)

    def offload(self, key: Hashable, gpu_block: int) -> bool:
        """`offload_many` for one block; returns whether the tier keeps it."""
        return self.offload_many([key], [gpu_block]) == 1

    def offload_many(self, keys: Sequence[Hashable], gpu_blocks: Sequence[int]) -> int:
        """Keep the contents of `gpu_blocks`, cached under `keys`, in the tier: a copy is
        planned for each key the tier does not hold yet (a held key just becomes the most
        recently used). Room is made by dropping the least recently used unpinned keys;
        when every held block is pinned, the remaining blocks are not kept. Returns how many
        of the blocks the tier holds now."""
        host_of = self._host_of
        new = [(k, b) for k, b in zip(keys, gpu_blocks, strict=True) if k not in host_of]
        if len(new) < len(keys):  # held keys become the most recently used
            for key in keys:
                if key in host_of:
                    host_of.move_to_end(key)
        new_keys = [k for k, _ in new]
        new_blocks = [b for _, b in new]
        if not new_keys:
            return len(keys)
        hosts = self._take_host_blocks(len(new_keys))
        kept = len(hosts)
        host_of.update(zip(new_keys[:kept], hosts, strict=True))
        self._offloads.extend(zip(new_blocks[:kept], hosts, strict=True))
        self.offloaded_blocks += kept
        events = self._events
        if kept and events is not None and events.active:
            events.stored(new_keys[:kept], None, MEDIUM_CPU)
        return len(keys) - len(new_keys) + kept

    def clear(self) -> int:
        """Forget every held key (a prefix-cache reset); all host blocks become untouched
        again. Copies already planned stay planned (nothing will read their host blocks).
        Reports nothing (the prefix cache reports the reset). Returns the keys forgotten.

        Raises:
            ValueError: a pending load pins a host block (nothing changed).
        """
        if self._pinned:
            raise ValueError(f"clear: host block {min(self._pinned)} is pinned by a pending "
                             "load; take the plans first")
        forgotten = len(self._host_of)
        self._host_of.clear()
        self._next = 0
        return forgotten

    def take_plans(self) -> tuple[np.ndarray, np.ndarray]:
        """(offloads int64 `[n, 2]` (gpu, host), loads int64 `[m, 2]` (host, gpu)) planned
        since the last call, in order; unpins the loads' host blocks."""
        offloads = np.asarray(self._offloads, dtype=np.int64).reshape(-1, 2) \
            if self._offloads else EMPTY_PAIRS
        loads = np.asarray(self._loads, dtype=np.int64).reshape(-1, 2) \
            if self._loads else EMPTY_PAIRS
        self._offloads, self._loads = [], []
        self._pinned.clear()
        return offloads, loads

    def _take_host_blocks(self, num: int) -> list[int]:
        """Up to `num` host blocks: untouched ones first, then those of the least recently
        used unpinned keys, whose keys are dropped."""
        fresh = min(num, self.capacity - self._next)
        hosts = list(range(self.base + self._next, self.base + self._next + fresh))
        self._next += fresh
        if fresh == num:
            return hosts
        host_of, pinned = self._host_of, self._pinned
        skipped: list[tuple[Hashable, int]] = []
        dropped: list[Hashable] = []
        pop = host_of.popitem
        while len(hosts) < num and host_of:
            key, host = pop(last=False)  # the least recently used
            if host in pinned:
                skipped.append((key, host))
            else:
                hosts.append(host)
                dropped.append(key)
        for key, host in reversed(skipped):  # pinned keys keep their place, oldest first
            host_of[key] = host
            host_of.move_to_end(key, last=False)
        if dropped and self._offloads:  # a copy into a reused host block not done yet is
            reused = set(hosts[fresh:])  # moot: drop it, so no plan writes a block twice
            kept = [pair for pair in self._offloads if pair[1] not in reused]
            self.offloaded_blocks -= len(self._offloads) - len(kept)
            self._offloads = kept
        events = self._events
        if dropped and events is not None and events.active:
            events.removed(dropped, MEDIUM_CPU)
        return hosts
