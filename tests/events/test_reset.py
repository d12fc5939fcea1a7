"""`reset_prefix_cache`: everything cached goes, on the GPU and in the tier, reported as
one `AllBlocksCleared`; refused while a sequence still reads cached blocks."""

from __future__ import annotations

from kvpager.core.memory.manager import KVCacheManager
from kvpager.events import AllBlocksCleared, KVEventBus

from .workload import Workload, held_keys, make_manager, subscribed


def _filled(gpu: int = 10) -> tuple[KVCacheManager, Workload, list]:
    m = make_manager(gpu=gpu, bus=KVEventBus())
    _, events = subscribed(m)
    work = Workload(m)
    for base in (0, 1, 2):
        work.run(("alloc", base, 24, [1], False))
        work.run(("free", 0))
    return m, work, events


def test_reset_forgets_both_media_and_frees_the_blocks():
    m, work, events = _filled()
    gpu, cpu = held_keys(m)
    assert gpu and cpu
    assert m.reset_prefix_cache()
    assert events[-1] == AllBlocksCleared()
    assert held_keys(m) == (set(), set())
    assert m.gpu.num_free == m.gpu.num_blocks and m.gpu.num_evictable == 0
    hits_before = m.prefix_cache.hit_blocks
    for base in (0, 1, 2):  # prompts cached before the reset are found nowhere now
        work.run(("alloc", base, 24, [1], False))
        work.run(("free", 0))
    assert m.prefix_cache.hit_blocks == hits_before
    work.run(("alloc", 2, 24, [1], False))  # while what is cached since is found
    assert m.prefix_cache.hit_blocks == hits_before + 6


def test_reset_is_refused_while_a_cached_block_is_in_use():
    m, work, events = _filled()
    work.run(("alloc", 2, 24, [1], False))  # holds the cached blocks of prompt 2
    before, n = held_keys(m), len(events)
    assert not m.reset_prefix_cache()
    assert held_keys(m) == before and len(events) == n


def test_reset_is_refused_while_a_tier_load_is_pending():
    m, work, _ = _filled()
    m.take_host_transfers()
    work.run(("alloc", 0, 24, [1], False))  # prompt 0 comes back from the tier
    assert m.prefix_cache.cpu_hit_blocks > 0
    seq = max(work.tokens)
    m.free(seq)  # its blocks are free, but the load into them is still planned
    assert not m.reset_prefix_cache()
    m.take_host_transfers()
    assert m.reset_prefix_cache()


def test_reset_without_prefix_caching_has_nothing_to_do():
    bus = KVEventBus()
    got: list = []
    bus.subscribe(got.append)
    m = KVCacheManager(num_gpu_blocks=4, block_size=4, events=bus)
    assert m.reset_prefix_cache() and got == []
