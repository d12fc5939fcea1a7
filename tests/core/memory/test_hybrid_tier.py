"""The host prefix tier of a hybrid model: one tier for every group, keys tagged per group;
a hit continues into it only as far as every group can serve (full attention every block,
a window only what its window reads), and the loads carry each group's own content."""

from __future__ import annotations

import numpy as np

from kvpager.core.config import CacheConfig
from kvpager.core.groups import NULL_BLOCK, FullAttentionSpec, SlidingWindowSpec
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.plans import AllocStatus

BS = 4
GROUPS = (FullAttentionSpec(num_layers=2), SlidingWindowSpec(num_layers=2, window=6))
PROMPT = list(range(100, 124))  # 6 full blocks


def make(tier: int, gpu: int = 24) -> HybridKVCacheManager:
    return HybridKVCacheManager(CacheConfig(
        num_gpu_blocks=gpu, block_size=BS, watermark=0.0, enable_prefix_caching=True,
        num_cpu_prefix_blocks=tier, groups=GROUPS))


class Executor:
    """GPU and host pages holding a label per page: (group, logical block) of the prompt
    that wrote it; carries out the tier's copies."""

    def __init__(self, m: HybridKVCacheManager, tier: int) -> None:
        self.m = m
        self.gpu = np.full(m.gpu.num_blocks, -1, dtype=np.int64)
        self.host = np.full(tier, -1, dtype=np.int64)

    def write_prompt(self, seq: str) -> None:
        for g in range(self.m.num_groups):
            for i, block in enumerate(self.m.group(g).block_ids(seq).tolist()):
                if block != NULL_BLOCK:
                    self.gpu[block] = 100 * g + i

    def transfer(self) -> tuple[np.ndarray, np.ndarray]:
        offloads, loads = self.m.take_host_transfers()
        for gpu, host in offloads.tolist():
            self.host[host] = self.gpu[gpu]
        for host, gpu in loads.tolist():
            self.gpu[gpu] = self.host[host]
        return offloads, loads


def evict_everything(m: HybridKVCacheManager, ex: Executor) -> None:
    m.allocate("filler", m.num_free_blocks() // m.num_groups * BS)
    ex.transfer()
    m.free("filler")


def test_a_prompt_evicted_to_the_tier_is_loaded_back_per_group() -> None:
    m = make(tier=32)
    ex = Executor(m, 32)
    m.allocate("a", token_ids=PROMPT)
    ex.write_prompt("a")
    m.mark_computed("a", len(PROMPT))  # the window releases blocks 0..3 (cached, free)
    m.free("a")
    evict_everything(m, ex)
    assert m.prefix_cache is not None and len(m.prefix_cache) == 0  # all gone from GPU
    assert m.can_allocate(len(PROMPT) + 2, token_ids=PROMPT + [1, 2]) is AllocStatus.OK
    free = m.num_free_blocks()
    got = m.allocate("b", token_ids=PROMPT + [1, 2])
    _, loads = ex.transfer()
    assert got.num_cached_tokens == len(PROMPT)  # every block, from the tier
    full, window = m.group(0).block_ids("b"), m.group(1).block_ids("b")
    # full attention loads all 6 blocks, the window only what a query at 24 reads (4, 5)
    assert sorted(loads[:, 1].tolist()) == sorted(full[:6].tolist() + window[4:6].tolist())
    assert window[:4].tolist() == [NULL_BLOCK] * 4
    assert [int(ex.gpu[b]) for b in full[:6]] == list(range(6))  # each group's own content
    assert [int(ex.gpu[b]) for b in window[4:6]] == [104, 105]
    # pages: 6 + 2 loaded, plus each group's last (partial) block
    assert free - m.num_free_blocks() == 8 + 2
    assert m.prefix_cache.gpu_hit_blocks == 0 and m.prefix_cache.cpu_hit_blocks == 6
    m.mark_computed("b", len(PROMPT) + 2)  # the loaded pages are registered on the GPU
    assert m.allocate("c", token_ids=PROMPT + [3]).num_cached_tokens == len(PROMPT)
    assert not ex.transfer()[1].size  # served by the GPU now: nothing loaded


def test_the_hit_stops_where_some_group_has_neither_gpu_nor_tier_copy() -> None:
    # The GPU evicts the window's released pages first (blocks 0..3), then the others; a
    # tier of 10 then holds every full-attention block but not the window's block 4.
    m = make(tier=10)
    ex = Executor(m, 10)
    m.allocate("a", token_ids=PROMPT)
    ex.write_prompt("a")
    m.mark_computed("a", len(PROMPT))
    m.free("a")
    evict_everything(m, ex)
    tier = m.prefix_cache.tier  # type: ignore[union-attr]
    assert tier is not None
    keys = m.group(0).prompt_keys(len(PROMPT), PROMPT, None)
    held = [[(g, k) in tier for k in keys] for g in range(2)]
    # the rule, by hand: full attention needs blocks 0 .. h-1, the window (6 tokens) the
    # blocks from (h * 4 - 6) // 4 to h - 1; at most 5 (the last token is computed)
    expect = max(h for h in range(6)
                 if all(held[0][:h]) and all(held[1][max(h * BS - 6, 0) // BS : h]))
    assert all(held[0]) and not held[1][4] and expect == 4  # full attention alone: 5
    got = m.allocate("b", token_ids=PROMPT + [1])
    _, loads = ex.transfer()
    assert got.num_cached_tokens == expect * BS
    assert loads.shape[0] == expect + min(expect, 2 if expect * BS > 6 else expect)
    full = m.group(0).block_ids("b")
    assert [int(ex.gpu[b]) for b in full[:expect]] == list(range(expect))
