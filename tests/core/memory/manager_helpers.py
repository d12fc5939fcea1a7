"""Helpers shared by the manager tests: a full snapshot of manager state."""

from __future__ import annotations

import numpy as np

from kvpager.core.memory.manager import KVCacheManager


def state(m: KVCacheManager):
    """Everything observable about a manager, for `assert state(m) == before`: each
    sequence's table, count, device, `room` and prefix chain; each pool's counts, free
    lists and cached-block index; the prefix counters; the host tier's LRU order, pins and
    pending plans (blocks evicted but not yet drained count as the tier's)."""
    rows = m.rows
    chains = m.prefix_chains
    tables = {s: (m.block_table(s).blocks.tolist(), m.num_tokens(s), m.device_of(s),
                  int(rows.room[rows.row(s)]),
                  None if chains is None else chains.snapshot(rows.row(s)))
              for s in m.seq_ids()}
    pools = [(p.ref_counts.tolist(), p.free_blocks()[0].tolist(), p.free_blocks()[1],
              p.cached_items())
             for p in (m.gpu, m.cpu) if p is not None]
    prefix = tier = None
    if m.prefix_cache is not None:
        pc = m.prefix_cache
        prefix = (len(pc), pc.queried_blocks, pc.gpu_hit_blocks, pc.cpu_hit_blocks)
        if pc.tier is not None:  # reading `tier` drains evictions into it first
            tier = (pc.tier.lru(), pc.tier.pinned(), pc.tier.pending_plans(),
                    pc.tier.offloaded_blocks, pc.tier.loaded_blocks)
    return tables, pools, prefix, tier, m.num_cow_copies


def table(m: KVCacheManager, seq) -> list[int]:
    return m.block_table(seq).blocks.tolist()


def pairs(a: np.ndarray) -> list[tuple[int, int]]:
    return [tuple(p) for p in a.tolist()]


def canonical(m: KVCacheManager, order: list, slots: list[int], copies: list[tuple[int, int]]):
    """Tables, slots and copies with GPU block ids renamed by first appearance in the tables
    (sequences in `order`), so two managers that made the same decisions with different ids
    compare equal. Copy sources that no table holds any more are named by their copy."""
    names: dict[int, int] = {}
    for seq in order:
        for b in m.block_table(seq).blocks.tolist():
            names.setdefault(b, len(names))
    for src, _dst in copies:
        names.setdefault(src, len(names))
    bs = m.block_size
    tables = [[names[b] for b in m.block_table(s).blocks.tolist()] for s in order]
    return (tables, [names[x // bs] * bs + x % bs for x in slots],
            sorted((names[a], names[b]) for a, b in copies), m.num_free_blocks())
