"""Sliding window and attention sinks of the CUDA and Triton kernels on a GPU, over the
window matrix (`kvpager.verify.matrix.window_sink_matrix`): v1, v2 and v2's partition
buffers against the reference, with the blocks before each window holding NaN behind -1
table entries, plus each case against the float64 oracle. GPU only."""

from __future__ import annotations

import pytest
import torch
from dense_attention import dense_attention
from kernel_matrix import (
    case_params,
    check_window_sinks_against_reference,
    make_inputs,
    run_v1,
    tolerance,
    window_sink_matrix,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda is not available)"),
]

CASES = window_sink_matrix()


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", case_params(CASES))
def test_window_and_sinks_match_reference(case, backend: str) -> None:
    check_window_sinks_against_reference(case, backend, "cuda")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", case_params(CASES[::3]))
def test_window_and_sinks_match_dense_oracle(case, backend: str) -> None:
    inputs = make_inputs(case, "cuda")
    want = dense_attention(inputs)
    atol, rtol = tolerance(case.dtype, case.kv_cache_dtype)
    torch.testing.assert_close(run_v1(inputs, backend).double().cpu(), want.out, atol=atol,
                               rtol=rtol, check_dtype=False)
