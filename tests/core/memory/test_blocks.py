"""BlockPool: exact allocation order, reference counts, errors that change nothing."""

import tracemalloc

import numpy as np
import pytest

from kvpager.core.errors import DoubleFreeError, OutOfBlocksError, UnknownBlockError
from kvpager.core.memory.block_pool import BlockPool


def snapshot(pool: BlockPool):
    clean, evictable = pool.free_blocks()
    return pool.ref_counts.copy(), clean, evictable, pool.num_free


def assert_unchanged(pool: BlockPool, before) -> None:
    after = snapshot(pool)
    assert np.array_equal(after[0], before[0])
    assert np.array_equal(after[1], before[1])
    assert after[2:] == before[2:]


def test_fresh_pool_hands_out_ids_in_order():
    pool = BlockPool(8)
    assert pool.allocate(3).tolist() == [0, 1, 2]
    assert pool.allocate(1).tolist() == [3]
    assert pool.num_free == 4 and pool.num_used == 4
    assert pool.ref_counts[:5].tolist() == [1, 1, 1, 1, 0]


def test_freed_blocks_are_reused_most_recent_first():
    pool = BlockPool(8)
    pool.allocate(4)
    assert pool.free([1, 3]).tolist() == [1, 3]
    # stack: 3 was freed last, so it comes back first
    assert pool.allocate(3).tolist() == [3, 1, 4]


def test_shared_block_is_released_by_its_last_reference():
    pool = BlockPool(4)
    (b,) = pool.allocate(1)
    pool.share([b, b])
    assert pool.ref_count(b) == 3
    assert pool.free([b]).tolist() == []
    assert pool.free([b, b]).tolist() == [b]
    assert pool.num_free == 4


def test_out_of_blocks_is_named_and_takes_nothing():
    pool = BlockPool(3)
    pool.allocate(2)
    before = snapshot(pool)
    with pytest.raises(OutOfBlocksError, match="needed 2, only 1 free") as info:
        pool.allocate(2)
    assert info.value.needed == 2 and info.value.free == 1
    assert_unchanged(pool, before)


def test_double_free_and_unknown_ids_change_nothing():
    pool = BlockPool(4)
    pool.allocate(2)
    pool.free([0])
    before = snapshot(pool)
    with pytest.raises(DoubleFreeError, match="block 0"):
        pool.free([1, 0])
    with pytest.raises(DoubleFreeError, match="block 1"):
        pool.free([1, 1])  # one reference, dropped twice
    with pytest.raises(UnknownBlockError, match="unknown gpu block 4"):
        pool.free([1, 4])
    with pytest.raises(UnknownBlockError, match="-1"):
        pool.share([-1])
    with pytest.raises(DoubleFreeError, match="is free"):
        pool.share([2])
    assert_unchanged(pool, before)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_sizes_are_rejected(bad):
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(bad)


def test_cached_blocks_are_evicted_oldest_first_and_only_when_needed():
    pool = BlockPool(4)
    pool.record_evictions()
    blocks = pool.allocate(4).tolist()
    assert pool.register(["k0", "k1", "k2"], blocks[:3]) == blocks[:3]
    pool.free([2, 0, 1, 3])  # 3 is not cached: it goes to the clean stack
    assert pool.free_blocks()[1] == [2, 0, 1]
    assert pool.num_free == 4 and pool.num_evictable == 3
    assert pool.allocate(1).tolist() == [3]  # clean first
    assert pool.drain_evicted() == ([], [])
    assert pool.allocate(2).tolist() == [2, 0]  # then the least recently released
    assert pool.drain_evicted() == (["k2", "k0"], [2, 0])  # oldest first, drained once
    assert pool.drain_evicted() == ([], [])
    assert not pool.is_cached(2) and pool.is_cached(1)
    # the key index and the flags change together: the evicted keys are gone
    assert pool.block_of("k2") is None and pool.key_of(0) is None
    assert pool.cached_items() == [(1, "k1")] and pool.num_cached == 1
    assert pool.match(["k1", "k0"], 2) == [1]


def test_register_caches_only_a_keys_first_block_and_refuses_free_blocks():
    pool = BlockPool(4)
    a, b, c, _ = pool.allocate(4).tolist()
    assert pool.register(["x", "x", "y"], [a, b, c]) == [a, c]
    assert pool.register(["x", "z"], [b, a]) == []  # x is cached; a keeps its key
    assert pool.key_of(a) == "x" and pool.key_of(b) is None and not pool.is_cached(b)
    pool.free([b])
    with pytest.raises(ValueError, match="block 1 is free"):
        pool.register(["w"], [b])
    assert pool.block_of("w") is None


def test_a_pool_records_evicted_keys_only_when_asked():
    pool = BlockPool(2)
    blocks = pool.allocate(2).tolist()
    pool.register(["a", "b"], blocks)
    pool.free(blocks)
    pool.allocate(2)  # evicts both
    assert pool.drain_evicted() == ([], []) and pool.num_cached == 0


def test_touch_revives_a_cached_free_block():
    pool = BlockPool(3)
    (b,) = pool.allocate(1)
    pool.register(["key"], [b])
    pool.free([b])
    pool.touch(b)
    assert pool.ref_count(b) == 1 and pool.num_evictable == 0
    pool.touch(b)
    assert pool.ref_count(b) == 2
    with pytest.raises(ValueError, match="no cached content"):
        pool.touch(2)


def test_a_million_block_pool_fits_in_32_mb_of_python_heap():
    tracemalloc.start()
    try:
        pool = BlockPool(1_000_000)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pool.num_free == 1_000_000
    assert current < 32 * 1024 * 1024, f"{current / 2**20:.1f} MiB"
