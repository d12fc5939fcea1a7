"""group_step: the one-token step of every group at once gives what the planner gives
(same slots, tables, counts, room, blocks) and changes nothing where a group needs a plan;
the windows' crossing tests agree with the release bound."""

from __future__ import annotations

import copy

import numpy as np

from kvpager.core.config import CacheConfig
from kvpager.core.groups import ChunkedLocalSpec, FullAttentionSpec, SlidingWindowSpec
from kvpager.core.memory.append import apply_append, plan_append
from kvpager.core.memory.group_step import step_row, step_rows
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.memory.window import crossing, crossing_phase, first_needed_blocks

GROUPS = (FullAttentionSpec(num_layers=2), SlidingWindowSpec(num_layers=2, window=8))


def make(block_size: int, max_model_len: int | None = None) -> HybridKVCacheManager:
    return HybridKVCacheManager(CacheConfig(num_gpu_blocks=4000, block_size=block_size,
                                            watermark=0.0, groups=GROUPS,
                                            max_model_len=max_model_len))


def state(m: HybridKVCacheManager) -> list:
    out = []
    for g in range(m.num_groups):
        s = m.group(g).rows
        out.append((s.table.copy(), s.ntokens.copy(), s.nblocks.copy(), s.room.copy()))
    return out + [m.gpu.num_free, m.gpu.free_blocks()[0].tolist()]


def same(a: list, b: list) -> None:
    for (ta, na, ba, ra), (tb, nb, bb, rb) in zip(a[:-2], b[:-2], strict=True):
        width = min(ta.shape[1], tb.shape[1])  # widening is lazy: compare what is held
        assert (ta[:, :width] == tb[:, :width]).all()
        assert (na == nb).all() and (ba == bb).all() and (ra == rb).all()
    assert a[-2:] == b[-2:]


def test_step_rows_matches_the_planner() -> None:
    for bs in (4, 6):  # a power of two (shifts) and not
        m = make(bs)
        rng = np.random.default_rng(bs)
        for i in range(40):
            m.allocate(i, int(rng.integers(1, 30)))
        rows = m.rows_of(rng.permutation(40).tolist())
        for _ in range(3 * bs):
            planned = copy.deepcopy(m)
            stores = [m.group(g).rows for g in range(m.num_groups)]
            got = step_rows(stores, m.gpu, rows, bs, None)
            assert got is not None
            slots, before, offset = got
            assert (offset == before % bs).all()
            for g in range(planned.num_groups):
                store = planned.group(g).rows
                plan = plan_append(store, planned.gpu, rows, 1, 0, bs, None)
                assert (plan.ntokens == before).all()
                want = apply_append(store, planned.gpu, plan, bs, None)
                assert (want.slots == slots[g]).all() and not want.copies.size
            same(state(m), state(planned))


def test_step_rows_leaves_shared_blocks_to_the_planner() -> None:
    m = make(4)
    m.allocate("a", 6)
    m.fork("a", "b")  # both rows write into the shared block 1: copy on write
    before = state(m)
    stores = [m.group(g).rows for g in range(m.num_groups)]
    assert step_rows(stores, m.gpu, m.rows_of(["a", "b"]), 4, None) is None
    same(state(m), before)
    result = m.append_slots_batch(m.rows_of(["a", "b"]))  # the planned path copies
    assert result.num_copies == 2  # the first writer copies in each group


def test_step_rows_refuses_past_max_model_len_unchanged() -> None:
    m = make(4, max_model_len=8)
    m.allocate("a", 8)
    before = state(m)
    stores = [m.group(g).rows for g in range(m.num_groups)]
    assert step_rows(stores, m.gpu, m.rows_of(["a"]), 4, 8) is None
    assert step_row(stores, m.gpu, int(m.rows_of(["a"])[0]), 4, 8) is None
    same(state(m), before)


def test_step_row_advances_free_groups_and_leaves_shared_ones() -> None:
    m = make(4)
    m.allocate("a", 5)
    m.allocate("c", 4)
    stores = [m.group(g).rows for g in range(m.num_groups)]
    row_c = int(m.rows_of(["c"])[0])
    slots = step_row(stores, m.gpu, row_c, 4, None)  # a fresh block in every group
    assert slots is not None and None not in slots
    assert [m.group(g).num_tokens("c") for g in range(2)] == [5, 5]
    assert slots[0] == int(m.group(0).block_ids("c")[1]) * 4
    m.fork("a", "b")
    row_a = int(m.rows_of(["a"])[0])
    assert step_row(stores, m.gpu, row_a, 4, None) == [None, None]
    assert [m.group(g).num_tokens("a") for g in range(2)] == [5, 5]


def test_crossing_agrees_with_the_release_bound() -> None:
    n = np.arange(0, 200, dtype=np.int64)
    for bs in (4, 16):
        for spec in (SlidingWindowSpec(window=12), SlidingWindowSpec(window=10),
                     ChunkedLocalSpec(chunk=8), ChunkedLocalSpec(chunk=12)):
            got = crossing(spec, n, n % bs, bs)
            moved = np.flatnonzero(first_needed_blocks(spec, n + 1, bs)
                                   != first_needed_blocks(spec, n, bs))
            assert set(moved.tolist()) <= set(got.tolist())  # every release is tested
            period, phase = crossing_phase(spec, bs)
            assert got.tolist() == np.flatnonzero((n + 1) % period == phase).tolist()
