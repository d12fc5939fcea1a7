"""RowTable: one owner allocates, grows and resets every per-row column."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpager.core.errors import DuplicateSequenceError, UnknownSequenceError
from kvpager.core.rows import RowTable


def test_a_reused_row_starts_with_every_column_at_its_fill() -> None:
    table = RowTable(capacity=2)
    table.add_column("tokens", np.int64, fill=0)
    table.add_column("chain", np.int64, fill=-1, width=3)
    row = table.add("a")
    table.tokens[row] = 17
    table.chain[row] = [5, 6, 7]
    table.remove(row)
    again = table.add("b")
    assert again == row
    assert table.tokens[again] == 0
    assert table.chain[again].tolist() == [-1, -1, -1]


def test_columns_registered_later_cover_live_rows() -> None:
    table = RowTable(capacity=2)
    table.add("a")
    table.add_column("late", np.float64, fill=1.5)
    assert table.late[table.row("a")] == 1.5


def test_growth_keeps_values_and_fills_new_rows() -> None:
    table = RowTable(capacity=1)
    table.add_column("x", np.int32, fill=-7)
    first = table.add("a")
    table.x[first] = 3
    rows = table.add_many(["b", "c", "d"])
    assert table.capacity >= 4
    assert table.x[first] == 3
    assert table.x[rows].tolist() == [-7, -7, -7]
    assert table.rows(["d", "a"]).tolist() == [rows[2], first]


def test_widen_keeps_values_and_fills_the_new_width() -> None:
    table = RowTable(capacity=2)
    table.add_column("chain", np.int64, fill=-1, width=2)
    row = table.add("a")
    table.chain[row] = [1, 2]
    widened = table.widen("chain", 3)
    assert widened.shape[1] >= 3
    assert widened[row, :3].tolist() == [1, 2, -1]
    with pytest.raises(ValueError, match="1-D"):
        table.add_column("flat", np.int64)
        table.widen("flat", 4)


def test_errors_name_the_sequence_or_column() -> None:
    table = RowTable()
    table.add_column("x", np.int64)
    table.add("a")
    with pytest.raises(DuplicateSequenceError, match="'a'"):
        table.check_new("a")
    with pytest.raises(UnknownSequenceError, match="'z'"):
        table.row("z")
    with pytest.raises(UnknownSequenceError, match="'z'"):
        table.rows(["a", "z"])
    with pytest.raises(ValueError, match="already registered"):
        table.add_column("x", np.int64)
    with pytest.raises(ValueError, match="attribute of the table"):
        table.add_column("capacity", np.int64)
    with pytest.raises(KeyError, match="no column 'y'"):
        table.column("y")
    with pytest.raises(ValueError, match="hashable"):
        table.check_new(["unhashable"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        RowTable(capacity=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=80))
def test_rows_match_a_dict_model(ops: list[tuple[bool, int]]) -> None:
    """Any add/remove order: live rows are distinct, every fresh row reads its fill."""
    table = RowTable(capacity=1)
    table.add_column("value", np.int64, fill=-1)
    model: dict[int, int] = {}
    for add, seq in ops:
        if add and seq not in table:
            row = table.add(seq)
            assert table.value[row] == -1
            table.value[row] = seq
            model[seq] = row
        elif not add and seq in table:
            table.remove(table.row(seq))
            del model[seq]
    assert sorted(table.seq_ids()) == sorted(model)
    assert len(set(model.values())) == len(model)
    for seq, row in model.items():
        assert table.row(seq) == row
        assert table.value[row] == seq


def test_an_object_column_resets_to_its_fill_on_reuse() -> None:
    table = RowTable(capacity=1)
    table.add_column("keys", object, fill=None)
    row = table.add("a")
    table.keys[row] = [b"k1", b"k2"]
    table.remove(row)
    rows = table.add_many(["b", "c"])  # reuses `row` and grows the table
    assert row in rows.tolist()
    assert table.keys[rows].tolist() == [None, None]
    table.keys[rows[0]] = ["x"]
    assert table.keys[rows[0]] == ["x"] and table.keys[rows[1]] is None
