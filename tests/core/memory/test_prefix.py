"""Prefix caching: chained keys, hits only on computed blocks, LRU eviction, counters."""

import numpy as np
import pytest

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.memory.prefix import hash_block_tokens
from kvpager.core.plans import AllocStatus

from .manager_helpers import table


def make(gpu=16, bs=4) -> KVCacheManager:
    return KVCacheManager(num_gpu_blocks=gpu, block_size=bs, watermark=0.0,
                          enable_prefix_caching=True)


def test_keys_chain_over_the_whole_prefix():
    a = hash_block_tokens([1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    b = hash_block_tokens([1, 2, 3, 4, 5, 6, 7, 8], 4)
    c = hash_block_tokens([0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a == b  # the partial block has no key
    assert c[1] != a[1]  # same tokens in block 1, different prefix
    assert hash_block_tokens([5, 6, 7, 8], 4, parent=a[0]) == a[1:]
    assert all(len(k) == 16 for k in a)


def test_hits_need_computed_blocks_and_leave_the_last_token():
    m = make()
    prompt = list(range(100, 113))  # 13 tokens: 3 full blocks + 1
    m.allocate("a", token_ids=prompt)
    # not computed yet: no hit for a sequence scheduled in the same step
    assert m.allocate("b", token_ids=prompt).num_cached_tokens == 0
    m.free("b")
    assert m.mark_computed("a", 13) == 3
    c = m.allocate("c", token_ids=prompt)
    assert c.num_cached_tokens == 12
    assert table(m, "c")[:3] == table(m, "a")[:3] and table(m, "c")[3] != table(m, "a")[3]
    assert m.gpu.ref_count(table(m, "a")[0]) == 2
    # a 12-token prompt may reuse only 2 blocks: its last token must be computed
    assert m.allocate("d", token_ids=prompt[:12]).num_cached_tokens == 8
    assert m.prefix_cache.hit_blocks == 3 + 2


def test_partial_prefix_match_stops_at_first_difference():
    m = make()
    m.allocate("a", token_ids=list(range(12)) + [0])
    m.mark_computed("a", 13)
    other = list(range(4)) + [99] + list(range(5, 13))
    assert m.allocate("b", token_ids=other).num_cached_tokens == 4


def test_freed_cached_blocks_stay_until_evicted_tail_first():
    m = make(gpu=8)
    prompt = list(range(17))  # 4 full blocks + 1 partial
    m.allocate("a", token_ids=prompt)
    m.mark_computed("a", 17)
    blocks = table(m, "a")
    m.free("a")  # partial block -> clean; full blocks -> evictable, tail first
    assert m.num_free_blocks() == 8 and m.gpu.free_blocks()[1] == blocks[3::-1]
    assert m.allocate("b", token_ids=prompt).num_cached_tokens == 16
    m.free("b")
    # 5 fresh blocks: the 4 clean ones, then the least recently released cached block
    m.allocate("x", 20)
    assert m.gpu.num_evictable == 3 and not m.gpu.is_cached(blocks[3])
    m.free("x")
    assert m.allocate("c", token_ids=prompt).num_cached_tokens == 12


def test_caller_given_block_hashes_share_like_tokens():
    m = make()
    m.allocate("a", 10, block_hashes=["h0", "h1", "h2"])  # only 2 full blocks use keys
    m.mark_computed("a", 10)
    assert len(m.prefix_cache) == 2
    assert m.allocate("b", 9, block_hashes=["h0", "h1"]).num_cached_tokens == 8
    assert m.allocate("c", 9, block_hashes=["h0", "zz"]).num_cached_tokens == 4


def test_can_allocate_counts_hits_on_blocks_in_use():
    m = make(gpu=5)
    prompt = list(range(16))
    m.allocate("a", token_ids=prompt + [1])  # 5 blocks: the whole pool
    m.mark_computed("a", 17)
    assert m.can_allocate(17, token_ids=prompt + [2]) is AllocStatus.LATER
    m.free("a")
    assert m.can_allocate(17, token_ids=prompt + [2]) is AllocStatus.OK


def test_cached_block_is_never_written_even_after_truncate():
    m = make()
    m.allocate("a", token_ids=list(range(8)))
    m.mark_computed("a", 8)
    cached = table(m, "a")[1]
    m.truncate("a", 6)
    r = m.append_slots("a")
    assert [tuple(p) for p in r.copies.tolist()] == [(cached, table(m, "a")[1])]
    assert table(m, "a")[1] != cached and m.gpu.is_cached(cached)


def test_two_identical_prompts_computed_together_keep_one_cached_copy():
    m = make()
    prompt = list(range(9))
    m.allocate("a", token_ids=prompt)
    m.allocate("b", token_ids=prompt)
    assert m.mark_computed("a", 9) == 2
    assert m.mark_computed("b", 9) == 0  # b's duplicate blocks stay private
    m.free("b")
    assert m.gpu.num_evictable == 0


def test_keys_hashed_at_arrival_with_token_ids_match_hashing_in_allocate():
    """block_hashes made by hash_block_tokens at arrival, given with the token ids, decide
    the same hits as hashing in allocate, and the ids let the chain go on past the prompt."""
    prompt = list(range(37))
    m = make(gpu=32)
    m.allocate("a", token_ids=prompt)
    m.mark_computed("a", 37)
    got = m.allocate("b", token_ids=prompt, block_hashes=hash_block_tokens(prompt, 4))
    assert got.num_cached_tokens == 36
    assert table(m, "b")[:9] == table(m, "a")[:9]


def test_hit_rate_counts_queried_full_blocks():
    m = make()
    tokens = np.arange(21)
    m.allocate("a", token_ids=tokens)
    m.mark_computed("a", 21)
    m.allocate("b", token_ids=tokens)
    assert m.prefix_cache.queried_blocks == 10 and m.prefix_cache.hit_blocks == 5
    assert m.prefix_cache.hit_rate == pytest.approx(0.5)
