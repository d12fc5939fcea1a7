"""HybridKVCacheManager: groups in step, windows releasing memory, invariants under random
operations (fork / copy-on-write, swap, truncation) checked against a shadow model."""

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
    StateSpec,
    groups_from_layers,
    page_bytes,
)
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.memory.manager import KVCacheManager

BS = 4
TWO = (FullAttentionSpec(num_layers=2), SlidingWindowSpec(num_layers=2, window=6))


def make(gpu: int = 64, cpu: int = 32, groups=TWO) -> HybridKVCacheManager:
    return HybridKVCacheManager(CacheConfig(num_gpu_blocks=gpu, block_size=BS,
                                            num_cpu_blocks=cpu, watermark=0.0,
                                            groups=groups))


def check_refs(m: HybridKVCacheManager) -> None:
    """Each pool's reference counts equal the references all groups' tables hold."""
    for device, pool in (("gpu", m.gpu), ("cpu", m.cpu)):
        held: Counter[int] = Counter()
        for g in range(m.num_groups):
            sub = m.group(g)
            for s in sub.seq_ids():
                assert sub.rows.row(s) == m.rows.row(s)  # same row in every group
                if sub.device_of(s) == device:
                    held.update(b for b in sub.block_ids(s).tolist() if b != NULL_BLOCK)
        refs = pool.ref_counts
        assert {b: int(refs[b]) for b in np.flatnonzero(refs)} == dict(held)
        assert pool.num_free + len(held) == pool.num_blocks


def test_bad_specs_are_named() -> None:
    with pytest.raises(ValueError, match=r"SlidingWindowSpec\.window"):
        SlidingWindowSpec(window=0)
    with pytest.raises(ValueError, match=r"ChunkedLocalSpec\.chunk"):
        ChunkedLocalSpec(chunk=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"MLASpec\.latent_dim"):
        MLASpec(latent_dim=-1)
    with pytest.raises(ValueError, match="layer_types has 3 entries but num_layers is 4"):
        groups_from_layers(["full_attention"] * 3, 4)
    with pytest.raises(ValueError, match=r"layer_types\[1\]"):
        groups_from_layers(["full_attention", "cross_attention"], 2)
    with pytest.raises(ValueError, match="window must be given"):
        groups_from_layers(["sliding_attention", "full_attention"], 2)
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        CacheConfig(num_gpu_blocks=8, enable_prefix_caching=True,
                    groups=(FullAttentionSpec(), StateSpec(state_bytes=64)))
    with pytest.raises(ValueError, match=r"groups\[0\]"):
        CacheConfig(num_gpu_blocks=8, groups=(StateSpec(state_bytes=64),))
    with pytest.raises(ValueError, match="HybridKVCacheManager"):
        KVCacheManager(CacheConfig(num_gpu_blocks=8, groups=TWO))


def test_groups_from_layers_and_page_size() -> None:
    groups = groups_from_layers(["sliding_attention"] * 5 + ["full_attention"], 6,
                                window=1024, num_kv_heads=8, head_size=128)
    assert [g.kind for g in groups] == ["sliding_window", "full"]
    assert [g.num_layers for g in groups] == [5, 1]  # type: ignore[union-attr]
    # MLA: one latent per token per layer, no K/V doubling.
    assert MLASpec(num_layers=61, latent_dim=576).bytes_per_token == 61 * 576 * 2
    assert page_bytes(groups, 16) == 5 * 2 * 8 * 128 * 2 * 16


