"""ContiguousManager on its own: reservations per policy, buddy placement at admission,
hand-computed memory breakdowns, forks that copy, swaps of whole regions, and errors."""

import numpy as np
import pytest

from kvpager.core.errors import (
    DuplicateSequenceError,
    OutOfBlocksError,
    UnknownSequenceError,
    WrongDeviceError,
)
from kvpager.core.plans import AllocStatus
from kvpager.core.protocol import KVManager
from kvpager.sim.buddy import NoFreeBlockError
from kvpager.sim.contiguous import POLICIES, ContiguousManager, ReservationExceededError


def snapshot(m: ContiguousManager):
    regions = {s: (tuple(m.region(s)), m.num_tokens(s)) for s in m.seq_ids()}
    return (regions, m.spare_regions(), m.gpu.free_blocks(),
            None if m.cpu is None else m.cpu.free_blocks())


@pytest.mark.parametrize("policy", POLICIES)
def test_implements_the_scheduler_protocol(policy):
    assert isinstance(ContiguousManager(64, policy, max_model_len=32), KVManager)


@pytest.mark.parametrize(("policy", "mml", "prompt", "final", "slots"), [
    ("orca-pow2", None, 7, 7 + 25, 7 + 32),  # the vLLM paper: output 25 reserves 32
    ("orca-pow2", None, 7, 7 + 32, 7 + 32),
    ("orca-pow2", None, 7, 7 + 33, 7 + 64),
    ("orca-pow2", None, 7, 7 + 1, 7 + 1),
    ("orca-pow2", 60, 7, 7 + 33, 60),  # capped at max_model_len
    ("orca-oracle", None, 7, 7 + 25, 32),
    ("orca-max", 40, 7, 7 + 25, 40),
    ("orca-max", 40, 30, None, 40),  # no hint needed
])
def test_reservation_per_policy(policy, mml, prompt, final, slots):
    m = ContiguousManager(256, policy, max_model_len=mml)
    assert m.reservation(prompt, final) == slots
    m.allocate("s", prompt, max_tokens=final)
    size = 1 << (slots - 1).bit_length()  # the buddy allocator rounds up to a power of two
    assert m.region("s") == ("gpu", 0, size)
    assert m.num_free_blocks() == 256 - size


def test_pow2_breakdown_by_hand():
    m = ContiguousManager(112, "orca-pow2")  # top-level blocks 64@0, 32@64, 16@96
    m.allocate("a", 7, max_tokens=32)  # 7 + 32 = 39 slots -> block 64@0
    m.allocate("b", 10, max_tokens=16)  # 10 + 8 = 18 slots -> block 32@64
    assert m.region("a") == ("gpu", 0, 64) and m.region("b") == ("gpu", 64, 32)
    rows = m.rows_of(["a", "b"])
    final = np.array([31, 15])  # the final token's KV is never computed
    # token 7 + 10; reserved (31 - 7) + (15 - 10); internal (64 - 31) + (32 - 15).
    # A waiting request of prompt 5, output 9 reserves 5 + 16 = 21 -> a 32-block: the free
    # 16@96 cannot hold it.
    assert m.memory_breakdown(rows, final, 14, next_num_tokens=5) == {
        "token": 17, "reserved": 29, "internal": 50, "external": 16, "cached": 0, "free": 0}
    assert m.can_allocate(5, max_tokens=14) is AllocStatus.LATER
    assert m.memory_breakdown(rows, final) == {  # nothing waits: the 16 slots are free
        "token": 17, "reserved": 29, "internal": 50, "external": 0, "cached": 0, "free": 16}
    m.append_slots_batch(rows, 3)
    assert m.memory_breakdown(rows, final)["token"] == 23
    assert m.memory_breakdown(rows, final)["reserved"] == 23


def test_oracle_and_max_breakdowns_by_hand():
    m = ContiguousManager(112, "orca-oracle")
    m.allocate("a", 7, max_tokens=32)  # 32 -> the top-level 32@64, no split needed
    m.allocate("b", 10, max_tokens=16)  # 16 -> the top-level 16@96
    assert m.region("a").offset == 64 and m.region("b").offset == 96
    rows, final = m.rows_of(["a", "b"]), np.array([31, 15])
    # internal: one never-computed slot each; the waiting request (final 14) takes a 16-block
    assert m.memory_breakdown(rows, final, 14) == {
        "token": 17, "reserved": 29, "internal": 2, "external": 0, "cached": 0, "free": 64}

    m = ContiguousManager(112, "orca-max", max_model_len=40)  # every region: 40 -> 64
    m.allocate("a", 7, max_tokens=32)
    assert m.can_allocate(10, max_tokens=16) is AllocStatus.LATER  # 32@64 and 16@96 left
    rows = m.rows_of(["a"])
    assert m.memory_breakdown(rows, np.array([31]), 16) == {
        "token": 7, "reserved": 24, "internal": 33, "external": 48, "cached": 0, "free": 0}


