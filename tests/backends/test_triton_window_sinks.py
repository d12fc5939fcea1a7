"""Sliding window and attention sinks on the Triton kernels (interpreted on the CPU), against
the float64 oracle, with the blocks wholly before each window poisoned with NaN and their
table entries set to -1 (the kernels must never read them)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from dense_attention import dense_attention
from kernel_matrix import (
    AttentionCase,
    assert_partitions_close,
    case_params,
    make_inputs,
    poison_outside_window,
    run_v1,
    run_v2,
    tolerance,
)

from kvpager.backends.triton import BACKEND

CPU = torch.device("cpu")
_reason = BACKEND.unavailable_reason() or BACKEND.device_reason(CPU)
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

CPU_LONG = (1025, 1100)
#: Window shorter than a block, across a partition boundary, not a block multiple; sinks
#: with and without a window; GQA, MQA, MHA; ALiBi; both FP8 formats; block sparsity.
CASES = [
    AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=1, window=40,
                  sinks=True),
    AttentionCase((8, 1), 32, 8, "float16", True, "fp8_e4m3", None, seed=3, window=600),
    AttentionCase((4, 4), 32, 32, "bfloat16", False, "auto", None, seed=4, window=5,
                  sinks=True),
    AttentionCase((8, 2), 64, 16, "float32", True, "fp8_e5m2", None, seed=5, sinks=True),
    AttentionCase((8, 1), 64, 16, "float16", False, "auto", (4, 4, 32, 1), seed=7,
                  window=300, sinks=True),
]


@pytest.mark.parametrize("case", case_params(CASES))
def test_window_and_sinks_match_dense_attention(case: AttentionCase) -> None:
    clean = make_inputs(case, long_len=CPU_LONG)
    inputs = poison_outside_window(clean) if case.window is not None else clean
    want = dense_attention(clean)
    atol, rtol = tolerance(case.dtype, case.kv_cache_dtype)
    out_v1 = run_v1(inputs, "triton")
    assert torch.isfinite(out_v1).all()
    torch.testing.assert_close(out_v1.double(), want.out, atol=atol, rtol=rtol,
                               check_dtype=False)
    out_v2, sums, maxes, tmp = run_v2(inputs, "triton")
    assert torch.isfinite(out_v2).all()
    torch.testing.assert_close(out_v2.double(), want.out, atol=atol, rtol=rtol,
                               check_dtype=False)
    assert_partitions_close(inputs, sums, maxes, tmp, want.part_sum, want.part_max,
                            want.part_out)


def test_partitions_before_the_window_are_not_written() -> None:
    case = AttentionCase((8, 2), 32, 16, "float32", False, "auto", None, seed=10,
                         window=100, sinks=True)
    inputs = poison_outside_window(make_inputs(case, lengths=[1200, 0, 7]))
    out, sums, maxes, tmp = run_v2(inputs, "triton")
    assert sums[0, :, :2].isnan().all() and maxes[0, :, :2].isnan().all()
    assert tmp[0, :, :2].isnan().all() and sums[0, :, 2].isfinite().all()
    assert out[1].eq(0).all()  # an empty sequence with sinks still outputs 0
    torch.testing.assert_close(out, run_v1(inputs, "reference"), atol=1e-3, rtol=1e-5)
