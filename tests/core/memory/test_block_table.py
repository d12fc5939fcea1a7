"""BlockTable: block counts, slots, kernel tensors."""

import numpy as np
import pytest

from kvpager.core.memory.block_table import BlockTable, block_tables_to_tensor, num_blocks_for


@pytest.mark.parametrize(("tokens", "bs", "blocks"), [(0, 16, 0), (1, 16, 1), (16, 16, 1),
                                                      (17, 16, 2), (33, 8, 5)])
def test_num_blocks_for(tokens, bs, blocks):
    assert num_blocks_for(tokens, bs) == blocks


def test_slots_follow_block_times_size_plus_offset():
    table = BlockTable(4, [7, 2, 9], num_tokens=10)
    assert table.slot(0) == 28 and table.slot(5) == 9 and table.slot(11) == 39
    assert table.slot_mapping().tolist() == [28, 29, 30, 31, 8, 9, 10, 11, 36, 37]
    assert table.slot_mapping(9, 12).tolist() == [37, 38, 39]
    assert table.slot_mapping().dtype == np.int64
    assert table.num_free_slots == 2


def test_bad_tables_and_positions_are_rejected():
    with pytest.raises(ValueError, match="num_tokens"):
        BlockTable(4, [1], num_tokens=5)
    with pytest.raises(ValueError, match="block_size"):
        BlockTable(0)
    with pytest.raises(ValueError, match="position"):
        BlockTable(4, [1], 2).slot(4)
    with pytest.raises(ValueError, match="start"):
        BlockTable(4, [1], 2).slot_mapping(3, 2)


def test_tables_are_immutable_values():
    table = BlockTable(4, [1, 2], 5)
    with pytest.raises(ValueError):
        table.blocks[0] = 3
    assert table == BlockTable(4, np.array([1, 2]), 5)
    assert list(table) == [1, 2] and len(table) == 2 and table[1] == 2


def test_kernel_tensor_is_padded_int32():
    torch = pytest.importorskip("torch")
    t = block_tables_to_tensor([BlockTable(4, [3, 1], 5), [6]], width=3)
    assert t.dtype == torch.int32
    assert t.tolist() == [[3, 1, 0], [6, 0, 0]]
    with pytest.raises(ValueError, match="width"):
        block_tables_to_tensor([[1, 2, 3]], width=2)
