"""The host prefix tier: blocks the GPU evicts are offloaded, a later match loads them back,
LRU with its own capacity, pinned while a load is pending, write-through as an option."""

import numpy as np
import pytest

from kvpager.core.config import CacheConfig
from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.memory.prefix import hash_block_tokens
from kvpager.core.memory.prefix_tier import HostPrefixTier

from .manager_helpers import table

BS = 4


def make(gpu=6, tier=4, swap=2, **kw) -> KVCacheManager:
    return KVCacheManager(num_gpu_blocks=gpu, block_size=BS, num_cpu_blocks=swap,
                          watermark=0.0, enable_prefix_caching=True,
                          num_cpu_prefix_blocks=tier, **kw)


def run(m, seq, tokens):
    got = m.allocate(seq, token_ids=tokens)
    m.mark_computed(seq, len(tokens))
    return got


def test_an_evicted_block_is_offloaded_and_loaded_back():
    m = make()
    a = list(range(9))  # 2 full blocks + 1
    run(m, "a", a)
    a_blocks = table(m, "a")
    m.free("a")
    assert m.take_host_transfers()[0].size == 0  # nothing evicted yet
    run(m, "b", list(range(100, 124)))  # 6 blocks: evicts a's two cached blocks
    offloads, loads = m.take_host_transfers()
    assert sorted(offloads[:, 0].tolist()) == sorted(a_blocks[:2])
    assert sorted(offloads[:, 1].tolist()) == [2, 3]  # tier ids follow the 2 swap-area ids
    host_of = dict(offloads.tolist())  # gpu block -> host block
    assert loads.size == 0 and len(m.prefix_cache.tier) == 2
    m.free("b")
    got = run(m, "c", a)  # the same prompt: a's blocks come back from the tier
    offloads, loads = m.take_host_transfers()
    assert got.num_cached_tokens == 8
    want = [[host_of[a_blocks[i]], table(m, "c")[i]] for i in range(2)]
    assert loads.tolist() == want  # each block comes back from where it was offloaded
    assert m.prefix_cache.cpu_hit_blocks == 2 and m.prefix_cache.gpu_hit_blocks == 0
    assert m.prefix_cache.loaded_blocks == 2 and m.prefix_cache.offloaded_blocks >= 2
    # loaded blocks are registered on the GPU once the step ran: the next hit is a GPU hit
    assert run(m, "d", a).num_cached_tokens == 8
    assert m.prefix_cache.gpu_hit_blocks == 2


def test_the_tier_is_lru_with_its_own_capacity():
    tier = HostPrefixTier(2, base=10)
    assert tier.offload("k1", 0) and tier.offload("k2", 1)
    tier.pin(["k1"])  # k1 becomes the most recent and is pinned
    assert tier.offload("k3", 2)  # drops k2, the least recently used
    assert "k2" not in tier and tier.match(["k1", "k3"]) == [10, 11]
    offloads, _ = tier.take_plans()
    # k2's copy into 11 was not done yet when 11 was reused: it is dropped, so no plan
    # writes a host block twice (a batched swap refuses that)
    assert offloads.tolist() == [[0, 10], [2, 11]]
    assert tier.offloaded_blocks == 2


def test_a_pinned_block_is_never_overwritten_in_the_same_step():
    tier = HostPrefixTier(1)
    tier.offload("k1", 0)
    tier.take_plans()
    tier.pin(["k1"])
    assert not tier.offload("k2", 5)  # the only block is pinned by a pending load
    assert "k1" in tier and "k2" not in tier
    tier.take_plans()  # the step's plans are taken: unpinned
    assert tier.offload("k2", 5) and "k1" not in tier


def test_write_through_copies_when_a_block_is_registered():
    m = make(prefix_tier_write_through=True)
    run(m, "a", list(range(9)))
    offloads, _ = m.take_host_transfers()
    assert offloads[:, 0].tolist() == table(m, "a")[:2]


def test_a_load_policy_can_choose_to_recompute():
    calls = []

    def never(cached_tokens: int, blocks: int) -> int:
        calls.append((cached_tokens, blocks))
        return 0

    m = make(tier_load_policy=never)
    a = list(range(9))
    run(m, "a", a)
    m.free("a")
    run(m, "b", list(range(100, 124)))
    m.free("b")
    m.take_host_transfers()
    assert run(m, "c", a).num_cached_tokens == 0
    assert calls == [(0, 2)] and m.take_host_transfers()[1].size == 0


def test_keys_follow_the_chain_across_tiers():
    """GPU hits first, then the tier's run of the following keys."""
    m = make(gpu=8, tier=8)
    a = list(range(13))  # 3 full blocks + 1
    run(m, "a", a)
    keys = hash_block_tokens(a, BS)
    assert [m.prefix_cache.block_of(k) is not None for k in keys] == [True] * 3


def test_the_tier_needs_prefix_caching():
    with pytest.raises(ValueError, match="num_cpu_prefix_blocks needs enable_prefix_caching"):
        CacheConfig(num_gpu_blocks=4, num_cpu_prefix_blocks=2)
    with pytest.raises(ValueError, match="num_cpu_prefix_blocks"):
        CacheConfig(num_gpu_blocks=4, enable_prefix_caching=True, num_cpu_prefix_blocks=-1)
    assert np.asarray(make(tier=0).take_host_transfers()).size == 0
