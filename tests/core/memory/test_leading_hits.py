"""leading_hits: the longest leading run of cached keys, looked up a slice at a time, is the
same run a key-by-key walk finds, wherever the first miss falls."""

from __future__ import annotations

import numpy as np
import pytest

from kvpager.core.memory.block_pool import _HIT_SLICE, leading_hits


def walk(table: dict, keys) -> list[int]:
    out = []
    for key in keys:
        if key not in table:
            break
        out.append(table[key])
    return out


@pytest.mark.parametrize("miss", [0, 1, _HIT_SLICE - 1, _HIT_SLICE, _HIT_SLICE + 1,
                                  3 * _HIT_SLICE, None])
def test_the_run_ends_at_the_first_miss(miss):
    keys = list(range(100, 100 + 4 * _HIT_SLICE + 5))
    table = {k: 7 * k for k in keys}
    if miss is not None:
        del table[keys[miss]]
    table[keys[-1] + 1] = 0  # a key that is not asked for changes nothing
    got = leading_hits(table.get, keys)
    assert got == walk(table, keys)
    assert len(got) == (len(keys) if miss is None else miss)


def test_later_hits_after_a_miss_are_not_counted_and_arrays_work():
    keys = np.arange(3 * _HIT_SLICE, dtype=np.int64)
    table = {int(k): int(k) for k in keys if k != 5}
    assert leading_hits(table.get, keys) == [0, 1, 2, 3, 4]
    assert leading_hits(table.get, keys[:0]) == []
