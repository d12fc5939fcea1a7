"""top_k_per_row_prefill / top_k_per_row_decode on both backends, against a per-row oracle."""

from __future__ import annotations

import math
import random
import re

import pytest
import torch
from sparse_oracles import top_k_row

from kvpager.sparse import top_k_per_row_decode, top_k_per_row_prefill


def i32(rows: object) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32)


def expected_rows(logits: torch.Tensor, starts: list[int], ends: list[int], k: int) -> list:
    return [
        top_k_row(logits[r, s:max(s, e)].float().tolist(), k)
        for r, (s, e) in enumerate(zip(starts, ends, strict=True))
    ]


def run_prefill(logits, starts, ends, k, backend, num_rows=None) -> torch.Tensor:
    num_rows = logits.shape[0] if num_rows is None else num_rows
    indices = torch.full((logits.shape[0], k), -7, dtype=torch.int32)
    top_k_per_row_prefill(
        logits, i32(starts), i32(ends), indices, num_rows, logits.stride(0), logits.stride(1), k,
        backend=backend,
    )
    return indices


@pytest.mark.parametrize("values", ["normal", "ties", "with-infinities"])
@pytest.mark.parametrize("k", [1, 5, 40, 64])
def test_prefill_rows_against_oracle(backend: str, values: str, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    rows, cols = 8, 50
    if values == "ties":  # few distinct values: the threshold value is shared by many
        logits = torch.randint(-3, 4, (rows, cols), generator=gen).float()
    else:
        logits = torch.randn(rows, cols, generator=gen)
    if values == "with-infinities":
        logits[torch.rand(rows, cols, generator=gen) < 0.2] = -math.inf
        logits[0, 3] = math.inf
    rng = random.Random(k)
    starts = [rng.randint(0, cols) for _ in range(rows)]
    ends = [rng.randint(s, cols) for s in starts]
    starts[0], ends[0] = 0, cols  # a full row
    starts[1], ends[1] = 7, 7  # an empty row
    starts[2], ends[2] = 30, 12  # end before start: empty as well
    indices = run_prefill(logits, starts, ends, k, backend)
    assert indices.tolist() == expected_rows(logits, starts, ends, k)


def test_prefill_selects_the_largest_values_not_just_any(backend: str) -> None:
    # Row values 0, 1, ..., 19 shuffled: the top 4 must be the positions of 16..19.
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3))
    logits = perm.float().unsqueeze(0)
    indices = run_prefill(logits, [0], [20], 4, backend)
    want = sorted((perm >= 16).nonzero().flatten().tolist())
    assert indices[0].tolist() == want
    # With a window, positions are relative to its start.
    indices = run_prefill(logits, [5], [20], 2, backend)
    window = perm[5:20]
    top_two = (window >= window.sort().values[-2]).nonzero().flatten().tolist()
    assert indices[0].tolist() == sorted(top_two)


def test_prefill_long_rows_span_several_chunks(backend: str) -> None:
    # Longer than the Triton kernel's 1024-wide chunk, with ties across chunk borders.
    gen = torch.Generator().manual_seed(9)
    logits = torch.randint(0, 50, (2, 2600), generator=gen).float()
    starts, ends = [0, 100], [2600, 2500]
    indices = run_prefill(logits, starts, ends, 300, backend)
    assert indices.tolist() == expected_rows(logits, starts, ends, 300)
    # k wider than a chunk too: one long row, one short row padded with -1 past 1200.
    starts, ends = [0, 1000], [2600, 2200]
    indices = run_prefill(logits, starts, ends, 1500, backend)
    assert indices.tolist() == expected_rows(logits, starts, ends, 1500)
    assert indices[1, 1199] == 1199 and (indices[1, 1200:] == -1).all()


def test_prefill_nan_and_signed_zero(backend: str) -> None:
    logits = torch.tensor([[0.0, -0.0, float("nan"), -1.0, 0.0, -0.0, 2.0]])
    # NaN ranks first, then 2.0, then the four zeros tie: the lowest positions win.
    assert run_prefill(logits, [0], [7], 4, backend)[0].tolist() == [0, 1, 2, 6]