def test_admission_needs_one_large_enough_block_not_enough_free_slots():
    m = ContiguousManager(64, "orca-oracle")
    for i in range(4):
        m.allocate(i, 4, max_tokens=16)
    assert [m.region(i).offset for i in range(4)] == [0, 16, 32, 48]
    m.free(0)
    m.free(2)
    assert m.num_free_blocks() == 32 and m.gpu.largest_free() == 16
    # 20 slots would fit in the 32 free ones if they were one region; they are two 16s
    assert m.can_allocate(4, max_tokens=20) is AllocStatus.LATER
    before = snapshot(m)
    with pytest.raises(NoFreeBlockError, match="largest free block has 16"):
        m.allocate("x", 4, max_tokens=20)
    assert snapshot(m) == before
    rows = m.rows_of([1, 3])
    assert m.memory_breakdown(rows, np.array([15, 15]), 20)["external"] == 32
    assert m.can_allocate(4, max_tokens=16) is AllocStatus.OK


def test_never_when_even_an_empty_cache_cannot_place_the_regions():
    m = ContiguousManager(100, "orca-oracle")  # top-level 64, 32, 4
    assert m.can_allocate(10, max_tokens=64) is AllocStatus.OK
    assert m.can_allocate(10, max_tokens=65) is AllocStatus.NEVER  # a 128-block
    assert m.can_allocate(10, max_tokens=33, num_seqs=2) is AllocStatus.NEVER  # two 64s
    assert m.can_allocate(10, max_tokens=32, num_seqs=3) is AllocStatus.OK  # 32 + 32 + 32
    mx = ContiguousManager(100, "orca-max", max_model_len=40)
    assert mx.can_allocate(41) is AllocStatus.NEVER
    assert mx.can_allocate(10, max_tokens=41) is AllocStatus.NEVER
    assert mx.can_allocate(10, max_tokens=40) is AllocStatus.OK
    with pytest.raises(ValueError, match="max_model_len"):
        mx.allocate("s", 10, max_tokens=41)


def test_watermark_is_kept_free_at_admission():
    m = ContiguousManager(64, "orca-oracle", watermark=0.25)  # 16 slots
    assert m.can_allocate(4, max_tokens=64) is AllocStatus.NEVER
    assert m.can_allocate(4, max_tokens=32) is AllocStatus.OK
    m.allocate("a", 4, max_tokens=32)
    assert m.can_allocate(4, max_tokens=32) is AllocStatus.LATER  # would leave 0 < 16
    assert m.can_allocate(4, max_tokens=16) is AllocStatus.OK  # leaves 16


def test_samples_reserve_every_region_at_admission_and_forks_copy_the_prompt():
    m = ContiguousManager(64, "orca-oracle")
    got = m.allocate("p", 5, max_tokens=12, num_seqs=3)  # three 16-blocks: 0, 16, 32
    assert got.blocks.tolist() == [0, 1, 2, 3, 4] and got.num_cached_tokens == 0
    assert m.spare_regions() == [(16, 16), (32, 16)] and m.num_free_blocks() == 16
    # token 5; reserved: p will fill 6 more, each spare 11; internal 3 * (16 - 11)
    assert m.memory_breakdown(m.rows_of(["p"]), np.array([11])) == {
        "token": 5, "reserved": 28, "internal": 15, "external": 0, "cached": 0, "free": 16}
    pairs = m.fork_many(["p", "p"], ["c1", "c2"])
    expect = [[i, 16 + i] for i in range(5)] + [[i, 32 + i] for i in range(5)]
    assert pairs.tolist() == expect
    assert m.take_copies().tolist() == expect and m.take_copies().shape == (0, 2)
    assert m.num_copied_slots == 10 and m.spare_regions() == []
    assert [m.region(c).offset for c in ("c1", "c2")] == [16, 32]
    assert m.num_tokens("c1") == 5
    m.fork("c1", "c3")  # no spare left: a new block, 16@48
    assert m.region("c3") == ("gpu", 48, 16) and m.take_copies().shape == (5, 2)
    before = snapshot(m)
    with pytest.raises(OutOfBlocksError):
        m.fork("c1", "c4")
    assert snapshot(m) == before
    assert m.free_many(["p", "c1", "c2", "c3"]).tolist() == [5, 5, 5, 5]
    assert m.num_free_blocks() == 64 and m.gpu.free_blocks() == [(0, 64)]


