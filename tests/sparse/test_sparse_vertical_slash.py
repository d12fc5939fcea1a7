"""convert_vertical_slash_indexes and its merge-head variant, on both backends."""

from __future__ import annotations

import random
import re

import pytest
import torch
from sparse_oracles import listed_keys, vertical_slash_tables

from kvpager.sparse import (
    convert_vertical_slash_indexes,
    convert_vertical_slash_indexes_mergehead,
)


def i32(rows: object) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32)


def table_rows(tables: tuple[torch.Tensor, ...], b: int, h: int) -> list[tuple[list, list]]:
    """(blocks, columns) per row block of one (batch, head), cut at the counts."""
    block_count, block_offset, column_count, column_index = tables
    return [
        (
            block_offset[b, h, m, : block_count[b, h, m]].tolist(),
            column_index[b, h, m, : column_count[b, h, m]].tolist(),
        )
        for m in range(block_count.shape[2])
    ]


def assert_matches_oracle(tables, expected, context_size, block_m) -> None:
    block_count, block_offset, column_count, column_index = tables
    batch, heads, rows = block_count.shape
    assert rows == -(-context_size // block_m)
    for b in range(batch):
        for h in range(heads):
            for m in range(rows):
                blocks, columns = expected.get((b, h, m), ([], []))
                where = f"(b={b}, h={h}, m={m})"
                assert block_count[b, h, m] == len(blocks), where
                assert block_offset[b, h, m, : len(blocks)].tolist() == blocks, where
                assert column_count[b, h, m] == len(columns), where
                assert column_index[b, h, m, : len(columns)].tolist() == columns, where
                # Entries past the counts are zero-filled, not left over from other rows.
                assert not block_offset[b, h, m, len(blocks):].any(), where
                assert not column_index[b, h, m, len(columns):].any(), where


# --- hand-computed cases ------------------------------------------------------------------
# q = kv = 100 keys, 16 x 16 blocks, verticals {0, 1, 2, 3, 50}, slashes {70, 10, 0}.
# Row block m covers queries [16m, 16m + 16) at key positions of the same value.
HAND_CAUSAL = [
    ([0], []),  # slash 10 and 0 both give [0, 16): every vertical below 16 is inside
    # Slash 10 gives [6, 22); the diagonal's end 32 is within 16 of 22, so the range grows by
    # a whole 16 to [6, 38) (vLLM's rule), listed as blocks 6 and 22. Columns 0..3 lie
    # before it; 50 lies after the last range, which a causal row block drops.
    ([6, 22], [0, 1, 2, 3]),
    ([22, 38], [0, 1, 2, 3]),
    ([38, 54], [0, 1, 2, 3]),  # 50 is inside [38, 70)
    ([0, 54, 70], [50]),  # slash 70 reaches back to [0, 16); 50 sits in the gap
    ([10, 70, 86], [0, 1, 2, 3, 50]),  # block 86 runs past kv = 100: the kernel masks it
    ([26, 86], [0, 1, 2, 3, 50]),  # [86, 118) is cut at kv = 100: one block, not two
    ([], []),  # queries 112.. do not exist (q = 100)
]


def test_hand_computed_causal(backend: str) -> None:
    tables = convert_vertical_slash_indexes(
        i32([100]), i32([100]), i32([[[0, 1, 2, 3, 50]]]), i32([[[70, 10, 0]]]),
        128, 16, 16, True, backend=backend,
    )
    assert [t.dtype for t in tables] == [torch.int32] * 4
    assert [tuple(t.shape) for t in tables] == [(1, 1, 8), (1, 1, 8, 3), (1, 1, 8), (1, 1, 8, 5)]
    assert table_rows(tables, 0, 0) == HAND_CAUSAL


def test_hand_computed_row_block_without_slash(backend: str) -> None:
    # Slash 40 reaches row blocks 2 and 3 only. Row blocks 0 and 1 get the single block at
    # their causal frontier (16, 32): entirely in the future of their queries, kept as vLLM
    # emits it. Row block 3: range [8, 24); vertical 30 is visible to queries 48..63 but lies
    # past the last range, and is dropped (vLLM's kernel does the same).
    tables = convert_vertical_slash_indexes(
        i32([64]), i32([64]), i32([[[5, 30]]]), i32([[[40]]]), 64, 16, 16, True,
        backend=backend,
    )
    assert table_rows(tables, 0, 0) == [([16], [5]), ([32], [5, 30]), ([0], []), ([8], [5])]


def test_hand_computed_slash_on_the_frontier(backend: str) -> None:
    # The last (smallest) slash equal to the frontier still counts and clamps to [0, 16).
    tables = convert_vertical_slash_indexes(
        i32([64]), i32([64]), i32([[[]]]).view(1, 1, 0), i32([[[32]]]), 64, 16, 16, True,
        backend=backend,
    )
    assert table_rows(tables, 0, 0) == [([16], []), ([0], []), ([0], []), ([16], [])]


def test_hand_computed_not_causal(backend: str) -> None:
    # 32 queries after 64 keys: query i sits at key position 64 + i. Row block 0 (E = 80):
    # slash 70 -> [0, 16), slash 20 -> [44, 60), slash 5 ends at 75, within 16 of 60, so
    # [44, 76); blocks 0, 44, 60 (76 is past the keys). Verticals 3 and 60 are inside.
    # Row block 1 (E = 96): [10, 26), [60, 76); slash 5 < start_m = 16 would start past the
    # keys and is not used; vertical 3 lies in no range.
    tables = convert_vertical_slash_indexes(
        i32([32]), i32([64]), i32([[[3, 60]]]), i32([[[70, 20, 5]]]), 32, 16, 16, False,
        backend=backend,
    )
    assert table_rows(tables, 0, 0) == [([0, 44, 60], []), ([10, 60], [3])]


# --- random inputs against the per-row oracle ----------------------------------------------
def random_case(rng: random.Random, causal: bool, messy: bool) -> dict:
    block_m = rng.choice([4, 8, 16])
    block_n = rng.choice([n for n in (2, 4, 8, 16) if block_m % n == 0])
    batch, heads = rng.randint(1, 2), rng.randint(1, 3)
    context = rng.randint(1, 70)
    q_lens = [rng.randint(0, context) for _ in range(batch)]
    kv_lens = [q + rng.randint(0, 30) if causal else rng.randint(0, 90) for q in q_lens]
    nnz_v, nnz_s = rng.randint(1, 8), rng.randint(1, 8)
    top = max(kv_lens) + context + 5

    def draw(n: int, lo: int, hi: int, descending: bool) -> list[int]:
        if messy:  # out of order, repeats, out of range
            return [rng.randint(lo - 3, hi + 3) for _ in range(n)]
        values = sorted(rng.sample(range(lo, hi + n), n), reverse=descending)
        return values

    vertical = [[draw(nnz_v, 0, max(kv_lens), False) for _ in range(heads)] for _ in range(batch)]
    slash = [[draw(nnz_s, 0, top, True) for _ in range(heads)] for _ in range(batch)]
    return dict(q=q_lens, kv=kv_lens, v=vertical, s=slash, context=context,
                bm=block_m, bn=block_n, causal=causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("messy", [False, True], ids=["sorted", "unsorted-repeats-out-of-range"])
def test_random_against_oracle(backend: str, causal: bool, messy: bool) -> None:
    rng = random.Random(1000 * causal + 10 * messy + 7)
    for _ in range(12 if backend == "reference" else 4):
        c = random_case(rng, causal, messy)
        tables = convert_vertical_slash_indexes(
            i32(c["q"]), i32(c["kv"]), i32(c["v"]), i32(c["s"]), c["context"], c["bm"],
            c["bn"], causal, backend=backend,
        )
        expected = vertical_slash_tables(
            c["q"], c["kv"], c["v"], c["s"], c["context"], c["bm"], c["bn"], causal
        )
        assert_matches_oracle(tables, expected, c["context"], c["bm"])


def test_order_and_repeats_do_not_matter(backend: str) -> None:
    rng = random.Random(3)
    vertical = [rng.randrange(120) for _ in range(10)]
    slash = [rng.randrange(200) for _ in range(10)] + [0]
    base = convert_vertical_slash_indexes(
        i32([120]), i32([150]), i32([[sorted(set(vertical))]]),
        i32([[sorted(set(slash), reverse=True)]]), 128, 16, 16, True, backend=backend,
    )
    shuffled_v, shuffled_s = vertical * 2, slash * 2
    rng.shuffle(shuffled_v)
    rng.shuffle(shuffled_s)
    messy = convert_vertical_slash_indexes(
        i32([120]), i32([150]), i32([[shuffled_v]]), i32([[shuffled_s]]), 128, 16, 16, True,
        backend=backend,
    )
    assert table_rows(messy, 0, 0) == table_rows(base, 0, 0)


# --- properties the prefill kernel relies on -------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_tables_cover_the_pattern_without_repeats(causal: bool) -> None:
    """Every (query, key) pair on a vertical or slash line is listed for the query's row block
    (causal: when the main diagonal is among the slashes, as MInference always keeps it), and
    no key is listed twice, so a kernel that sums over the lists computes a proper softmax."""
    rng = random.Random(11 + causal)
    for _ in range(10):
        c = random_case(rng, causal, messy=False)
        if causal:
            # the smallest slash becomes the main diagonal (lists stay sorted, no repeat)
            c["s"] = [[s if 0 in s else [*s[:-1], 0] for s in head] for head in c["s"]]
        tables = convert_vertical_slash_indexes(
            i32(c["q"]), i32(c["kv"]), i32(c["v"]), i32(c["s"]), c["context"], c["bm"],
            c["bn"], causal,
        )
        for b, (q_len, kv_len) in enumerate(zip(c["q"], c["kv"], strict=True)):
            for h in range(len(c["s"][b])):
                for m in range(tables[0].shape[2]):
                    listed = listed_keys(*tables, b, h, m, c["bn"])
                    assert len(listed) == len(set(listed)), (b, h, m)
                    first_pos = (kv_len - q_len) if causal else kv_len
                    for i in range(m * c["bm"], min((m + 1) * c["bm"], q_len)):
                        pos = first_pos + i
                        for key in range(min(pos + 1, kv_len)):
                            on_line = key in c["v"][b][h] or (pos - key) in c["s"][b][h]
                            if on_line:
                                assert key in listed, (b, h, m, i, key)


def test_last_partial_row_block(backend: str) -> None:
    # 70 queries in 16-row blocks: the last block holds queries 64..69 only; its frontier is
    # 80 > kv = 70, so the diagonal's range [64, 80) yields one block, cut at the keys' end.
    tables = convert_vertical_slash_indexes(
        i32([70]), i32([70]), i32([[[1]]]), i32([[[0]]]), 80, 16, 16, True, backend=backend,
    )
    rows = table_rows(tables, 0, 0)
    assert rows[4] == ([64], [1])
    assert rows == [([0], []), ([16], [1]), ([32], [1]), ([48], [1]), ([64], [1])]


def test_rows_past_q_seqlen_and_empty_sequences(backend: str) -> None:
    tables = convert_vertical_slash_indexes(
        i32([0, 20]), i32([5, 20]), i32([[[1]], [[2]]]), i32([[[0]], [[0]]]), 64, 16, 16, True,
        backend=backend,
    )
    block_count, _, column_count, _ = tables
    assert block_count[0].tolist() == [[0, 0, 0, 0]]  # no queries at all
    assert block_count[1].tolist() == [[1, 1, 0, 0]]  # queries 0..19: two row blocks
    assert column_count[1].tolist() == [[0, 1, 0, 0]]


def test_narrow_key_blocks_tile_the_ranges(backend: str) -> None:
    # block_size_N = 8 splits every 16-wide piece of a range into two blocks.
    tables = convert_vertical_slash_indexes(
        i32([100]), i32([100]), i32([[[0, 1, 2, 3, 50]]]), i32([[[70, 10, 0]]]),
        128, 16, 8, True, backend=backend,
    )
    assert tables[1].shape[-1] == 6  # nnz_s * (16 // 8)
    rows = table_rows(tables, 0, 0)
    assert rows[1] == ([6, 14, 22, 30], [0, 1, 2, 3])
    assert rows[6] == ([26, 34, 86, 94], [0, 1, 2, 3, 50])


# --- merge-head variant --------------------------------------------------------------------
def test_mergehead_uses_each_heads_count(backend: str) -> None:
    rng = random.Random(5)
    heads, nnz_v, nnz_s = 3, 6, 5
    vertical = [[sorted(rng.sample(range(90), nnz_v)) for _ in range(heads)]]
    slash = [[sorted(rng.sample(range(120), nnz_s), reverse=True) for _ in range(heads)]]
    v_count, s_count = [6, 2, 0], [1, 5, 0]
    # Padding past the counts as vLLM's dual-chunk attention writes it: INT32 max / min.
    pairs_v = zip(vertical[0], v_count, strict=True)
    pairs_s = zip(slash[0], s_count, strict=True)
    padded_v = [[row[:n] + [2**31 - 1] * (nnz_v - n) for row, n in pairs_v]]
    padded_s = [[row[:n] + [-(2**31)] * (nnz_s - n) for row, n in pairs_s]]
    tables = convert_vertical_slash_indexes_mergehead(
        i32([90]), i32([100]), i32(padded_v), i32(padded_s), i32(v_count), i32(s_count),
        96, 16, 16, True, backend=backend,
    )
    truncated_v = [[row[:n] for row, n in zip(vertical[0], v_count, strict=True)]]
    truncated_s = [[row[:n] for row, n in zip(slash[0], s_count, strict=True)]]
    expected = vertical_slash_tables([90], [100], truncated_v, truncated_s, 96, 16, 16, True)
    assert_matches_oracle(tables, expected, 96, 16)
    assert tables[1].shape == (1, heads, 6, nnz_s) and tables[3].shape == (1, heads, 6, nnz_v)


def test_mergehead_with_full_counts_equals_plain(backend: str) -> None:
    vertical, slash = i32([[[0, 7, 40], [3, 9, 60]]]), i32([[[50, 12, 0], [33, 2, 1]]])
    plain = convert_vertical_slash_indexes(
        i32([64]), i32([80]), vertical, slash, 64, 16, 16, True, backend=backend
    )
    merged = convert_vertical_slash_indexes_mergehead(
        i32([64]), i32([80]), vertical, slash, i32([3, 3]), i32([3, 3]), 64, 16, 16, True,
        backend=backend,
    )
    for a, b in zip(plain, merged, strict=True):
        assert torch.equal(a, b)


# --- argument checking ---------------------------------------------------------------------
def good_args() -> dict:
    return dict(
        q_seqlens=i32([32]), kv_seqlens=i32([40]), vertical_indexes=i32([[[1, 2]]]),
        slash_indexes=i32([[[3, 0]]]), context_size=32, block_size_M=16, block_size_N=16,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(q_seqlens=[32]), "q_seqlens must be a torch.Tensor"),
        (dict(q_seqlens=torch.tensor([32.0])), "q_seqlens must have dtype"),
        (dict(kv_seqlens=i32([40, 40])), "kv_seqlens must have 1 entries"),
        (dict(vertical_indexes=i32([[1, 2]])), "vertical_indexes must be 3-D"),
        (dict(vertical_indexes=i32([[[1]], [[2]]])), "vertical_indexes must be"),
        (
            dict(vertical_indexes=i32([[[1]], [[2]]]), slash_indexes=i32([[[3]], [[0]]])),
            "q_seqlens must have 2 entries",
        ),
        (dict(context_size=16), "q_seqlens must be <= 16"),
        (dict(context_size=-1), "context_size must be >= 0"),
        (dict(context_size=32.0), "context_size must be an int"),
        (dict(block_size_M=0), "block_size_M must be >= 1"),
        (dict(block_size_N=32), "block_size_M (16) must be a multiple of block_size_N (32)"),
        (dict(kv_seqlens=i32([31])), "kv_seqlens must be >= q_seqlens"),
        (dict(q_seqlens=i32([-1])), "q_seqlens must be >= 0"),
        (dict(causal=1), "causal must be a bool"),
        # too large for int32 key positions: the argument at fault is named, not kv_seqlens,
        # and nothing is allocated
        (dict(block_size_M=2**40), "block_size_M must be <= 2147483647"),
        (dict(block_size_M=2**30, block_size_N=2**30), "block_size_M must be <= 1073741823"),
        (dict(context_size=2**40), "context_size must be <= 2147483647"),
        (dict(context_size=2**31 - 20), "context_size must be <= 2147483615 with block_size_M"),
        (dict(block_size_M=True), "block_size_M must be an int, got bool"),
        # tables beyond INT32_MAX entries (sizes chosen so that, unchecked, even the first
        # allocation would fail at once rather than fill the memory)
        (dict(block_size_M=2**29, block_size_N=1,
              slash_indexes=torch.zeros(1, 1, 40, dtype=torch.int32)),
         "block_size_N (1) splits each slash into"),
        (dict(context_size=2**31 - 64, block_size_M=1, block_size_N=1,
              vertical_indexes=torch.zeros(1, 64, 2, dtype=torch.int32),
              slash_indexes=torch.zeros(1, 64, 2, dtype=torch.int32)),
         "context_size (2147483584) with block_size_M 1"),
        (dict(q_seqlens=torch.zeros(1, dtype=torch.int32, device="meta"),
              kv_seqlens=torch.zeros(1, dtype=torch.int32, device="meta"),
              vertical_indexes=torch.zeros(1, 1, 2, dtype=torch.int32, device="meta"),
              slash_indexes=torch.zeros(1, 1, 2, dtype=torch.int32, device="meta")),
         "q_seqlens is on the meta device"),
    ],
)
def test_bad_arguments_name_the_argument(change: dict, message: str) -> None:
    args = good_args() | change
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_vertical_slash_indexes(**args)


def test_bad_mergehead_counts() -> None:
    args = good_args()
    with pytest.raises(ValueError, match="vertical_indices_count must be <= 2"):
        convert_vertical_slash_indexes_mergehead(
            vertical_indices_count=i32([3]), slash_indices_count=i32([1]), **args
        )
    with pytest.raises(ValueError, match="slash_indices_count must have 1 entries"):
        convert_vertical_slash_indexes_mergehead(
            vertical_indices_count=i32([1]), slash_indices_count=i32([1, 1]), **args
        )
    with pytest.raises(ValueError, match="slash_indices_count must be >= 0"):
        convert_vertical_slash_indexes_mergehead(
            vertical_indices_count=i32([1]), slash_indices_count=i32([-1]), **args
        )


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="backend must be one of auto, reference, triton"):
        convert_vertical_slash_indexes(**good_args(), backend="cuda")