def test_window_releases_during_decode_and_keeps_positions() -> None:
    m = make()
    m.allocate("a", 10)
    m.mark_computed("a", 10)  # query at 10 reads 5..: block 0 (0..3) is dead
    win = m.group(1)
    assert win.block_ids("a").tolist()[0] == NULL_BLOCK
    assert m.group(0).block_ids("a").size == 3
    rows = m.rows_of(["a"])
    for _ in range(30):
        out = m.append_slots_batch(rows)
        assert out.group_slots is not None and len(out.group_slots) == 2
        check_refs(m)
    n = m.num_tokens("a")  # 40
    table = win.block_ids("a")
    assert table.size == 10  # positions kept
    live = np.flatnonzero(table != NULL_BLOCK)
    # only the blocks holding keys n - 6 .. n - 1 stay
    assert live.tolist() == list(range((n - 6) // BS, -(-n // BS)))
    # the window's slot of the last token is inside a live block
    last = int(out.group_slots[1][0])
    assert last // BS == table[(n - 1) // BS]
    # kernel tables show released entries as the pad, never -1
    tables = m.group_block_tables(rows, pad=0)
    assert tables[1].min() >= 0 and tables[1].shape == (1, 10)


def test_chunked_local_releases_whole_chunks() -> None:
    m = make(groups=(FullAttentionSpec(), ChunkedLocalSpec(chunk=8)))
    m.allocate("a", 17)
    m.mark_computed("a", 17)  # the query at 16 starts chunk 2: chunks 0, 1 are dead
    assert m.group(1).block_ids("a").tolist()[:4] == [NULL_BLOCK] * 4
    assert (m.group(1).block_ids("a")[4:] != NULL_BLOCK).all()


def test_window_group_holds_bounded_memory() -> None:
    m = make(gpu=40)
    m.allocate("a", 4)
    for _ in range(100):  # 104 tokens: full group 26 blocks; window keeps 98.. (2 blocks)
        m.append_slots("a")
    assert m.num_used_blocks() == 26 + 2
    with pytest.raises(OutOfBlocksError):  # the full group grows until the pool is spent
        for _ in range(1000):
            m.append_slots("a")
    check_refs(m)


def test_out_of_blocks_changes_no_group() -> None:
    m = make(gpu=4)
    m.allocate("a", 8)  # 2 + 2 blocks: the pool is full
    before = [m.group(g).block_ids("a").tolist() for g in range(2)]
    with pytest.raises(OutOfBlocksError):
        m.append_slots_batch(m.rows_of(["a"]))
    assert [m.group(g).block_ids("a").tolist() for g in range(2)] == before
    assert m.num_tokens("a") == 8


def test_truncate_refuses_into_released_history() -> None:
    m = make()
    m.allocate("a", 20)
    m.mark_computed("a", 20)
    with pytest.raises(ValueError, match="released"):
        m.truncate("a", 5)
    m.truncate("a", 18)
    assert m.num_tokens("a") == 18
    check_refs(m)


@pytest.mark.parametrize("seed", range(30))
def test_random_operations_keep_data_and_refs(seed: int) -> None:
    """A shadow executor: one value per slot in one page-addressed memory (every group's
    slots index the same pages); each token's value is written through every group's
    slots and read back through every group's table inside its window, after forks
    (copy-on-write), swaps and truncations."""
    rng = np.random.default_rng(seed)
    m = make(gpu=48, cpu=24)
    gpu = np.full(48 * BS, -1, dtype=np.int64)
    cpu = np.full(24 * BS, -1, dtype=np.int64)
    expect: dict[object, list[int]] = {}
    counter = [0]

    def value() -> int:
        counter[0] += 1
        return counter[0]

    def write(seq: object, slots_per_group) -> None:
        v = value()
        expect[seq].append(v)
        for slots in slots_per_group:
            gpu[int(slots[-1])] = v

    for _step in range(60):
        live = list(expect)
        on_gpu = [s for s in live if m.device_of(s) == "gpu"]
        op = rng.integers(6)
        try:
            if op == 0 or not live:
                s = ("seq", _step)
                n = int(rng.integers(1, 12))
                m.allocate(s, n)
                expect[s] = []
                for pos in range(n):
                    v = value()
                    expect[s].append(v)
                    for g in range(m.num_groups):
                        gpu[m.group_slot_mapping(g, s, pos, pos + 1)[0]] = v
                m.mark_computed(s, n)
            elif op == 1 and on_gpu:
                s = on_gpu[int(rng.integers(len(on_gpu)))]
                out = m.append_slots(s)
                for src, dst in out.copies.tolist():
                    gpu[dst * BS:(dst + 1) * BS] = gpu[src * BS:(src + 1) * BS]
                write(s, out.group_slots)
            elif op == 2 and on_gpu:
                s = on_gpu[int(rng.integers(len(on_gpu)))]
                child = ("fork", _step)
                m.fork(s, child)
                expect[child] = list(expect[s])
            elif op == 3 and live:
                s = live[int(rng.integers(len(live)))]
                m.free(s)
                del expect[s]
            elif op == 4 and on_gpu:
                s = on_gpu[int(rng.integers(len(on_gpu)))]
                if m.can_swap_out([s]):
                    for src, dst in m.swap_out([s]).tolist():
                        cpu[dst * BS:(dst + 1) * BS] = gpu[src * BS:(src + 1) * BS]
                        if m.gpu.ref_counts[src] == 0:  # no one else holds it: poison
                            gpu[src * BS:(src + 1) * BS] = -7
            elif op == 5 and live:
                s = live[int(rng.integers(len(live)))]
                if m.device_of(s) == "cpu":
                    for src, dst in m.swap_in([s]).tolist():
                        gpu[dst * BS:(dst + 1) * BS] = cpu[src * BS:(src + 1) * BS]
                else:
                    keep = int(rng.integers(max(0, m.num_tokens(s) - 3), m.num_tokens(s) + 1))
                    try:
                        m.truncate(s, keep)
                        del expect[s][keep:]
                    except ValueError:
                        pass
        except OutOfBlocksError:
            pass
        check_refs(m)
        for s, vals in expect.items():
            if m.device_of(s) != "gpu":
                continue
            n = len(vals)
            assert m.num_tokens(s) == n
            for g, spec in enumerate(m.groups):
                first = spec.first_needed(n + 1) if n else 0  # type: ignore[union-attr]
                table = m.group(g).block_ids(s)
                for pos in range(first, n):
                    block = int(table[pos // BS])
                    assert block != NULL_BLOCK
                    assert gpu[block * BS + pos % BS] == vals[pos], (s, g, pos)


def test_layers_per_group_splits_kinds_into_equal_groups() -> None:
    types = (["sliding_attention"] * 5 + ["full_attention"]) * 10 + ["sliding_attention"] * 2
    groups = groups_from_layers(types, 62, window=1024, num_kv_heads=16, head_size=128,
                                layers_per_group=10)
    assert [(g.kind, g.num_layers) for g in groups] == (  # type: ignore[union-attr]
        [("sliding_window", 10)] * 5 + [("sliding_window", 2), ("full", 10)])
    # the common page is the block of 10 layers, not of the 52 local ones
    assert page_bytes(groups, 16) == 10 * 2 * 16 * 128 * 2 * 16
    with pytest.raises(ValueError, match="layers_per_group"):
        groups_from_layers(types, 62, window=1024, layers_per_group=0)
