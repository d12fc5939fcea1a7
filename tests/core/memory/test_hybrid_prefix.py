"""Prefix caching across KV-cache groups: a hit is the longest prefix every group serves
(full attention every block, a window only what its window reads), checked on hand-made
cases and against a shadow executor whose values depend on the whole token prefix."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kvpager.core.config import CacheConfig
from kvpager.core.errors import OutOfBlocksError
from kvpager.core.groups import (
    NULL_BLOCK,
    ChunkedLocalSpec,
    FullAttentionSpec,
    MLASpec,
    SlidingWindowSpec,
)
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.plans import AllocStatus

BS = 4
WINDOW = (FullAttentionSpec(num_layers=2), SlidingWindowSpec(num_layers=2, window=6))
CHUNKED = (FullAttentionSpec(), ChunkedLocalSpec(chunk=8))
MLA = (MLASpec(num_layers=3, latent_dim=8), SlidingWindowSpec(window=5))


def make(gpu: int = 64, groups=WINDOW, cpu: int = 0) -> HybridKVCacheManager:
    return HybridKVCacheManager(CacheConfig(num_gpu_blocks=gpu, block_size=BS, watermark=0.0,
                                            num_cpu_blocks=cpu, enable_prefix_caching=True,
                                            groups=groups))


def test_hit_needs_every_full_block_and_only_the_window_of_a_window_group() -> None:
    m = make()
    prompt = list(range(100, 140))  # 10 blocks
    m.allocate("a", token_ids=prompt)
    m.mark_computed("a", 40)  # registers 10 blocks per group; the window frees blocks 0..7
    win = m.group(1)
    assert win.block_ids("a").tolist()[:8] == [NULL_BLOCK] * 8
    got = m.allocate("b", token_ids=prompt + [1, 2, 3, 4])
    assert got.num_cached_tokens == 40  # every group serves all 10 blocks
    assert m.group(0).block_ids("b")[:10].tolist() == m.group(0).block_ids("a")[:10].tolist()
    # the window group holds only what a query at 40 reads (keys 35..): blocks 8, 9
    head = win.block_ids("b")[:10].tolist()
    assert head[:8] == [NULL_BLOCK] * 8 and head[8:] == win.block_ids("a")[8:10].tolist()
    assert m.prefix_cache is not None and m.prefix_cache.gpu_hit_blocks == 10


def test_window_blocks_evicted_shorten_the_hit_to_what_all_groups_agree_on() -> None:
    m = make(gpu=32)
    prompt = list(range(100, 140))
    m.allocate("a", token_ids=prompt)
    m.mark_computed("a", 40)  # window blocks 0..7 are free but cached (evictable)
    window_freed = m.group(1).rows.released[m.rows.row("a")]
    assert window_freed == 8
    # a filler takes every clean page, then evicts the oldest cached: the window's 0..7
    m.allocate("filler", m.gpu.num_free // 2 * BS)
    assert m.gpu.num_evictable == 0
    m.free("filler")  # uncached pages: clean again
    # a prompt sharing 5 blocks with "a": the full group holds all 5 (a still runs), but a
    # query at 20 needs window blocks 3, 4, evicted; no shorter hit has its window either
    short = prompt[:20] + [7] * 5
    assert m.can_allocate(len(short), token_ids=short) is not AllocStatus.NEVER
    assert m.allocate("b", token_ids=short).num_cached_tokens == 0
    # the whole prompt's window (blocks 8, 9) is still held by "a": a full-length hit
    assert m.allocate("c", token_ids=prompt + [5]).num_cached_tokens == 40


def test_chunked_group_hit_needs_only_the_current_chunk() -> None:
    m = make(groups=CHUNKED)
    prompt = list(range(50, 70))  # 5 blocks; chunk = 2 blocks
    m.allocate("a", token_ids=prompt)
    m.mark_computed("a", 20)
    got = m.allocate("b", token_ids=prompt[:16] + [1, 2, 3])
    assert got.num_cached_tokens == 16
    # a query at 16 starts chunk 2; the group keeps the chunk of token 15 (blocks 2, 3)
    head = m.group(1).block_ids("b")[:4].tolist()
    assert head[:2] == [NULL_BLOCK] * 2 and NULL_BLOCK not in head[2:]


def test_state_groups_stay_refused_with_a_named_error() -> None:
    from kvpager.core.groups import StateSpec
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        CacheConfig(num_gpu_blocks=8, enable_prefix_caching=True,
                    groups=(FullAttentionSpec(), StateSpec(state_bytes=64)))


def _values(tokens: list[int]) -> list[int]:
    out, prev = [], 0
    for t in tokens:
        prev = hash((prev, t)) & ((1 << 62) - 1)
        out.append(prev)
    return out


def _check_refs(m: HybridKVCacheManager) -> None:
    held: Counter[int] = Counter()
    for g in range(m.num_groups):
        sub = m.group(g)
        for s in sub.seq_ids():
            if sub.device_of(s) == "gpu":
                held.update(b for b in sub.block_ids(s).tolist() if b != NULL_BLOCK)
    refs = m.gpu.ref_counts
    assert {b: int(refs[b]) for b in np.flatnonzero(refs)} == dict(held)


@pytest.mark.parametrize("groups", [WINDOW, CHUNKED, MLA], ids=["window", "chunked", "mla"])
@pytest.mark.parametrize("seed", range(8))
def test_random_conversations_read_back_their_own_prefix(groups, seed: int) -> None:
    """Values depend on every token before them, so a hit is right only if each group's
    shared blocks hold this sequence's values where its queries read them."""
    rng = np.random.default_rng(seed)
    m = make(gpu=40, groups=groups, cpu=16)
    mem = np.full(40 * BS, -1, dtype=np.int64)
    cpu = np.full(16 * BS, -1, dtype=np.int64)
    tokens: dict[object, list[int]] = {}
    for step in range(50):
        live = list(tokens)
        on_gpu = [s for s in live if m.device_of(s) == "gpu"]
        op = int(rng.integers(5))
        try:
            if op <= 1 or not live:
                base = tokens[live[int(rng.integers(len(live)))]] if live and op == 1 else []
                new = base + rng.integers(0, 3, size=int(rng.integers(1, 10))).tolist()
                s = ("seq", step)
                got = m.allocate(s, token_ids=new)
                tokens[s] = list(new)
                vals = _values(new)
                for g in range(m.num_groups):
                    for pos in range(got.num_cached_tokens, len(new)):
                        slot = m.group_slot_mapping(g, s, pos, pos + 1)[0]
                        block = slot // BS
                        assert m.gpu.ref_counts[block] == 1 and not m.gpu.cached_flags[block]
                        mem[slot] = vals[pos]
                m.mark_computed(s, len(new))
            elif op == 2 and on_gpu:
                s = on_gpu[int(rng.integers(len(on_gpu)))]
                tok = int(rng.integers(0, 3))
                out = m.append_slots(s, token_ids=[tok])
                for src, dst in out.copies.tolist():
                    mem[dst * BS:(dst + 1) * BS] = mem[src * BS:(src + 1) * BS]
                tokens[s].append(tok)
                v = _values(tokens[s])[-1]
                for slots in out.group_slots:
                    mem[int(slots[-1])] = v
                m.mark_computed(s, len(tokens[s]))
            elif op == 3 and live:
                s = live[int(rng.integers(len(live)))]
                m.free(s)
                del tokens[s]
            elif op == 4 and live:
                s = live[int(rng.integers(len(live)))]
                if m.device_of(s) == "cpu":
                    for src, dst in m.swap_in([s]).tolist():
                        mem[dst * BS:(dst + 1) * BS] = cpu[src * BS:(src + 1) * BS]
                elif m.can_swap_out([s]):
                    for src, dst in m.swap_out([s]).tolist():
                        cpu[dst * BS:(dst + 1) * BS] = mem[src * BS:(src + 1) * BS]
        except OutOfBlocksError:
            pass
        _check_refs(m)
        for s, toks in tokens.items():
            if m.device_of(s) != "gpu":
                continue
            vals, n = _values(toks), len(toks)
            for g, spec in enumerate(m.groups):
                first = spec.first_needed(n + 1)  # type: ignore[union-attr]
                table = m.group(g).block_ids(s)
                for pos in range(first, n):
                    block = int(table[pos // BS])
                    assert block != NULL_BLOCK
                    assert mem[block * BS + pos % BS] == vals[pos], (s, g, pos)
    assert m.prefix_cache is not None and m.prefix_cache.gpu_hit_blocks > 0  # hits happened
