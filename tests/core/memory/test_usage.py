"""Memory breakdown of the paged cache: hand-computed slots that sum to capacity."""

import numpy as np

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.protocol import KVManager


def test_paged_manager_implements_the_scheduler_protocol():
    assert isinstance(KVCacheManager(num_gpu_blocks=4), KVManager)


def test_breakdown_counts_shared_blocks_once():
    m = KVCacheManager(num_gpu_blocks=10, block_size=4, watermark=0.0)
    m.allocate("a", 6)  # blocks 0 (full), 1 (2 of 4); will reach 12 slots
    m.allocate("b", 5)  # blocks 2 (full), 3 (1 of 4); final length 5
    m.fork("a", "c")  # shares blocks 0 and 1; will reach 7 slots
    rows = m.rows_of(["a", "b", "c"])
    got = m.memory_breakdown(rows, np.array([12, 5, 7]))
    # token: 4 + 2 + 4 + 1 = 11; reserved: block 1 will be filled to 4 (2 more);
    # internal: block 3 will never hold more than 1 (3 wasted); free: 6 blocks of 4
    assert got == {"token": 11, "reserved": 2, "internal": 3, "external": 0, "cached": 0,
                   "free": 24}


def test_freed_prefix_cached_blocks_count_as_cached_not_free():
    m = KVCacheManager(num_gpu_blocks=10, block_size=4, watermark=0.0,
                       enable_prefix_caching=True)
    m.allocate("a", token_ids=list(range(100, 113)))  # 3 full blocks + 1 partial
    m.mark_computed("a", 13)
    m.free("a")  # the 3 full blocks keep their keys (evictable); the partial one is clean
    got = m.memory_breakdown(m.rows_of([]), np.zeros(0, dtype=np.int64))
    assert got == {"token": 0, "reserved": 0, "internal": 0, "external": 0, "cached": 12,
                   "free": 28}
    m.allocate("b", 4 * 8)  # takes the 7 clean blocks first, then evicts one cached block
    got = m.memory_breakdown(m.rows_of(["b"]), np.array([32]))
    assert (got["cached"], got["free"], got["token"]) == (8, 0, 32)
    assert sum(got.values()) == 40
