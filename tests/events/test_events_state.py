"""KV events checked against the manager's own state: after any workload with prefix
caching and the host tier, replaying the events gives exactly the keys the GPU pool has
registered and the tier holds, and every stored run names its true parent."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpager.events import KVEventBus

from .workload import Workload, check_parents, held_keys, make_manager, ops, subscribed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, write_through=st.booleans(), gpu=st.integers(8, 24))
def test_replayed_events_equal_the_pool_and_the_tier(ops, write_through, gpu):
    m = make_manager(write_through, gpu, KVEventBus())
    index, events = subscribed(m)
    work = Workload(m)
    for op in ops:
        work.run(op)
        gpu_keys, cpu_keys = held_keys(m)
        assert index.keys("GPU") == gpu_keys, op
        assert index.keys("CPU") == cpu_keys, op
    check_parents(events, work.parent_of)


def test_a_workload_that_evicts_offloads_and_resets_is_seen_whole():
    """A fixed workload that goes through every kind of change, so the random test's
    property is known to cover them: GPU stores and evictions, tier stores and drops, and
    a reset."""
    m = make_manager(gpu=10, bus=KVEventBus())
    index, events = subscribed(m)
    work = Workload(m)
    for base in (0, 1, 2, 0, 1, 2):
        work.run(("alloc", base, 24, [1], False))
        work.run(("batch", 3))
        work.run(("free", 0))
        work.run(("transfers",))
    kinds = {(type(e).__name__, getattr(e, "medium", None)) for e in events}
    assert kinds == {("BlockStored", "GPU"), ("BlockRemoved", "GPU"),
                     ("BlockStored", "CPU"), ("BlockRemoved", "CPU")}
    assert m.prefix_cache.cpu_hit_blocks > 0  # the tier served a prompt
    assert check_parents(events, work.parent_of) > 0
    assert (index.keys("GPU"), index.keys("CPU")) == held_keys(m)
    for seq in list(work.tokens):
        m.free(seq)
    assert m.reset_prefix_cache()
    assert type(events[-1]).__name__ == "AllBlocksCleared"
    assert index.keys("GPU") == index.keys("CPU") == set() == held_keys(m)[0]
    work.run(("alloc", 0, 24, [], False))  # caching goes on after a reset
    assert index.keys("GPU") == held_keys(m)[0] and len(index.keys("GPU")) == 6


def test_generated_blocks_are_stored_as_a_continuation_of_the_prompt():
    m = make_manager(bus=KVEventBus())
    _, events = subscribed(m)
    work = Workload(m)
    work.run(("alloc", 0, 8, [], False))  # 2 prompt blocks
    for token in (5, 6, 7, 8):  # fills the third block
        work.run(("append", 0, token))
    assert [len(e.block_hashes) for e in events] == [2, 1]
    prompt, generated = events
    assert prompt.parent_block_hash is None
    assert generated.parent_block_hash == prompt.block_hashes[-1]
    assert check_parents(events, work.parent_of) == 3