def test_prefill_half_precision_and_strided_logits(backend: str) -> None:
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(30, 6, generator=gen).to(torch.bfloat16)
    logits = base.t()  # [6, 30] with strides (1, 6): stride1 != 1
    starts, ends = [0, 2, 5, 0, 10, 29], [30, 30, 20, 3, 30, 30]
    indices = run_prefill(logits, starts, ends, 6, backend)
    assert indices.tolist() == expected_rows(logits, starts, ends, 6)


def test_prefill_writes_only_its_rows_and_columns(backend: str) -> None:
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(5))
    buffer = torch.full((4, 8), -7, dtype=torch.int32)
    view = buffer[:, 2:5]  # a slice of a wider buffer, as vLLM's indexer passes one
    top_k_per_row_prefill(
        logits, i32([0] * 4), i32([10] * 4), view, 3, logits.stride(0), 1, 3, backend=backend
    )
    assert buffer[:3, 2:5].tolist() == expected_rows(logits[:3], [0] * 3, [10] * 3, 3)
    assert (buffer[:, :2] == -7).all() and (buffer[:, 5:] == -7).all() and (buffer[3] == -7).all()


def decode_ends(seq_lens: list[int], next_n: int, num_rows: int) -> list[int]:
    return [max(0, seq_lens[r // next_n] - next_n + r % next_n + 1) for r in range(num_rows)]


@pytest.mark.parametrize("next_n", [1, 3])
def test_decode_rows_see_their_causal_prefix(backend: str, next_n: int) -> None:
    gen = torch.Generator().manual_seed(next_n)
    seq_lens = [40, 5, 1, 33]  # the third sequence is shorter than next_n = 3
    num_rows = len(seq_lens) * next_n
    logits = torch.randn(num_rows, 40, generator=gen)
    indices = torch.full((num_rows, 8), -7, dtype=torch.int32)
    top_k_per_row_decode(
        logits, next_n, i32(seq_lens), indices, num_rows, 40, 1, 8, backend=backend
    )
    ends = decode_ends(seq_lens, next_n, num_rows)
    assert indices.tolist() == expected_rows(logits, [0] * num_rows, ends, 8)


def test_decode_two_dimensional_seq_lens_give_each_rows_end(backend: str) -> None:
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(6))
    ends = [[20, 3], [0, 17], [9, 12]]
    indices = torch.full((6, 4), -7, dtype=torch.int32)
    top_k_per_row_decode(logits, 2, i32(ends), indices, 6, 20, 1, 4, backend=backend)
    flat = [e for row in ends for e in row]
    assert indices.tolist() == expected_rows(logits, [0] * 6, flat, 4)


def test_zero_rows_is_a_no_op(backend: str) -> None:
    indices = torch.full((2, 3), -7, dtype=torch.int32)
    top_k_per_row_prefill(
        torch.zeros(2, 5), i32([]), i32([]), indices, 0, 5, 1, 3, backend=backend
    )
    assert (indices == -7).all()


def prefill_args() -> dict:
    logits = torch.zeros(3, 10)
    return dict(
        logits=logits, row_starts=i32([0, 0, 0]), row_ends=i32([10, 5, 0]),
        indices=torch.zeros(3, 4, dtype=torch.int32), num_rows=3, stride0=10, stride1=1, top_k=4,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(logits=torch.zeros(3, 10, dtype=torch.float64)), "logits must have dtype"),
        (dict(logits=torch.zeros(30)), "logits must be 2-D"),
        (dict(indices=torch.zeros(3, 4, dtype=torch.int64)), "indices must have dtype int32"),
        (
            dict(indices=torch.zeros(3, 5, dtype=torch.int32)),
            "indices must be [>= num_rows=3, top_k=4]",
        ),
        (dict(num_rows=4), "logits has 3 rows, fewer than num_rows=4"),
        (dict(num_rows=-1), "num_rows must be >= 0"),
        (dict(top_k=0), "top_k must be >= 1"),
        (dict(stride0=12), "stride0 must equal logits.stride(0) = 10, got 12"),
        (dict(stride1=2), "stride1 must equal logits.stride(1) = 1, got 2"),
        (dict(row_starts=i32([0, 0])), "row_starts must have >= num_rows=3 entries"),
        (dict(row_starts=i32([0, -1, 0])), "row_starts must be >= 0 everywhere, found -1"),
        (dict(row_ends=i32([10, 11, 0])), "row_ends must be <= 10 everywhere, found 11"),
        (dict(row_ends=[10, 5, 0]), "row_ends must be a torch.Tensor"),
        # integers beyond int32 and bools are refused by name, before anything is written
        (dict(top_k=2**63), "top_k must be <= 2147483647"),
        (dict(num_rows=2**63), "num_rows must be <= 2147483647"),
        (dict(top_k=True), "top_k must be an int, got bool"),
        (dict(stride1=True), "stride1 must be an int, got bool"),
        (dict(logits=torch.zeros(3, 10, device="meta"), row_starts=i32([0, 0, 0]).to("meta"),
              row_ends=i32([10, 5, 0]).to("meta"),
              indices=torch.zeros(3, 4, dtype=torch.int32, device="meta")),
         "logits is on the meta device"),
    ],
)
def test_prefill_bad_arguments_name_the_argument(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        top_k_per_row_prefill(**(prefill_args() | change))


@pytest.mark.parametrize(
    ("next_n", "seq_lens", "message"),
    [
        (0, i32([3, 3]), "next_n must be >= 1"),
        (1, i32([3, 3]), "seq_lens must have >= cdiv(num_rows, next_n) = 3 entries, got 2"),
        (2, i32([[3, 3]]), "a 2-D seq_lens must be [num_seqs, next_n=2] with >= num_rows=3"),
        (3, i32([11]), "seq_lens (as row ends) must be <= 10 everywhere, found 11"),
        (1, torch.tensor([3.0, 3.0, 3.0]), "seq_lens must have dtype"),
        (2**63, i32([3, 3]), "next_n must be <= 2147483647"),
        (2**31, i32([3, 3]), "next_n must be <= 2147483647"),
        (True, i32([3, 3, 3]), "next_n must be an int, got bool"),
    ],
)
def test_decode_bad_arguments_name_the_argument(next_n, seq_lens, message) -> None:
    args = prefill_args()
    with pytest.raises(ValueError, match=re.escape(message)):
        top_k_per_row_decode(
            args["logits"], next_n, seq_lens, args["indices"], 3, 10, 1, 4
        )


def test_prefill_rows_whose_end_is_far_before_their_start_are_empty(backend: str) -> None:
    """An end near -2^63 once wrapped around int64 in end - start and gave garbage (-6);
    the contract is an empty row: all -1."""
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    starts = torch.tensor([1, 3, 0, 2**40])
    ends = torch.tensor([-(2**63), -(2**62), 10, 5])
    indices = torch.full((4, 3), -7, dtype=torch.int32)
    top_k_per_row_prefill(logits, starts, ends, indices, 4, 10, 1, 3, backend=backend)
    assert indices[[0, 1, 3]].eq(-1).all()
    assert indices[2].tolist() == top_k_row(logits[2].tolist(), 3)


def test_decode_lengths_far_below_zero_give_empty_rows(backend: str) -> None:
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    indices = torch.full((4, 3), -7, dtype=torch.int32)
    seq_lens = torch.tensor([-(2**63), 9])
    top_k_per_row_decode(logits, 2, seq_lens, indices, 4, 10, 1, 3, backend=backend)
    assert indices[:2].eq(-1).all()
    assert indices[3].tolist() == top_k_row(logits[3, :9].tolist(), 3)
