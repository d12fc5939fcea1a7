"""Bad calls raise a named exception that says which sequence and why, before any change."""

import numpy as np
import pytest

from kvpager.core.errors import (
    DuplicateSequenceError,
    SequenceTooLongError,
    UnknownSequenceError,
    WrongDeviceError,
)
from kvpager.core.memory.manager import KVCacheManager

from .manager_helpers import state


def make(**kw) -> KVCacheManager:
    m = KVCacheManager(num_gpu_blocks=32, block_size=4, num_cpu_blocks=16, watermark=0.0,
                       enable_prefix_caching=True, **kw)
    m.allocate("a", token_ids=[1, 2, 3, 4, 5])
    m.mark_computed("a", 5)
    return m


@pytest.mark.parametrize("call", [
    lambda m: m.append_slots("ghost"),
    lambda m: m.free("ghost"),
    lambda m: m.free_many(["a", "ghost"]),
    lambda m: m.fork("ghost", "child"),
    lambda m: m.mark_computed("ghost", 3),
    lambda m: m.truncate("ghost", 1),
    lambda m: m.swap_out(["ghost"]),
    lambda m: m.rows_of(["a", "ghost"]),
])
def test_unknown_sequences_are_named(call):
    m = make()
    before = state(m)
    with pytest.raises(UnknownSequenceError, match="'ghost'"):
        call(m)
    assert state(m) == before


def test_double_free_names_the_sequence_and_changes_nothing():
    m = make()
    m.allocate("b", 3)
    m.free("a")
    before = state(m)
    with pytest.raises(UnknownSequenceError, match="unknown sequence 'a'"):
        m.free("a")
    with pytest.raises(ValueError, match="twice"):
        m.free_many(["b", "b"])
    assert state(m) == before and "b" in m


def test_fork_of_a_swapped_out_sequence_is_refused():
    m = make()
    m.swap_out(["a"])
    before = state(m)
    with pytest.raises(WrongDeviceError, match=r"'a'.*swapped out"):
        m.fork("a", "child")
    with pytest.raises(WrongDeviceError, match=r"'a'.*swapped out"):
        m.fork_many(["a"], ["child"])
    assert state(m) == before and "child" not in m


def test_fork_into_an_existing_id_is_refused():
    m = make()
    with pytest.raises(DuplicateSequenceError, match="'a' already exists"):
        m.fork("a", "a")


@pytest.mark.parametrize("batch", [False, True])
def test_append_past_max_model_len(batch: bool):
    m = make(max_model_len=7)
    m.append_slots("a")
    m.append_slots("a")  # 7 tokens: the limit
    before = state(m)
    with pytest.raises(SequenceTooLongError, match=r"'a' holds 7 tokens.*max_model_len=7"):
        if batch:
            m.append_slots_batch(m.rows_of(["a"]))
        else:
            m.append_slots("a")
    assert state(m) == before


def test_allocate_past_max_model_len_is_refused():
    m = make(max_model_len=8)
    with pytest.raises(ValueError, match="max_model_len=8"):
        m.allocate("b", 9)
    assert "b" not in m


def test_block_tables_of_a_swapped_out_sequence_are_refused():
    m = make()
    m.allocate("b", 6)
    m.swap_out(["a"])
    rows = m.rows_of(["a", "b"])
    with pytest.raises(WrongDeviceError, match="'a' is swapped out"):
        m.block_tables_tensor(rows)
    assert m.block_tables_array(m.rows_of(["b"])).shape == (1, 2)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_token_counts_name_the_argument(bad):
    m = make()
    with pytest.raises(ValueError, match="num_new_tokens"):
        m.append_slots_batch(m.rows_of(["a"]), bad)


def test_token_ids_of_the_wrong_shape_are_refused():
    m = make()
    before = state(m)
    with pytest.raises(ValueError, match="token_ids"):
        m.append_slots("a", 2, token_ids=[1])
    with pytest.raises(ValueError, match="token_ids"):
        m.append_slots_batch(m.rows_of(["a"]), 2, token_ids=np.asarray([[1, 2, 3]]))
    assert state(m) == before
