"""The reference backend's paged attention against an independent dense computation."""

from __future__ import annotations

import math

import pytest
import torch
from dense_attention import dense_attention
from kernel_matrix import (
    AttentionCase,
    assert_partitions_close,
    case_params,
    make_inputs,
    run_v1,
    run_v2,
    sampled_matrix,
    tolerance,
    used_partitions,
)

import kvpager.ops as ops
from kvpager.backends.reference import attention as ref_attention

# Long sequences stay just past 1024 tokens on the CPU: three partitions, quick to check.
CPU_LONG = (1025, 1300)
CASES = sampled_matrix(36, seed=0, sparse=False) + sampled_matrix(14, seed=1, sparse=True)


def _strict(case: AttentionCase) -> tuple[float, float]:
    """The reference computes in float32 like the oracle (float64): only the final cast
    differs, so float32 outputs must agree far below the cross-backend tolerance."""
    return (1e-4, 1e-4) if case.dtype == "float32" else tolerance(case.dtype)


@pytest.mark.parametrize("case", case_params(CASES))
def test_matches_dense_attention(case: AttentionCase) -> None:
    inputs = make_inputs(case, long_len=CPU_LONG)
    want = dense_attention(inputs)
    atol, rtol = _strict(case)

    out_v1 = run_v1(inputs, "reference")
    torch.testing.assert_close(out_v1.double(), want.out, atol=atol, rtol=rtol,
                               check_dtype=False)

    out_v2, exp_sums, max_logits, tmp_out = run_v2(inputs, "reference")
    torch.testing.assert_close(out_v2.double(), want.out, atol=atol, rtol=rtol,
                               check_dtype=False)
    torch.testing.assert_close(out_v2, out_v1, atol=atol, rtol=rtol)
    assert_partitions_close(inputs, exp_sums, max_logits, tmp_out, want.part_sum,
                            want.part_max, want.part_out)
    # Partitions past a sequence's end are neither written nor read: run_v2 filled them
    # with NaN, they still hold NaN, and no NaN reached `out` (checked above).
    unused = ~used_partitions(inputs.seq_lens, inputs.num_partitions()).expand_as(exp_sums)
    assert unused.any()
    assert exp_sums[unused].isnan().all() and max_logits[unused].isnan().all()
    assert tmp_out[unused].isnan().all()


def test_hand_computed_two_tokens() -> None:
    """One head, two tokens: out = (e^(s a) v0 + e^0 v1) / (e^(s a) + 1) with q.k0 = a."""
    head_size, block_size = 32, 8
    key_cache, value_cache = ops.allocate_kv_cache(2, 1, head_size, block_size,
                                                   dtype=torch.float32)
    query = torch.zeros(1, 1, head_size)
    query[0, 0, 0] = 2.0
    # key of token 0 = 3 * e_0: element 0 is key_cache[block, head, 0 // 4, token, 0 % 4]
    key_cache[1, 0, 0, 0, 0] = 3.0
    value_cache[1, 0, :, 0] = 1.0  # v0 = all ones
    value_cache[1, 0, :, 1] = -2.0  # v1 = all -2
    scale = 0.5
    out = torch.empty_like(query)
    ops.paged_attention_v1(out, query, key_cache, value_cache, 1, scale,
                           torch.tensor([[1]], dtype=torch.int32),
                           torch.tensor([2], dtype=torch.int32), block_size, 2, None, "auto",
                           1.0, 1.0)
    w0 = math.exp(scale * 2.0 * 3.0)
    expected = (w0 * 1.0 + 1.0 * -2.0) / (w0 + 1.0)
    torch.testing.assert_close(out, torch.full_like(out, expected))


