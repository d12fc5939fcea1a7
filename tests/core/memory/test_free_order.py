"""The free order (`CacheConfig.free_order`): blocks a sliding window releases are reused
before other requests' cached blocks, so window churn does not flush the prefix cache."""

from __future__ import annotations

import numpy as np
import pytest

from kvpager.core.config import CacheConfig
from kvpager.core.groups import FullAttentionSpec, SlidingWindowSpec
from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.hybrid import HybridKVCacheManager

BS = 4


def test_window_release_goes_before_other_cached_blocks() -> None:
    pool = BlockPool(6)
    a, b, c = (int(x) for x in pool.allocate(3))
    pool.register(["ka", "kb"], [a, b])
    pool.free([a])  # another request's cached prefix
    pool.free([b], first=True)  # a window's release: ahead of it
    pool.free([c], first=True)  # uncached: the clean stack
    assert pool.free_blocks()[1] == [b, a]
    assert int(pool.allocate(1)[0]) == c
    pool.allocate(3)  # the three never-used blocks
    assert int(pool.allocate(1)[0]) == b  # evicted before the other request's prefix
    assert pool.block_of("ka") == a and pool.block_of("kb") is None


def test_one_queue_puts_every_freed_block_behind_older_cached_ones() -> None:
    pool = BlockPool(3, one_queue=True)
    a, b, c = (int(x) for x in pool.allocate(3))
    pool.register(["ka"], [a])
    pool.free([a])
    pool.free([b, c], first=True)  # one queue: no order but release order
    assert pool.num_free == 3 and pool.num_evictable == 1
    assert int(pool.allocate(1)[0]) == a and pool.block_of("ka") is None
    assert pool.num_evictable == 0 and pool.allocate(2).tolist() == [b, c]
    pool.free([a, b])
    assert pool.clear_cached() == 0 and pool.num_free == 2


def conversation_hit_rate(free_order: str, gpu: int, known_tokens: bool) -> float:
    """Two users take turns on a windowed model (window 8, full attention beside it): each
    turn's prompt is the user's whole history plus 8 new tokens, then a 60-token answer."""
    m = HybridKVCacheManager(CacheConfig(
        num_gpu_blocks=gpu, block_size=BS, watermark=0.0, enable_prefix_caching=True,
        free_order=free_order, groups=(FullAttentionSpec(), SlidingWindowSpec(window=8))))
    rng = np.random.default_rng(0)
    history: dict[str, list[int]] = {"A": [], "B": []}
    for turn in range(3):
        for user in ("A", "B"):
            tokens = history[user] + rng.integers(0, 1000, 8).tolist()
            seq = (user, turn)
            m.allocate(seq, token_ids=tokens)
            m.mark_computed(seq, len(tokens))
            for _ in range(60):
                token = int(rng.integers(0, 1000))
                m.append_slots(seq, token_ids=[token] if known_tokens else None)
                tokens.append(token)
                m.mark_computed(seq, len(tokens))
            if known_tokens:  # each group's chain is its own: one key per full block
                for g in range(m.num_groups):
                    chains = m.group(g).prefix_chains
                    assert chains is not None
                    keys = chains.keys(m.rows.row(seq))
                    assert keys is not None and len(keys) == len(tokens) // BS
            m.free(seq)
            history[user] = tokens
    assert m.prefix_cache is not None
    return m.prefix_cache.hit_rate


@pytest.mark.parametrize(("known_tokens", "gpu"), [(True, 90), (False, 100)])
def test_window_first_keeps_a_conversations_prefix(known_tokens: bool, gpu: int) -> None:
    with_order = conversation_hit_rate("window_first", gpu, known_tokens)
    without = conversation_hit_rate("lru", gpu, known_tokens)
    assert with_order > without  # strictly: the one queue loses hits to window churn
    if known_tokens:  # every later turn hits its whole history
        assert with_order == pytest.approx((17 + 17 + 34 + 34) / (1 + 1 + 18 + 18 + 35 + 35))


def test_free_order_is_checked() -> None:
    with pytest.raises(ValueError, match="free_order"):
        CacheConfig(num_gpu_blocks=8, free_order="fifo")
