"""The library's multi-group manager as the simulator needs it, and KV memory by group.

`HybridSimManager` is `kvpager.core.memory.hybrid.HybridKVCacheManager` (the real one, the
same calls the engine makes) plus the simulator's `SimManager` answers: counters summed over
the groups, the slot breakdown of the shared pool, and `group_pages`, the pages each group
holds, which `GroupMemorySeries` samples over time (`metrics.json` "kv_by_group").

Released window entries hold `NULL_BLOCK` (-1): every count here skips them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.plans import EMPTY_PAIRS


class HybridSimManager(HybridKVCacheManager):
    """`HybridKVCacheManager` as a `kvpager.sim.manager_protocol.SimManager` (its
    `prefix_cache` counts the model's hits across groups)."""

    @property
    def num_cow_copies(self) -> int:  # type: ignore[override]
        return sum(self.group(g).num_cow_copies for g in range(self.num_groups))

    @property
    def num_blocks_swapped_out(self) -> int:  # type: ignore[override]
        return sum(self.group(g).num_blocks_swapped_out for g in range(self.num_groups))

    @property
    def num_blocks_swapped_in(self) -> int:  # type: ignore[override]
        return sum(self.group(g).num_blocks_swapped_in for g in range(self.num_groups))

    def take_copies(self) -> np.ndarray:
        return EMPTY_PAIRS  # a paged fork shares blocks in every group

    _memo_rows: np.ndarray | None = None  # the rows of the last sample (identity)
    _memo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def _entries(self, group: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
        """(block ids, owner index into rows, logical block index) of the held,
        non-released blocks of `rows` in `group`; a sample's `memory_breakdown` and
        `group_pages` right after it get the same `rows` array and share the work (the
        memo lives from one `memory_breakdown` to the next `group_pages`)."""
        if rows is not self._memo_rows or self._memo is None:
            return self._compute_entries(group, rows)
        if group not in self._memo:
            self._memo[group] = self._compute_entries(group, rows)
        return self._memo[group]

    def _compute_entries(self, group: int, rows: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        store = self.group(group).rows
        nblocks = store.nblocks[rows].astype(np.int64)
        total = int(nblocks.sum())
        if not total:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        owner = np.repeat(np.arange(rows.size), nblocks)
        logical = np.arange(total) - np.repeat(np.cumsum(nblocks) - nblocks, nblocks)
        block = store.table[rows[owner], logical].astype(np.int64)
        keep = block >= 0
        return block[keep], owner[keep], logical[keep]

    def group_pages(self, rows: np.ndarray) -> list[int]:
        """Distinct GPU pages each group holds for `rows` (int64, resident sequences)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = []
        for g in range(self.num_groups):
            held = np.zeros(self.gpu.num_blocks, dtype=bool)  # cheaper than np.unique
            held[self._entries(g, rows)[0]] = True
            out.append(int(np.count_nonzero(held)))
        self._memo_rows = self._memo = None
        if self.num_state_groups:  # every resident sequence holds its state pages
            out.append(self.state_pages_per_seq * int(rows.size))
        return out

    def memory_breakdown(self, rows: np.ndarray, final_slots: np.ndarray,
                         next_reservation: int | None = None, *,
                         next_num_tokens: int | None = None) -> dict[str, int]:
        """Page slots by kind over every group (`kvpager.core.memory.usage.FIELDS`), summing
        to the pool's pages x block_size. A page of a group with fewer bytes per token than
        the largest counts its slots all the same (its padding is in `page_bytes`)."""
        rows = np.asarray(rows, dtype=np.int64)
        self._memo_rows, self._memo = rows, {}  # fresh: the manager may have changed
        bs, pool = self.block_size, self.gpu
        filled = np.zeros(pool.num_blocks, dtype=np.int64)
        future = np.zeros(pool.num_blocks, dtype=np.int64)
        held = self.rows.ntokens[rows]
        for g in range(self.num_groups):
            block, owner, logical = self._entries(g, rows)
            if not block.size:
                continue
            start = logical * bs
            now = np.minimum(np.maximum(held[owner] - start, 0), bs)
            end = np.minimum(np.maximum(np.maximum(final_slots[owner], held[owner]) - start,
                                        0), bs)
            np.maximum.at(filled, block, now)
            np.maximum.at(future, block, end)
        # a state group's pages hold live state: counted with the token states
        token = int(filled.sum()) + self.state_pages_per_seq * int(rows.size) * bs
        reserved = int(future.sum()) - int(filled.sum())
        return {"token": token, "reserved": reserved,
                "internal": pool.num_used * bs - token - reserved, "external": 0,
                "cached": pool.num_evictable * bs,
                "free": (pool.num_free - pool.num_evictable) * bs}


@dataclass
class GroupMemorySeries:
    """Samples of the pages each KV-cache group holds, and their bytes."""

    names: list[str]  # per kind ("full", "sliding_window", ...), in order of appearance
    members: list[int]  # per group of the manager: the index of its kind in `names`
    page_bytes: int
    time: list[float] = field(default_factory=list)
    pages: list[list[int]] = field(default_factory=list)

    def add(self, t: float, pages: list[int]) -> None:
        """One sample: the pages of each of the manager's groups, summed by kind."""
        by_kind = [0] * len(self.names)
        for member, count in zip(self.members, pages, strict=True):
            by_kind[member] += count
        self.time.append(t)
        self.pages.append(by_kind)

    def to_dict(self, end: float) -> dict:
        """metrics.json "kv_by_group": per group its name, time-averaged and peak GiB, and
        the series (seconds, GiB per group)."""
        gib = np.asarray(self.pages, dtype=np.float64).reshape(len(self.time), -1) \
            * self.page_bytes / (1 << 30)
        if gib.shape[0]:
            t = np.asarray(self.time + [max(end, self.time[-1])])
            w = np.diff(t)
            w = w if w.sum() > 0 else np.ones(gib.shape[0])
            mean = (gib * w[:, None]).sum(axis=0) / w.sum()
            peak = gib.max(axis=0)
        else:
            mean = peak = np.zeros(len(self.names))
        return {"groups": self.names, "page_bytes": self.page_bytes,
                "mean_gib": [float(x) for x in mean], "peak_gib": [float(x) for x in peak],
                "time": list(self.time), "gib": gib.tolist()}


def group_series(manager: object) -> GroupMemorySeries | None:
    """A series of a hybrid manager's memory by attention kind (groups of one kind, split
    for equal pages, summed); None for any other manager."""
    if not isinstance(manager, HybridSimManager):
        return None
    names: list[str] = []
    specs = [*manager.paged_groups, *manager.state_groups[:1]]  # states: one entry
    for spec in specs:
        if spec.kind not in names:
            names.append(spec.kind)
    return GroupMemorySeries(names, [names.index(g.kind) for g in specs],
                             manager.page_bytes)


__all__ = ["GroupMemorySeries", "HybridSimManager", "group_series"]