def test_alibi_by_hand() -> None:
    """Zero keys leave only ALiBi: logits slope * (t - L + 1) = [-2, -1, 0] for L=3, slope 1."""
    head_size, block_size = 32, 8
    key_cache, value_cache = ops.allocate_kv_cache(1, 1, head_size, block_size,
                                                   dtype=torch.float32)
    for t, v in enumerate([10.0, 20.0, 30.0]):
        value_cache[0, 0, :, t] = v
    out = ops.paged_attention(torch.ones(1, 1, head_size), key_cache, value_cache,
                              torch.zeros(1, 1, dtype=torch.int32),
                              torch.tensor([3], dtype=torch.int32),
                              alibi_slopes=torch.ones(1))
    w = [math.exp(-2), math.exp(-1), 1.0]
    expected = sum(wi * v for wi, v in zip(w, [10.0, 20.0, 30.0], strict=True)) / sum(w)
    torch.testing.assert_close(out, torch.full_like(out, expected))


@pytest.mark.parametrize("pad", [-1, 10**9])
def test_table_entries_past_the_sequence_are_never_read(pad: int) -> None:
    case = AttentionCase((8, 1), 64, 16, "float32", False, "auto", None, seed=5)
    valid = make_inputs(case, long_len=CPU_LONG)
    padded = make_inputs(case, long_len=CPU_LONG, pad_block_id=pad)
    assert (padded.block_tables == pad).any()
    torch.testing.assert_close(run_v1(padded, "reference"), run_v1(valid, "reference"))
    torch.testing.assert_close(run_v2(padded, "reference")[0], run_v2(valid, "reference")[0])


def test_empty_sequence_and_fully_masked_heads_give_zero() -> None:
    """seq_len 0, and a block-sparse head that keeps no block, both output exactly 0."""
    case = AttentionCase((4, 4), 32, 8, "float16", False, "auto", None, seed=3)
    inputs = make_inputs(case, long_len=CPU_LONG)
    inputs.seq_lens[0] = 0
    out = run_v1(inputs, "reference")
    assert out[0].eq(0).all() and out[1:].abs().sum() > 0
    assert run_v2(inputs, "reference")[0][0].eq(0).all()

    # seq_len 1, local_blocks 0, vert_stride 2: head h keeps block 0 iff (0 + h*step + 1) % 2
    # == 0; with step 1 heads 1 and 3 keep it, heads 0 and 2 attend nothing.
    inputs.seq_lens[:] = 1
    inputs.sparse_kwargs = {"local": 0, "vert": 2, "block": 8, "step": 1}
    inputs.max_seq_len = 1
    out = run_v1(inputs, "reference")
    assert out[:, [0, 2]].eq(0).all() and out[:, [1, 3]].ne(0).any()
    out2, exp_sums, max_logits, _ = run_v2(inputs, "reference")
    torch.testing.assert_close(out2, out)
    assert max_logits[:, [0, 2], 0].eq(-math.inf).all() and exp_sums[:, [0, 2], 0].eq(0).all()


def test_query_with_row_stride() -> None:
    """A query sliced from a fused QKV tensor (row stride > num_heads * head_size)."""
    case = AttentionCase((8, 8), 64, 16, "bfloat16", True, "auto", None, seed=9)
    inputs = make_inputs(case, long_len=CPU_LONG)
    fused = torch.randn(4, 3 * 8 * 64).to(torch.bfloat16)
    fused[:, : 8 * 64] = inputs.query.reshape(4, -1)
    view = fused[:, : 8 * 64].view(4, 8, 64)
    assert not view.is_contiguous()
    want = run_v1(inputs, "reference")
    inputs.query = view
    torch.testing.assert_close(run_v1(inputs, "reference"), want)


