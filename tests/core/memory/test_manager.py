"""KVCacheManager: allocation, growth, fork and copy-on-write, swapping, preemption."""

import numpy as np
import pytest

from kvpager import (
    DuplicateSequenceError,
    OutOfBlocksError,
    UnknownSequenceError,
    WrongDeviceError,
)
from kvpager.core.config import CacheConfig
from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.plans import AllocStatus

from .manager_helpers import canonical, pairs, state, table


def make(gpu=16, bs=4, cpu=8, **kw) -> KVCacheManager:
    return KVCacheManager(num_gpu_blocks=gpu, block_size=bs, num_cpu_blocks=cpu,
                          watermark=kw.pop("watermark", 0.0), **kw)


def test_allocate_gives_ceil_blocks_in_pool_order():
    m = make()
    a = m.allocate("a", 9)
    assert a.blocks.tolist() == [0, 1, 2] and a.num_cached_tokens == 0
    assert m.allocate("b", 4).blocks.tolist() == [3]
    assert m.num_free_blocks() == 12 and m.num_used_blocks() == 4
    assert m.slot_mapping("a", 0, 9).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_append_fills_the_tail_then_takes_a_new_block():
    m = make()
    m.allocate("a", 3)
    assert m.append_slots("a").slots.tolist() == [3]
    r = m.append_slots("a")
    assert r.slots.tolist() == [4] and table(m, "a") == [0, 1]
    r = m.append_slots("a", num_new_tokens=5)
    assert r.slots.tolist() == [5, 6, 7, 8, 9] and table(m, "a") == [0, 1, 2]
    assert m.num_tokens("a") == 10 and r.num_copies == 0


def test_lookahead_slots_are_allocated_but_not_counted():
    m = make()
    m.allocate("a", 4)
    r = m.append_slots("a", 1, num_lookahead_slots=6)
    assert r.slots.tolist() == [4]
    assert table(m, "a") == [0, 1, 2] and m.num_tokens("a") == 5
    assert m.blocks_needed("a", 1, 6) == 0


def test_fork_shares_then_first_writer_copies_the_partial_block():
    m = make()
    m.allocate("p", 6)  # blocks 0 (full), 1 (2 of 4 tokens)
    m.fork("p", "c")
    assert table(m, "c") == [0, 1]
    assert m.gpu.ref_count(0) == 2 and m.gpu.ref_count(1) == 2
    r = m.append_slots("c")
    assert pairs(r.copies) == [(1, 2)] and r.slots.tolist() == [2 * 4 + 2]
    assert table(m, "c") == [0, 2] and table(m, "p") == [0, 1]
    r = m.append_slots("p")  # sole owner now: writes in place
    assert r.num_copies == 0 and r.slots.tolist() == [6]
    assert m.num_cow_copies == 1
    assert [m.gpu.ref_count(b) for b in (0, 1, 2)] == [2, 1, 1]


def test_fork_at_a_block_boundary_needs_no_copy():
    m = make()
    m.allocate("p", 8)
    m.fork("p", "c")
    r = m.append_slots("c")
    assert r.num_copies == 0 and table(m, "c") == [0, 1, 2]


def test_shared_empty_lookahead_block_is_replaced_without_copy():
    m = make()
    m.allocate("p", 4)
    m.append_slots("p", 0, num_lookahead_slots=4)  # block 1 allocated, holds no token
    m.fork("p", "c")
    r = m.append_slots("c")
    assert r.num_copies == 0 and table(m, "c") == [0, 2] and table(m, "p") == [0, 1]


def test_free_releases_only_unshared_blocks():
    m = make()
    m.allocate("p", 6)
    m.fork("p", "c")
    m.append_slots("c")
    assert m.free("p") == 6
    assert m.gpu.ref_count(1) == 0 and m.gpu.ref_count(0) == 1
    assert "p" not in m and len(m) == 1
    m.free("c")
    assert m.num_free_blocks() == 16


def test_can_allocate_ok_later_never_with_watermark():
    m = make(gpu=10, watermark=0.2)  # 2 blocks kept free for running sequences
    assert m.can_allocate(32) is AllocStatus.OK  # 8 blocks, leaves 2
    assert m.can_allocate(33) is AllocStatus.NEVER  # 9 blocks never leave 2 of 10
    m.allocate("a", 5)
    assert m.can_allocate(32) is AllocStatus.LATER
    m.free("a")
    assert m.can_allocate(32) is AllocStatus.OK


