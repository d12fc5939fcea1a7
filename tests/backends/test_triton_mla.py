"""Paged MLA decode of the Triton backend (interpreted on the CPU) against the float64
oracle, with NaN in every slot a sequence does not attend (unwritten slots, blocks before
the window behind -1 table entries). GPU runs of the MLA matrix are in
test_mla_gpu.py."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from dense_attention import dense_mla

from kvpager.backends.triton import BACKEND
from kvpager.verify.mla_matrix import (
    MLACase,
    make_mla_inputs,
    mla_tolerance,
    poison_mla,
    run_mla,
)

CPU = torch.device("cpu")
_reason = BACKEND.unavailable_reason() or BACKEND.device_reason(CPU)
pytestmark = pytest.mark.skipif(_reason is not None, reason=str(_reason))

#: DeepSeek-V3's 512 + 64 at a TP rank's 16 heads and at 17 (two head blocks, one partial);
#: an odd layout; no rope; every dtype and window kind.
CASES = [
    MLACase(512, 64, 16, 16, "bfloat16", seed=1, window=100),
    MLACase(512, 64, 17, 64, "float32", seed=2),
    MLACase(96, 32, 3, 8, "float16", seed=3, window=7),
    MLACase(40, 0, 2, 32, "float32", seed=4, window=300),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_dense_mla(case: MLACase) -> None:
    long = max(260, (case.window or 0) + 150)  # several tiles, past the window
    clean = make_mla_inputs(case, lengths=[1, 3 * case.block_size, long, 0, 37])
    want = dense_mla(clean)
    inputs = poison_mla(clean) if case.window else clean
    got = run_mla(inputs, "triton")
    assert torch.isfinite(got).all()
    assert got[3].eq(0).all()
    atol, rtol = mla_tolerance(case.dtype)
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol, check_dtype=False)
