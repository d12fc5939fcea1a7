"""Buddy allocator: hand-worked offsets, coalescing, non-power-of-two spaces, errors, and a
stateful test against a naive model that scans a list of free blocks."""

import copy

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvpager.core.errors import DoubleFreeError, OutOfBlocksError, UnknownBlockError
from kvpager.sim.buddy import BuddyAllocator, NoFreeBlockError


def test_hand_worked_offsets_and_coalescing_in_16_slots():
    b = BuddyAllocator(16)
    assert b.alloc(3) == 0  # 16 -> 8 | 8@8 -> 4@0 | 4@4; takes the 4-block at 0
    assert b.free_blocks() == [(4, 4), (8, 8)]
    assert b.alloc(1) == 4  # the smallest sufficient free block is 4@4: split to 1@4
    assert b.free_blocks() == [(5, 1), (6, 2), (8, 8)]
    assert b.alloc(5) == 8  # needs 8: the block at 8, whole
    assert b.alloc(2) == 6
    assert b.free_blocks() == [(5, 1)] and b.free_slots == 1 and b.used_slots == 15
    assert b.free(4) == 1  # 1@4 merges with its buddy 1@5 into 2@4; 2@6 is in use
    assert b.free_blocks() == [(4, 2)]
    assert b.free(6) == 2  # 2@6 + 2@4 -> 4@4; its buddy 4@0 is in use
    assert b.free_blocks() == [(4, 4)]
    assert b.free(0) == 4  # 4@0 + 4@4 -> 8@0; 8@8 in use
    assert b.free_blocks() == [(0, 8)] and b.largest_free() == 8
    b.free(8)
    assert b.free_blocks() == [(0, 16)] and b.num_allocated == 0


def test_lowest_address_among_blocks_of_the_smallest_sufficient_order():
    b = BuddyAllocator(16)
    assert [b.alloc(4) for _ in range(4)] == [0, 4, 8, 12]
    b.free(12)
    b.free(4)
    assert b.free_blocks() == [(4, 4), (12, 4)]
    assert b.alloc(1) == 4  # both free blocks are order 2: the lower one is split


def test_non_power_of_two_capacity_is_covered_largest_first():
    b = BuddyAllocator(13)
    assert b.free_blocks() == [(0, 8), (8, 4), (12, 1)]
    assert b.free_regions() == [8, 4, 1] and b.largest_free() == 8
    assert b.alloc(4) == 8  # the 4-block, not a split of the 8-block
    assert b.alloc(1) == 12
    assert b.alloc(1) == 0
    assert b.free_blocks() == [(1, 1), (2, 2), (4, 4)]
    for offset in (12, 0, 8):
        b.free(offset)
    # Freed, the top-level blocks stay apart: 8@8 would reach past slot 13.
    assert b.free_blocks() == [(0, 8), (8, 4), (12, 1)] and b.free_slots == 13
    with pytest.raises(NoFreeBlockError):
        b.alloc(9)  # 16 slots: more than any block of a 13-slot space


def test_top_level_blocks_do_not_merge_past_the_end():
    b = BuddyAllocator(12)  # 8@0 and 4@8; 4@8's "buddy" 4@12 does not exist
    a, c = b.alloc(8), b.alloc(4)
    b.free(c)
    b.free(a)
    assert b.free_blocks() == [(0, 8), (8, 4)]


def test_min_order_rounds_small_regions_and_leaves_a_tail():
    b = BuddyAllocator(22, min_order=2)
    assert b.usable == 20 and b.unusable_slots == 2
    assert b.free_blocks() == [(0, 16), (16, 4)]
    assert b.block_size_for(1) == 4 and b.block_size_for(5) == 8
    assert b.alloc(1) == 16  # a 4-slot block: the top-level 4@16
    assert b.free_slots + b.used_slots == b.usable
    with pytest.raises(UnknownBlockError, match="outside"):
        b.free(21)


def test_admission_needs_a_large_enough_block_not_a_large_enough_total():
    b = BuddyAllocator(16)
    offsets = [b.alloc(4) for _ in range(4)]
    b.free(offsets[0])
    b.free(offsets[2])
    assert b.free_slots == 8 and b.largest_free() == 4 and b.free_regions() == [4, 4]
    assert b.free_slots_below(8) == 8 and b.free_slots_below(4) == 0
    assert not b.fits([8]) and b.fits([8], empty=True) and b.fits([4, 3])
    before = (b.free_blocks(), b.allocated_blocks())
    with pytest.raises(OutOfBlocksError) as err:  # the named subclass is an OutOfBlocksError
        b.alloc(5)
    assert isinstance(err.value, NoFreeBlockError) and err.value.largest == 4
    assert "8 slots" in str(err.value) and "largest free block has 4" in str(err.value)
    assert (b.free_blocks(), b.allocated_blocks()) == before  # nothing changed
    b.free(offsets[1])  # 4@4 joins 4@0, then 8@0 stays: 8@8 half in use
    assert b.alloc(5) == 0


def test_fits_follows_allocation_order():
    b = BuddyAllocator(16)
    assert b.fits([8, 4, 4]) and not b.fits([8, 4, 4, 1])  # halves left by splits are used
    b.alloc(8)  # free: 8@8
    # 4 then 8: the 4 splits the only 8-block, and the 8 no longer fits; 8 alone fits.
    assert not b.fits([4, 8]) and b.fits([8])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_alloc_rejects_bad_sizes_by_name(bad):
    b = BuddyAllocator(8)
    with pytest.raises(ValueError, match="num_slots"):
        b.alloc(bad)
    assert b.free_blocks() == [(0, 8)]