def test_batch_append_matches_sequential_appends():
    rng = np.random.default_rng(1)
    seq, bat = make(gpu=64), make(gpu=64)
    for m in (seq, bat):
        for i in range(6):
            m.allocate(i, int(rng.integers(1, 9)) if m is seq else seq.num_tokens(i))
        m.fork(0, "f0")
        m.fork(0, "f1")
        m.fork(3, "f3")
    order = [0, "f1", 3, 1, "f0", "f3", 2, 4, 5]
    for _ in range(7):
        slots_seq, copies_seq = [], []
        for s in order:
            r = seq.append_slots(s)
            slots_seq += r.slots.tolist()
            copies_seq += pairs(r.copies)
        r = bat.append_slots_batch(bat.rows_of(order))
        assert r.slots.tolist() == slots_seq
        assert sorted(pairs(r.copies)) == sorted(copies_seq)
        assert state(bat)[0] == state(seq)[0]


@pytest.mark.parametrize(("k", "lookahead"), [(3, 0), (6, 2), (1, 5)])
def test_multi_token_batch_append_matches_sequential_appends(k, lookahead):
    seq, bat = make(gpu=64), make(gpu=64)
    for m in (seq, bat):
        for i, n in enumerate([1, 4, 6, 7]):
            m.allocate(i, n)
        m.append_slots(1, 0, num_lookahead_slots=6)  # pre-allocated empty blocks
        m.fork(1, "f1")
        m.fork(2, "f2")
        m.fork(2, "g2")
    order = [2, "f1", 0, "g2", 1, "f2", 3]
    for _ in range(3):
        slots_seq, copies_seq = [], []
        for s in order:
            r = seq.append_slots(s, k, lookahead)
            slots_seq += r.slots.tolist()
            copies_seq += pairs(r.copies)
        r = bat.append_slots_batch(bat.rows_of(order), k, lookahead)
        assert canonical(bat, order, r.slots.tolist(), pairs(r.copies)) == canonical(
            seq, order, slots_seq, copies_seq)


def test_batch_copy_on_write_copies_only_what_it_must():
    m = make()
    m.allocate("p", 6)
    m.fork("p", "a")
    m.fork("p", "b")  # three holders of block 1
    r = m.append_slots_batch(m.rows_of(["p", "a", "b"]))
    assert r.num_copies == 2  # the last writer keeps the original
    tails = [table(m, s)[1] for s in ("p", "a", "b")]
    assert len(set(tails)) == 3 and tails[2] == 1 and m.gpu.ref_count(1) == 1


def test_blocks_needed_batch_counts_new_blocks_and_copies():
    m = make()
    m.allocate("full", 4)
    m.allocate("part", 2)
    m.fork("part", "twin")
    rows = m.rows_of(["full", "part", "twin", ])
    need = m.blocks_needed_batch(rows)
    assert need.tolist() == [1, 1, 0]  # the later twin in the batch keeps the shared block
    before = m.num_free_blocks()
    m.append_slots_batch(rows)
    assert before - m.num_free_blocks() == int(need.sum())


def test_swap_out_and_in_keep_group_sharing():
    m = make()
    m.allocate("p", 6)
    m.fork("p", "c")
    m.allocate("other", 3)
    out = m.swap_out(["p", "c"])
    assert pairs(out) == [(0, 0), (1, 1)]
    assert m.device_of("p") == "cpu" and table(m, "c") == [0, 1]
    assert m.cpu.ref_count(0) == 2 and m.gpu.ref_count(0) == 0
    assert m.num_free_blocks("gpu") == 15 and m.num_free_blocks("cpu") == 6
    back = m.swap_in(["c", "p"])
    # released tail first (1, then 0), reused most recent first (0, then 1)
    assert pairs(back) == [(0, 0), (1, 1)]
    assert table(m, "p") == [0, 1] == table(m, "c") and m.gpu.ref_count(1) == 2
    assert m.num_free_blocks("cpu") == 8
    assert m.num_blocks_swapped_out == 2 and m.num_blocks_swapped_in == 2


def test_swap_out_leaves_blocks_others_still_use():
    m = make()
    m.allocate("p", 6)
    m.fork("p", "c")
    m.swap_out(["c"])
    assert m.gpu.ref_count(0) == 1 and m.cpu.ref_count(0) == 1
    assert table(m, "p") == [0, 1]


def test_swap_is_all_or_nothing():
    m = make(gpu=16, cpu=2)
    m.allocate("a", 8)
    m.allocate("b", 4)
    assert not m.can_swap_out(["a", "b"])
    before = state(m)
    with pytest.raises(OutOfBlocksError, match="cpu"):
        m.swap_out(["a", "b"])
    assert state(m) == before
    m.swap_out(["a"])
    assert m.can_swap_in(["a"]) is AllocStatus.OK


