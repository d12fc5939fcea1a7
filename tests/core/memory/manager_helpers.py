"""Helpers shared by the manager tests: a full snapshot of manager state."""

from __future__ import annotations

import numpy as np

from kvpager.core.memory.manager import KVCacheManager


def state(m: KVCacheManager):
    """Everything observable about a manager, for `assert state(m) == before`."""
    tables = {s: (m.block_table(s).blocks.tolist(), m.num_tokens(s), m.device_of(s))
              for s in m.seq_ids()}
    pools = [(p.ref_counts.tolist(), p.free_blocks()[0].tolist(), p.free_blocks()[1])
             for p in (m.gpu, m.cpu) if p is not None]
    prefix = None if m.prefix_cache is None else (len(m.prefix_cache),
                                                  m.prefix_cache.queried_blocks)
    return tables, pools, prefix, m.num_cow_copies


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