def test_chunking_over_sequences_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    case = AttentionCase((8, 2), 128, 32, "float32", True, "fp8_e5m2", (4, 4, 32, -1), seed=4)
    inputs = make_inputs(case, long_len=CPU_LONG)
    whole_v1, whole_v2 = run_v1(inputs, "reference"), run_v2(inputs, "reference")
    monkeypatch.setattr(ref_attention, "_CHUNK_BYTES", 1)  # one sequence per group
    torch.testing.assert_close(run_v1(inputs, "reference"), whole_v1)
    for got, want in zip(run_v2(inputs, "reference"), whole_v2, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_reduce_ignores_garbage_in_unused_partitions() -> None:
    """reduce_partitions reads only partitions below ceil(seq_len / 512)."""
    out = torch.empty(2, 1, 4)
    exp_sums = torch.tensor([[[2.0, float("inf"), float("nan")]], [[1.0, 3.0, 5.0]]])
    max_logits = torch.tensor([[[0.5, float("inf"), float("nan")]], [[0.0, math.log(2), 1.0]]])
    tmp_out = torch.stack([torch.full((1, 3, 4), v) for v in (1.0, 2.0)])
    tmp_out[0, 0, 1:] = float("nan")
    tmp_out[1, 0, :, :] = torch.tensor([1.0, 2.0, 3.0])[:, None]
    seq_lens = torch.tensor([300, 1500], dtype=torch.int32)  # 1 and 3 partitions
    ref_attention.reduce_partitions(out, exp_sums, max_logits, tmp_out, seq_lens)
    torch.testing.assert_close(out[0], torch.ones(1, 4))
    # weights exp_sum_p * exp(max_p - max): 1*e^-1, 3*2*e^-1, 5*e^0 -> values 1, 2, 3
    w = [math.exp(-1), 6 * math.exp(-1), 5.0]
    expected = (w[0] * 1 + w[1] * 2 + w[2] * 3) / sum(w)
    torch.testing.assert_close(out[1], torch.full((1, 4), expected))


def test_extra_partitions_from_a_larger_max_seq_len() -> None:
    case = AttentionCase((8, 8), 64, 16, "float32", False, "auto", None, seed=12)
    inputs = make_inputs(case, long_len=CPU_LONG)
    want = run_v1(inputs, "reference")
    inputs.max_seq_len = 4000  # 8 partitions, the table (ceil(1300/16)+2 blocks) is shorter
    torch.testing.assert_close(run_v2(inputs, "reference")[0], want)
    torch.testing.assert_close(run_v1(inputs, "reference"), want)


@pytest.mark.parametrize("step", [1, 3, -1, 0])
def test_tensor_parallel_rank_shifts_the_sparse_pattern(step: int) -> None:
    """On rank r, head h is global head r * H + h (or kv head r * K + h // G): the pattern
    of rank 1 is the one of heads H..2H-1 of a single-rank model."""
    # 6 query heads, 2 kv heads, vert_stride 4: rank 1 shifts offsets by 6 * step or by 2 * 1,
    # neither a multiple of 4, so the pattern really moves
    case = AttentionCase((6, 2), 64, 16, "float32", False, "auto", (4, 4, 32, step), seed=21)
    inputs = make_inputs(case, long_len=CPU_LONG)
    rank0 = run_v1(inputs, "reference")
    inputs.tp_rank = 1
    want = dense_attention(inputs)
    rank1 = run_v1(inputs, "reference")
    torch.testing.assert_close(rank1.double(), want.out, atol=1e-4, rtol=1e-4,
                               check_dtype=False)
    if step != 0:  # step 0 gives every head offset 1: the rank changes nothing
        assert not torch.allclose(rank0, rank1)
    out_v2 = run_v2(inputs, "reference")[0]
    torch.testing.assert_close(out_v2, rank1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_partition_boundaries(dtype: str) -> None:
    """Lengths on and next to multiples of 512, where partitions start and end."""
    case = AttentionCase((4, 2), 32, 32, dtype, True, "auto", None, seed=31)
    inputs = make_inputs(case, lengths=[512, 1024, 513, 511, 1025, 0])
    want = dense_attention(inputs)
    atol, rtol = _strict(case)
    torch.testing.assert_close(run_v1(inputs, "reference").double(), want.out, atol=atol,
                               rtol=rtol, check_dtype=False)
    out, exp_sums, max_logits, tmp_out = run_v2(inputs, "reference")
    torch.testing.assert_close(out.double(), want.out, atol=atol, rtol=rtol, check_dtype=False)
    assert_partitions_close(inputs, exp_sums, max_logits, tmp_out, want.part_sum,
                            want.part_max, want.part_out)
    used = used_partitions(inputs.seq_lens, 3)[:, 0].tolist()
    assert used == [[True, False, False], [True, True, False], [True, True, False],
                    [True, False, False], [True, True, True], [False, False, False]]
