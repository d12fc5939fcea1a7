"""Which replica holds which prompt block, by chained block key, for the prefix routers.

A key names a block and everything before it (kvpager's chained keys, Mooncake's hash ids
expanded to blocks, vLLM's block hashes), so the longest cached prefix of a request on a
replica is the run of its keys, from the first, that the replica holds. The index maps a key
to a bit mask of replicas; `match` walks the request's keys once for every replica at once.

The approximate router (`prefix-approx`) fills it with what it routed and evicts by its own
per-replica LRU; a precise router would call `stored` / `removed` / `cleared` from each
replica's KV events (vLLM's BlockStored.block_hashes, BlockRemoved.block_hashes,
AllBlocksCleared) instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np


class PrefixIndex:
    """Block key -> replicas holding it (bit mask over `num_replicas`)."""

    def __init__(self, num_replicas: int) -> None:
        self.num_replicas = num_replicas
        self._holders: dict[Hashable, int] = {}

    def stored(self, replica: int, keys: Sequence[Hashable]) -> None:
        bit = 1 << replica
        holders = self._holders
        for key in keys:
            holders[key] = holders.get(key, 0) | bit

    def removed(self, replica: int, keys: Sequence[Hashable]) -> None:
        clear = ~(1 << replica)
        holders = self._holders
        for key in keys:
            mask = holders.get(key, 0) & clear
            if mask:
                holders[key] = mask
            else:
                holders.pop(key, None)

    def cleared(self, replica: int) -> None:
        self.removed(replica, list(self._holders))

    def holds(self, replica: int) -> set[Hashable]:
        """Keys replica `replica` holds (for tests and checks)."""
        bit = 1 << replica
        return {k for k, m in self._holders.items() if m & bit}

    def match(self, keys: Sequence[Hashable]) -> np.ndarray:
        """int64 [num_replicas]: how many of `keys`, from the first, each replica holds."""
        lengths = np.zeros(self.num_replicas, dtype=np.int64)
        alive = (1 << self.num_replicas) - 1
        holders = self._holders
        for j, key in enumerate(keys):
            mask = holders.get(key, 0) & alive
            gone = alive & ~mask
            if gone:
                for r in range(self.num_replicas):
                    if gone >> r & 1:
                        lengths[r] = j
                alive = mask
            if not alive:
                return lengths
        for r in range(self.num_replicas):
            if alive >> r & 1:
                lengths[r] = len(keys)
        return lengths


class RoutedLRU:
    """The approximate router's model of each replica's cache: the keys it routed there,
    least recently routed first, at most `capacity` per replica (the replica's KV blocks).
    Keys go in last-block-first so that a prompt's tail is evicted before its head, as a
    prefix cache does."""

    def __init__(self, index: PrefixIndex, capacity: int) -> None:
        self.index, self.capacity = index, max(1, capacity)
        self._lru: list[OrderedDict[Hashable, None]] = [
            OrderedDict() for _ in range(index.num_replicas)]

    def routed(self, replica: int, keys: Sequence[Hashable]) -> None:
        lru = self._lru[replica]
        new = []
        for key in reversed(keys):
            if key in lru:
                lru.move_to_end(key)
            else:
                lru[key] = None
                new.append(key)
        self.index.stored(replica, new)
        excess = len(lru) - self.capacity
        if excess > 0:
            evicted = [lru.popitem(last=False)[0] for _ in range(excess)]
            self.index.removed(replica, evicted)