def test_swap_wrong_device_and_no_swap_space():
    m = make()
    m.allocate("a", 3)
    with pytest.raises(WrongDeviceError, match="'a' is on the gpu"):
        m.swap_in(["a"])
    m.swap_out(["a"])
    with pytest.raises(WrongDeviceError, match="swapped out"):
        m.append_slots("a")
    with pytest.raises(WrongDeviceError):
        m.append_slots_batch(m.rows_of(["a"]))
    with pytest.raises(ValueError, match="no CPU swap space"):
        make(cpu=0).swap_out(["x"])


def test_recompute_preemption_frees_and_forgets():
    m = make()
    m.allocate("a", 7)
    m.append_slots("a", 2)
    assert m.preempt_recompute("a") == 9
    assert "a" not in m and m.num_free_blocks() == 16


def test_truncate_frees_whole_blocks_past_the_end():
    m = make()
    m.allocate("a", 10)
    m.truncate("a", 5)
    assert table(m, "a") == [0, 1] and m.num_tokens("a") == 5
    assert m.append_slots("a").slots.tolist() == [5]
    with pytest.raises(ValueError, match="num_tokens"):
        m.truncate("a", 7)


def test_failed_calls_change_nothing():
    m = make(gpu=4)
    m.allocate("a", 6)
    m.fork("a", "b")
    before = state(m)
    with pytest.raises(DuplicateSequenceError):
        m.allocate("a", 1)
    with pytest.raises(DuplicateSequenceError):
        m.fork("a", "b")
    with pytest.raises(UnknownSequenceError, match="'zz'"):
        m.fork("zz", "y")
    with pytest.raises(UnknownSequenceError):
        m.free("zz")
    with pytest.raises(OutOfBlocksError):
        m.allocate("c", 13)
    with pytest.raises(OutOfBlocksError):
        m.append_slots("a", 12)
    with pytest.raises(ValueError, match="num_tokens"):
        m.allocate("c", 0)
    with pytest.raises(ValueError, match="twice"):
        m.append_slots_batch(np.array(m.rows_of(["a", "a"])))
    with pytest.raises(UnknownSequenceError, match="row 99"):
        m.append_slots_batch(np.array([99]))
    assert state(m) == before


def test_batch_out_of_blocks_changes_nothing():
    m = make(gpu=3)
    m.allocate("a", 4)
    m.allocate("b", 4)
    m.allocate("c", 2)
    m.fork("c", "d")
    before = state(m)
    with pytest.raises(OutOfBlocksError, match="needed 3"):
        m.append_slots_batch(m.rows_of(["a", "b", "c", "d"]))
    assert state(m) == before


@pytest.mark.parametrize(("field", "value"), [("num_gpu_blocks", 0), ("block_size", -1),
                                              ("num_cpu_blocks", -2), ("watermark", 1.0),
                                              ("block_size", 2.0)])
def test_bad_config_values_name_the_field(field, value):
    fields = {"num_gpu_blocks": 8, field: value}
    with pytest.raises(ValueError, match=field):
        CacheConfig(**fields)


def test_kernel_block_tables_come_from_the_table_array():
    torch = pytest.importorskip("torch")
    m = make()
    m.allocate("a", 9)
    m.allocate("b", 2)
    t = m.block_tables_tensor(m.rows_of(["b", "a"]), width=4)
    assert t.dtype == torch.int32 and t.tolist() == [[3, 0, 0, 0], [0, 1, 2, 0]]
    assert m.seq_lens(m.rows_of(["a", "b"])).tolist() == [9, 2]


def test_fork_many_and_free_many_match_one_by_one():
    one, many = make(gpu=32), make(gpu=32)
    for m in (one, many):
        m.allocate("a", 6)
        m.allocate("b", 9)
        m.fork("b", "z")
        m.swap_out(["b", "z"])  # shared on the CPU too
    for p, c in [("a", "x"), ("a", "y")]:
        one.fork(p, c)
    many.fork_many(["a", "a"], ["x", "y"])
    assert state(many) == state(one)
    assert many.gpu.ref_count(0) == 3 and many.cpu.ref_count(0) == 2
    for s in ("a", "z"):  # one on each device
        one.free(s)
    assert many.free_many(["a", "z"]).tolist() == [6, 9]
    assert state(many) == state(one)


def test_fork_many_and_free_many_check_everything_first():
    m = make()
    m.allocate("a", 5)
    before = state(m)
    with pytest.raises(DuplicateSequenceError):
        m.fork_many(["a", "a"], ["x", "a"])
    with pytest.raises(ValueError, match="twice"):
        m.fork_many(["a", "a"], ["x", "x"])
    with pytest.raises(ValueError, match="pair up"):
        m.fork_many(["a"], ["x", "y"])
    with pytest.raises(UnknownSequenceError):
        m.free_many(["a", "nope"])
    with pytest.raises(ValueError, match="twice"):
        m.free_many(["a", "a"])
    assert state(m) == before
