"""Paged MLA decode of the Triton kernel on a GPU over the MLA matrix
(`kvpager.verify.mla_matrix.mla_matrix`: DeepSeek-V3's 512 + 64 at 16 and 128 heads, every
block size and dtype, windows), against the reference, with NaN wherever nothing may be read;
a third of the cases also against the float64 oracle. GPU only."""

from __future__ import annotations

import pytest
import torch
from dense_attention import dense_mla

from kvpager.verify.mla_matrix import (
    check_mla_against_reference,
    make_mla_inputs,
    mla_matrix,
    mla_tolerance,
    run_mla,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA device (torch.cuda is not available)"),
]

CASES = mla_matrix()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_triton_mla_matches_reference(case) -> None:
    check_mla_against_reference(case, "triton", "cuda")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES[::3]])
def test_triton_mla_matches_dense_oracle(case) -> None:
    inputs = make_mla_inputs(case, "cuda")
    atol, rtol = mla_tolerance(case.dtype)
    torch.testing.assert_close(run_mla(inputs, "triton").double().cpu(), dense_mla(inputs),
                               atol=atol, rtol=rtol, check_dtype=False)
