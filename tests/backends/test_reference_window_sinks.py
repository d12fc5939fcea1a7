"""Sliding window and attention sinks on the reference backend, against the float64 oracle.

The window keeps tokens seq_len - W .. seq_len - 1 (transformers' convention); sinks add one
logit per head to the softmax's denominator only. Blocks wholly before the window are filled
with NaN and their table entries set to -1: the reference must never read them.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from dense_attention import dense_attention
from kernel_matrix import (
    AttentionCase,
    assert_partitions_close,
    case_params,
    make_inputs,
    poison_outside_window,
    run_v1,
    run_v2,
)

import kvpager.ops as ops
from kvpager.backends.validation import OpArgumentError

CPU_LONG = (1025, 1300)
#: Windows shorter than a block, not a multiple of the block size, longer than a partition;
#: with GQA, MQA, MHA, ALiBi, FP8 caches and a block-sparse pattern; sinks on and off.
CASES = [
    AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=1, window=40),
    AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=2, sinks=True),
    AttentionCase((8, 1), 32, 8, "float32", True, "auto", None, seed=3, window=600,
                  sinks=True),
    AttentionCase((4, 4), 80, 32, "float16", False, "auto", None, seed=4, window=5,
                  sinks=True),
    AttentionCase((16, 4), 128, 16, "bfloat16", True, "fp8_e4m3", None, seed=5,
                  window=513, scale_as_tensor=True),
    AttentionCase((8, 2), 64, 8, "float32", False, "fp8_e5m2", None, seed=6, window=1,
                  sinks=True),
    AttentionCase((8, 2), 64, 16, "float32", False, "auto", (4, 4, 32, 1), seed=7,
                  window=300, sinks=True),
    AttentionCase((8, 2), 64, 16, "float16", True, "auto", (16, 8, 64, -1), seed=8,
                  window=700),
]


def _strict(case: AttentionCase) -> tuple[float, float]:
    from kernel_matrix import tolerance

    return (1e-4, 1e-4) if case.dtype == "float32" and case.kv_cache_dtype == "auto" \
        else tolerance(case.dtype, case.kv_cache_dtype)


@pytest.mark.parametrize("case", case_params(CASES))
def test_window_and_sinks_match_dense_attention(case: AttentionCase) -> None:
    clean = make_inputs(case, long_len=CPU_LONG)
    inputs = poison_outside_window(clean) if case.window is not None else clean
    want = dense_attention(clean)
    atol, rtol = _strict(case)
    out_v1 = run_v1(inputs, "reference")
    assert torch.isfinite(out_v1).all()
    torch.testing.assert_close(out_v1.double(), want.out, atol=atol, rtol=rtol,
                               check_dtype=False)
    out_v2, sums, maxes, tmp = run_v2(inputs, "reference")
    assert torch.isfinite(out_v2).all()
    torch.testing.assert_close(out_v2.double(), want.out, atol=atol, rtol=rtol,
                               check_dtype=False)
    assert_partitions_close(inputs, sums, maxes, tmp, want.part_sum, want.part_max,
                            want.part_out)


def test_window_and_sinks_change_the_output() -> None:
    """The oracle's window and sinks are not no-ops on these inputs (so the test above can
    fail): each alone moves the output of every sequence the window shortens, and sinks
    of every sequence."""
    base = AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=1)
    plain = run_v1(make_inputs(base, long_len=CPU_LONG), "reference")
    for change in ({"window": 40}, {"sinks": True}):
        inputs = make_inputs(dataclasses.replace(base, **change), long_len=CPU_LONG)
        moved = (run_v1(inputs, "reference") - plain).abs().amax(dim=(1, 2))
        longer = inputs.seq_lens > (inputs.sliding_window or 0)  # the window cuts them
        assert moved[longer].min() > 1e-2


def test_hand_computed_window_and_sink() -> None:
    """Three tokens with values 1, 2, 4 and keys 0 (every logit 0); window 2 keeps the last
    two; a sink of log(2) adds 2 to the denominator: out = (2 + 4) / (1 + 1 + 2) = 1.5."""
    head_size, block_size = 32, 8
    key_cache, value_cache = ops.allocate_kv_cache(2, 1, head_size, block_size,
                                                   dtype=torch.float32)
    for token, value in enumerate((1.0, 2.0, 4.0)):
        value_cache[1, 0, :, token] = value
    query = torch.ones(1, 1, head_size)
    out = torch.empty_like(query)
    ops.paged_attention_v1(out, query, key_cache, value_cache, 1, 1.0,
                           torch.tensor([[1]], dtype=torch.int32),
                           torch.tensor([3], dtype=torch.int32), block_size, 3, None, "auto",
                           1.0, 1.0, sliding_window=2,
                           sinks=torch.tensor([math.log(2.0)]), backend="reference")
    torch.testing.assert_close(out, torch.full_like(out, 1.5))


def test_sinks_with_an_empty_sequence_output_zero() -> None:
    case = AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=9, sinks=True)
    inputs = make_inputs(case, lengths=[0, 20])
    assert run_v1(inputs, "reference")[0].eq(0).all()
    assert run_v2(inputs, "reference")[0][0].eq(0).all()


def test_v2_partitions_before_the_window_are_neither_written_nor_read() -> None:
    """Window 100 over 1,200 tokens: partitions 0 and 1 lie wholly before it; run_v2 filled
    them with NaN and they keep it, while the output is finite and right."""
    case = AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=10,
                         window=100, sinks=True)
    inputs = poison_outside_window(make_inputs(case, lengths=[1200, 7]))
    out, sums, maxes, tmp = run_v2(inputs, "reference")
    assert sums[0, :, :2].isnan().all() and tmp[0, :, :2].isnan().all()
    assert maxes[0, :, :2].isnan().all()
    assert sums[0, :, 2].isfinite().all()
    torch.testing.assert_close(out.double(), dense_attention(make_inputs(
        case, lengths=[1200, 7])).out, atol=1e-4, rtol=1e-4, check_dtype=False)


def test_compiled_call_passes_window_and_sinks() -> None:
    """torch.compile traces the op with its keyword-only extensions (schema glue)."""
    case = AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=11, window=30,
                         sinks=True)
    inputs = make_inputs(case, lengths=[50, 3])
    want = run_v1(inputs, "reference")

    def step(out: torch.Tensor) -> torch.Tensor:
        ops.paged_attention_v1(out, *inputs.args(), **inputs.kwargs(), backend="reference")
        return out

    got = torch.compile(step, fullgraph=True, backend="eager")(torch.empty_like(want))
    torch.testing.assert_close(got, want)


def _call(inputs, **kwargs) -> None:
    out = torch.full_like(inputs.query, 7.0)
    try:
        ops.paged_attention_v1(out, *inputs.args(), **kwargs, backend="reference")
    finally:
        assert out.eq(7.0).all()  # nothing written before the error


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"sliding_window": 0}, r"^sliding_window must be >= 1"),
    ({"sliding_window": -3}, r"^sliding_window must be >= 1"),
    ({"sliding_window": 2.5}, r"^sliding_window must be a positive int or None"),
    ({"sliding_window": True}, r"^sliding_window must be a positive int or None"),
    ({"sliding_window": 2**31}, r"^sliding_window must be <= "),
    ({"sinks": torch.zeros(8, dtype=torch.float16)}, r"^sinks must have dtype float32"),
    ({"sinks": torch.zeros(2)}, r"^sinks must have shape \[num_heads\]"),
    ({"sinks": torch.zeros(1, 8)}, r"^sinks must have shape \[num_heads\]"),
    ({"sinks": [0.0] * 8}, r"^sinks must be a torch.Tensor"),
    ({"sinks": torch.zeros(16)[::2]}, r"^sinks must be contiguous"),
])
def test_bad_window_or_sinks_are_named_before_anything_is_written(kwargs, pattern) -> None:
    inputs = make_inputs(AttentionCase((8, 2), 64, 16, "float32", False, "auto", None,
                                       seed=12), lengths=[5, 9])
    with pytest.raises(OpArgumentError, match=pattern):
        _call(inputs, **kwargs)


def test_sinks_on_another_device_are_named() -> None:
    inputs = make_inputs(AttentionCase((8, 2), 64, 16, "float32", False, "auto", None,
                                       seed=12), lengths=[5])
    with pytest.raises(OpArgumentError, match=r"^sinks is on meta but query is on cpu"):
        _call(inputs, sinks=torch.zeros(8, device="meta"))


def test_padding_before_the_window_passes_the_index_checks_but_inside_it_does_not() -> None:
    case = AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=13, window=20)
    inputs = make_inputs(case, lengths=[100])
    inputs.block_tables[0, :4] = -1  # tokens 0..63, wholly before the window (80..99)
    run_v1(inputs, "reference")
    inputs.block_tables[0, 5] = -1  # tokens 80..95: read
    with pytest.raises(OpArgumentError, match=r"^block_tables \[0, 5\] = -1"):
        run_v1(inputs, "reference")