def test_free_errors_say_what_was_wrong():
    b = BuddyAllocator(16)
    a = b.alloc(8)
    b.alloc(2)  # 2@8
    with pytest.raises(UnknownBlockError, match=r"inside .* allocated at 0"):
        b.free(4)
    with pytest.raises(DoubleFreeError, match="free block"):
        b.free(12)  # inside the free 4@12
    with pytest.raises(UnknownBlockError, match="outside"):
        b.free(16)
    with pytest.raises(UnknownBlockError, match="outside"):
        b.free(-1)
    with pytest.raises(UnknownBlockError, match="must be an int"):
        b.free("0")
    with pytest.raises(UnknownBlockError, match="allocated"):
        b.size_of(2)
    b.free(a)
    with pytest.raises(DoubleFreeError):
        b.free(a)
    assert b.size_of(8) == 2 and b.free_slots == 14


@pytest.mark.parametrize(("kwargs", "name"), [({"capacity": 0}, "capacity"),
                                              ({"capacity": 2.0}, "capacity"),
                                              ({"capacity": 8, "min_order": -1}, "min_order"),
                                              ({"capacity": 3, "min_order": 2}, "capacity")])
def test_bad_construction_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BuddyAllocator(**kwargs)


class NaiveBuddy:
    """The model: free blocks in one list, scanned in full on every call."""

    def __init__(self, capacity: int, min_order: int) -> None:
        self.capacity = capacity - capacity % (1 << min_order)
        self.min_order = min_order
        self.free: list[tuple[int, int]] = []  # (offset, size)
        offset = 0
        size = 1 << self.capacity.bit_length()
        while size >= 1 << min_order:
            if self.capacity & size:
                self.free.append((offset, size))
                offset += size
            size >>= 1
        self.used: dict[int, int] = {}

    def alloc(self, n: int) -> int | None:
        size = max(1 << self.min_order, 1 << (n - 1).bit_length())
        fitting = [(s, o) for o, s in self.free if s >= size]
        if not fitting:
            return None
        s, o = min(fitting)
        self.free.remove((o, s))
        while s > size:
            s //= 2
            self.free.append((o + s, s))
        self.used[o] = size
        return o

    def release(self, offset: int) -> None:
        o, s = offset, self.used.pop(offset)
        while True:
            buddy = o ^ s
            lo = min(o, buddy)
            if lo + 2 * s > self.capacity or (buddy, s) not in self.free:
                break
            self.free.remove((buddy, s))
            o, s = lo, 2 * s
        self.free.append((o, s))


class BuddyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.b: BuddyAllocator | None = None

    @precondition(lambda self: self.b is None)
    @rule(capacity=st.integers(1, 300), min_order=st.sampled_from([0, 0, 1, 3]))
    def start(self, capacity, min_order):
        min_order = min(min_order, capacity.bit_length() - 1)
        self.b = BuddyAllocator(capacity, min_order)
        self.model = NaiveBuddy(capacity, min_order)
        self.initial = sorted(self.model.free)

    @precondition(lambda self: self.b is not None)
    @rule(n=st.integers(1, 140))
    def alloc(self, n):
        expect = self.model.alloc(n)
        assert self.b.fits([n]) == (expect is not None)
        if expect is None:
            with pytest.raises(NoFreeBlockError):
                self.b.alloc(n)
        else:
            assert self.b.alloc(n) == expect

    @precondition(lambda self: self.b is not None and self.model.used)
    @rule(data=st.data())
    def free(self, data):
        offset = data.draw(st.sampled_from(sorted(self.model.used)))
        size = self.model.used[offset]
        self.model.release(offset)
        assert self.b.free(offset) == size

    @precondition(lambda self: self.b is not None)
    @rule(ns=st.lists(st.integers(1, 70), max_size=5))
    def fits_is_sequential_allocation(self, ns):
        trial = copy.deepcopy(self.model)
        assert self.b.fits(ns) == all(trial.alloc(n) is not None for n in ns)
        empty = NaiveBuddy(self.b.capacity, self.b.min_order)
        assert self.b.fits(ns, empty=True) == all(empty.alloc(n) is not None for n in ns)

    @precondition(lambda self: self.b is not None and self.model.used)
    @rule()
    def free_everything(self):
        for offset in list(self.model.used):
            self.model.release(offset)
            self.b.free(offset)
        assert self.b.free_blocks() == self.initial  # coalescing restores the start

    @invariant()
    def matches_the_model_and_tiles_the_space(self):
        if self.b is None:
            return
        b = self.b
        assert b.free_blocks() == sorted(self.model.free)
        assert b.allocated_blocks() == sorted(self.model.used.items())
        owner = np.zeros(b.usable, dtype=np.int64)
        for offset, size in b.free_blocks() + b.allocated_blocks():
            assert offset % size == 0 and size >= 1 << b.min_order  # aligned, power of two
            assert size & (size - 1) == 0
            owner[offset : offset + size] += 1
        assert (owner == 1).all()  # free and used blocks cover every slot exactly once
        assert b.free_slots + b.used_slots == b.usable
        assert b.free_slots == sum(s for _, s in b.free_blocks())
        assert b.largest_free() == max((s for _, s in b.free_blocks()), default=0)
        free = set(b.free_blocks())
        for offset, size in free:  # coalescing is complete: no two free buddies
            buddy = offset ^ size
            if min(offset, buddy) + 2 * size <= b.usable:
                assert (buddy, size) not in free


BuddyMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40,
                                          deadline=None)
test_buddy_against_a_naive_model = BuddyMachine.TestCase