def test_the_last_member_releases_unused_spares():
    m = ContiguousManager(64, "orca-oracle")
    m.allocate("p", 5, max_tokens=12, num_seqs=3)
    assert m.free("p") == 5  # recomputation or abort before the fork
    assert m.num_free_blocks() == 64 and m.spare_regions() == []


def test_decode_slots_follow_the_region_and_never_leave_it():
    m = ContiguousManager(64, "orca-oracle")
    m.allocate("x", 3, max_tokens=4)  # 4 slots -> block 4@0
    m.allocate("a", 5, max_tokens=8)  # 8 -> block 8@8
    rows = m.rows_of(["a"])
    assert m.blocks_needed_batch(rows).tolist() == [0]
    assert m.blocks_needed_batch(rows, 1, 50).tolist() == [0]  # lookahead never counts
    got = m.append_slots_batch(rows)
    assert got.slots.tolist() == [13] and got.copies.shape == (0, 2)
    assert m.append_slots_batch(rows, 2).slots.tolist() == [14, 15]
    assert m.seq_lens(rows).tolist() == [8]
    assert m.blocks_needed_batch(rows).tolist() == [1]
    before = snapshot(m)
    with pytest.raises(ReservationExceededError, match="region of 8 slots"):
        m.append_slots_batch(rows)
    assert snapshot(m) == before
    assert m.slot_mapping("a", 2, 5).tolist() == [10, 11, 12]


def test_swap_moves_whole_regions_and_spares_come_back():
    m = ContiguousManager(64, "orca-oracle", num_cpu_tokens=32)
    m.allocate("a", 5, max_tokens=12)  # 16@0
    m.allocate("g", 3, max_tokens=8, num_seqs=2)  # 8@16 and spare 8@24
    m.append_slots_batch(m.rows_of(["a"]), 2)
    assert m.can_swap_out(["a"])
    pairs = m.swap_out(["a"])
    assert pairs.tolist() == [[i, i] for i in range(7)]  # to the CPU's 16@0
    assert m.region("a") == ("cpu", 0, 16) and m.num_free_blocks() == 48
    assert m.num_free_blocks("cpu") == 16
    pairs = m.swap_out(["g"])  # g's spare holds no data: released on the GPU, not moved
    assert pairs.tolist() == [[16, 16], [17, 17], [18, 18]]
    assert m.spare_regions() == [] and m.num_free_blocks() == 64
    assert m.num_free_blocks("cpu") == 8
    m.allocate("z", 40, max_tokens=64)  # the whole GPU
    assert m.can_swap_in(["g"]) is AllocStatus.LATER
    m.free("z")
    assert m.can_swap_in(["g"]) is AllocStatus.OK
    pairs = m.swap_in(["g"])  # region first (8@0), then the spare again (8@8)
    assert pairs.tolist() == [[16, 0], [17, 1], [18, 2]]
    assert m.region("g") == ("gpu", 0, 8) and m.spare_regions() == [(8, 8)]
    assert m.fork_many(["g"], ["g1"]).tolist() == [[0, 8], [1, 9], [2, 10]]
    m.swap_in(["a"])
    assert m.num_slots_swapped_out == 10 and m.num_slots_swapped_in == 10
    assert m.num_free_blocks("cpu") == 32


def test_swap_out_needs_a_cpu_block_large_enough():
    m = ContiguousManager(64, "orca-oracle", num_cpu_tokens=24)  # CPU: 16@0, 8@16
    m.allocate("a", 5, max_tokens=12)  # 16
    m.allocate("b", 5, max_tokens=12)  # 16
    assert m.can_swap_out(["a"]) and not m.can_swap_out(["a", "b"])
    before = snapshot(m)
    with pytest.raises(NoFreeBlockError):
        m.swap_out(["a", "b"])
    assert snapshot(m) == before


