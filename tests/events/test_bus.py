"""The in-process subscriber API: who is called, with which events, and that a manager
whose bus nobody listens to builds nothing."""

from __future__ import annotations

import pytest

from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.manager import KVCacheManager
from kvpager.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBus,
    KVEventIndex,
    KVEventLog,
)

from .workload import Workload, held_keys, make_manager


def test_subscribers_get_every_event_in_order_until_they_unsubscribe():
    bus = KVEventBus(4)
    a, b = [], []
    assert not bus.active
    stop_a = bus.subscribe(a.append)
    bus.subscribe(b.append)
    assert bus.active and bus.num_subscribers == 2
    bus.removed(["k1"], "GPU")
    stop_a()
    bus.cleared()
    assert a == [BlockRemoved(["k1"], "GPU")]
    assert b == [BlockRemoved(["k1"], "GPU"), AllBlocksCleared()]
    bus.unsubscribe(b.append)
    assert not bus.active
    bus.unsubscribe(print)  # never subscribed: ignored


def test_stored_keys_are_split_into_chained_runs():
    bus = KVEventBus(4)
    got = []
    bus.subscribe(got.append)
    # a, b chain from p; c starts another chain; d follows c
    bus.stored(["a", "b", "c", "d"], ["p", "a", None, "c"], "GPU")
    assert got == [BlockStored(["a", "b"], "p", [], 4, None, "GPU"),
                   BlockStored(["c", "d"], None, [], 4, None, "GPU")]
    got.clear()
    bus.stored(["x", "y"], None, "CPU")  # parents unknown: one event per key
    assert [e.block_hashes for e in got] == [["x"], ["y"]]
    assert all(e.parent_block_hash is None and e.medium == "CPU" for e in got)
    got.clear()
    bus.stored([], None, "GPU")
    bus.removed([], "GPU")
    assert got == []


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="block_size"):
        KVEventBus(0)
    with pytest.raises(TypeError, match="callback"):
        KVEventBus().subscribe("not callable")  # type: ignore[arg-type]
    bus = KVEventBus(8)
    with pytest.raises(ValueError, match="block_size 8"):
        make_manager(bus=bus)  # the workload's managers use 4 tokens per block


def test_the_manager_binds_its_block_size():
    bus = KVEventBus()
    m = make_manager(bus=bus)
    assert bus.block_size == m.block_size and m.events is bus
    assert KVCacheManager(num_gpu_blocks=4).events is None


class _Silent:
    """A sink that fails the test if any hook is called: nobody listens."""

    active = False

    def bind(self, block_size):
        self.block_size = block_size

    def stored(self, keys, parents, medium):
        raise AssertionError("stored() called while inactive")

    removed = cleared = stored


def test_nothing_is_reported_while_nobody_listens():
    """The zero-cost promise: with an inactive sink no hook runs at all, through a workload
    that stores, evicts, offloads, drops and resets."""
    m = make_manager(gpu=10, bus=_Silent())  # type: ignore[arg-type]
    work = Workload(m)
    for base in (0, 1, 2, 0, 1, 2):
        work.run(("alloc", base, 24, [1], False))
        work.run(("batch", 3))
        work.run(("free", 0))
        work.run(("transfers",))
    assert m.prefix_cache.offloaded_blocks > 0 and held_keys(m)[1]
    assert m.reset_prefix_cache()


def test_a_pool_without_events_caches_as_before():
    pool = BlockPool(4)
    blocks = pool.allocate(2).tolist()
    assert pool.register(["a", "b"], blocks) == blocks
    assert pool.block_of("b") == blocks[1]


def test_a_subscriber_that_joins_late_sees_only_later_changes():
    bus = KVEventBus()
    m = make_manager(bus=bus)
    work = Workload(m)
    work.run(("alloc", 0, 8, [], False))
    index = KVEventIndex()
    bus.subscribe(index)
    work.run(("alloc", 1, 8, [], False))
    gpu = held_keys(m)[0]
    assert index.keys("GPU") < gpu and len(index.keys("GPU")) == 2


def test_the_log_batches_what_it_was_given():
    bus = KVEventBus(4)
    log = KVEventLog(bus)
    assert log.take_batch() is None
    bus.removed(["a"], "GPU")
    bus.cleared()
    batch = log.take_batch(ts=12.5, data_parallel_rank=3)
    assert batch is not None and batch.ts == 12.5 and batch.data_parallel_rank == 3
    assert batch.events == [BlockRemoved(["a"], "GPU"), AllBlocksCleared()]
    assert len(log) == 0
    log.close()
    bus.cleared()
    assert len(log) == 0 and not bus.active


def test_the_index_follows_stores_removals_and_clears():
    index = KVEventIndex(strict=True)
    index.apply_all([BlockStored(["a", "b"], None, [], 4, None, "GPU"),
                     BlockStored(["a"], None, [], 4, None, "CPU")])
    assert index.media_of("a") == {"GPU", "CPU"} and index.parent_of["b"] == "a"
    assert index.prefix_length(["a", "b", "c"]) == 2
    assert index.prefix_length(["a", "b"], "CPU") == 1
    index.apply(BlockRemoved(["a"], "GPU"))
    assert index.media_of("a") == {"CPU"} and index.parent_of["a"] is None
    with pytest.raises(ValueError, match="already holds"):
        index.apply(BlockStored(["a"], None, [], 4, None, "CPU"))
    with pytest.raises(ValueError, match="does not hold"):
        index.apply(BlockRemoved(["zz"], "GPU"))
    with pytest.raises(TypeError, match="not a KV event"):
        index.apply("nope")  # type: ignore[arg-type]
    index.apply(AllBlocksCleared())
    assert index.keys("GPU") == index.keys("CPU") == set() and not index.parent_of
    lenient = KVEventIndex()
    lenient.apply(BlockRemoved(["zz"], "GPU"))  # a late joiner ignores what it never saw
    assert lenient.keys("GPU") == set()


def test_a_raising_subscriber_cannot_break_the_manager(caplog):
    bus = KVEventBus()
    m = make_manager(gpu=10, bus=bus)

    def broken(event):
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    index = KVEventIndex(strict=True)
    bus.subscribe(index)
    work = Workload(m)
    for base in (0, 1, 2, 0):  # stores and evictions, each raising in `broken`
        work.run(("alloc", base, 24, [1], False))
        work.run(("free", 0))
    assert bus.num_errors == bus.num_events > 0 and isinstance(bus.errors[0], RuntimeError)
    assert "subscriber bug" in caplog.text
    gpu = {key for _, key in m.gpu.cached_items()}
    assert index.keys("GPU") == gpu  # the others got every event
    assert m.gpu.num_free == m.gpu.num_blocks  # every block is back: no call stopped halfway
