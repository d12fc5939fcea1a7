"""Helpers shared by the manager tests: a full snapshot of manager state."""

from __future__ import annotations

import numpy as np

from kvpager.manager import KVCacheManager


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