def test_can_allocate_many_without_max_tokens_bounds_with_max_model_len():
    m = ContiguousManager(128, "orca-oracle", max_model_len=64)
    assert m.can_allocate_many([5, 5]) is AllocStatus.OK  # two 64-blocks
    assert m.can_allocate_many([5, 5, 5]) is AllocStatus.NEVER
    assert m.can_allocate_many([5, 5, 5], max_tokens=16) is AllocStatus.OK
    with pytest.raises(ValueError, match="max_tokens"):
        ContiguousManager(128, "orca-pow2").can_allocate_many([5])


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"capacity_tokens": 0, "policy": "orca-oracle"}, "capacity_tokens"),
    ({"capacity_tokens": 64, "policy": "lru"}, "policy"),
    ({"capacity_tokens": 64, "policy": "orca-max"}, "max_model_len"),
    ({"capacity_tokens": 64, "policy": "orca-max", "max_model_len": 1}, "max_model_len"),
    ({"capacity_tokens": 64, "policy": "orca-oracle", "num_cpu_tokens": -1}, "num_cpu_tokens"),
    ({"capacity_tokens": 64, "policy": "orca-oracle", "watermark": 1.0}, "watermark"),
])
def test_bad_construction_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ContiguousManager(**kwargs)


def test_bad_calls_raise_before_changing_anything():
    m = ContiguousManager(64, "orca-pow2", num_cpu_tokens=16)
    with pytest.raises(ValueError, match="max_tokens"):
        m.can_allocate(5)
    with pytest.raises(ValueError, match="max_tokens"):
        m.allocate("a", 5)
    with pytest.raises(ValueError, match="num_tokens"):
        m.allocate("a", 0, max_tokens=5)
    with pytest.raises(ValueError, match="num_seqs"):
        m.can_allocate(5, max_tokens=9, num_seqs=0)
    m.allocate("a", 5, max_tokens=9)
    m.allocate("b", 5, max_tokens=9)
    before = snapshot(m)
    with pytest.raises(DuplicateSequenceError):
        m.allocate("a", 5, max_tokens=9)
    with pytest.raises(UnknownSequenceError):
        m.free("zz")
    with pytest.raises(ValueError, match="twice"):
        m.free_many(["a", "a"])
    with pytest.raises(UnknownSequenceError):
        m.free_many(["b", "zz"])
    with pytest.raises(ValueError, match="pair up"):
        m.fork_many(["a"], [])
    with pytest.raises(ValueError, match="twice"):
        m.fork_many(["a", "a"], ["c", "c"])
    with pytest.raises(ValueError, match="twice"):
        m.append_slots_batch(m.rows_of(["a", "a"]))
    with pytest.raises(ValueError, match="next_num_tokens"):
        m.memory_breakdown(m.rows_of(["a"]), np.array([8]), 12)
    with pytest.raises(ValueError, match="final_slots"):
        m.memory_breakdown(m.rows_of(["a"]), np.array([8, 8]))
    with pytest.raises(ValueError, match="device"):
        m.num_free_blocks("tpu")
    assert snapshot(m) == before
    m.swap_out(["a"])
    with pytest.raises(WrongDeviceError):
        m.fork("a", "c")
    with pytest.raises(WrongDeviceError):
        m.blocks_needed_batch(m.rows_of(["a"]))
    with pytest.raises(WrongDeviceError):
        m.swap_out(["a"])
    assert m.free("a") == 5 and m.num_free_blocks("cpu") == 16
    with pytest.raises(ValueError, match="swap space"):
        ContiguousManager(64, "orca-oracle").swap_out(["x"])


def test_prefix_hints_are_ignored_nothing_is_shared():
    m = ContiguousManager(64, "orca-oracle")
    m.allocate("a", 8, max_tokens=16, block_hashes=["h0", "h1"])
    got = m.allocate("b", 8, max_tokens=16, block_hashes=["h0", "h1"])
    assert got.num_cached_tokens == 0 and m.region("b").offset == 16
    assert m.mark_computed("b", 8) == 0


def test_a_reused_row_starts_clean_after_swap_and_free():
    """Regions are columns of the manager's row table: a row freed while swapped out and
    reused by a new sequence carries none of its old region, device or group."""
    m = ContiguousManager(64, "orca-oracle", num_cpu_tokens=64)
    m.allocate("a", 5, max_tokens=12, num_seqs=2)  # a region + a spare, 16 slots each
    m.swap_out(["a"])
    assert m.spare_regions() == []  # released while the whole group is on the CPU
    m.free("a")
    assert len(m.groups) == 0 and m.gpu.free_slots == 64 and m.cpu.free_slots == 64
    m.allocate("b", 3, max_tokens=4)
    assert m.rows.row("b") == 0  # the row "a" had
    assert m.region("b") == ("gpu", 0, 4)
    assert m.spare_regions() == []
