"""The compiled Triton kernels on a CUDA device, against the reference on the CPU.

Shapes here are realistic (4k-token contexts, 64 x 64 blocks, k = 2048 over 20k-wide rows),
which the Triton interpreter could not afford; run with ``pytest -m gpu`` on a GPU machine.
"""

from __future__ import annotations

import random

import pytest
import torch

from kvpager.sparse import (
    convert_vertical_slash_indexes,
    convert_vertical_slash_indexes_mergehead,
    top_k_per_row_decode,
    top_k_per_row_prefill,
)
from kvpager.sparse._dispatch import select_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def minference_like(rng: random.Random, batch: int, heads: int, kv: int, nnz_v: int, nnz_s: int):
    """Sorted vertical and slash lists with the sinks (first 30 keys) and the local diagonals
    (first 100 slashes) that MInference always keeps."""
    vertical = [
        [sorted([*range(30), *rng.sample(range(30, kv), nnz_v - 30)]) for _ in range(heads)]
        for _ in range(batch)
    ]
    slash = [
        [sorted([*range(100), *rng.sample(range(100, kv), nnz_s - 100)], reverse=True)
         for _ in range(heads)]
        for _ in range(batch)
    ]
    return torch.tensor(vertical, dtype=torch.int32), torch.tensor(slash, dtype=torch.int32)


def test_auto_picks_triton_on_cuda() -> None:
    assert select_backend("auto", CUDA) == "triton"


@pytest.mark.parametrize("causal", [True, False])
def test_convert_matches_reference(causal: bool) -> None:
    rng = random.Random(causal)
    q = torch.tensor([4096, 3000], dtype=torch.int32)
    kv = torch.tensor([4096, 3500], dtype=torch.int32) if causal else torch.tensor([8192, 100])
    vertical, slash = minference_like(rng, 2, 4, 3000, 300, 400)
    args = (vertical, slash, 4096, 64, 64, causal)
    want = convert_vertical_slash_indexes(q, kv, *args, backend="reference")
    got = convert_vertical_slash_indexes(
        q.to(CUDA), kv.to(CUDA), vertical.to(CUDA), slash.to(CUDA), *args[2:], backend="triton"
    )
    for w, g in zip(want, got, strict=True):
        assert g.device.type == CUDA.type and torch.equal(w, g.cpu())


def test_convert_mergehead_unsorted_input_matches_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    q = kv = torch.tensor([2048], dtype=torch.int32)
    vertical = torch.randint(-5, 2100, (1, 8, 200), generator=gen, dtype=torch.int32)
    slash = torch.randint(-5, 2100, (1, 8, 300), generator=gen, dtype=torch.int32)
    v_count = torch.randint(0, 201, (8,), generator=gen, dtype=torch.int32)
    s_count = torch.randint(0, 301, (8,), generator=gen, dtype=torch.int32)
    args = (2048, 64, 32, True)
    want = convert_vertical_slash_indexes_mergehead(
        q, kv, vertical, slash, v_count, s_count, *args, backend="reference"
    )
    got = convert_vertical_slash_indexes_mergehead(
        *(t.to(CUDA) for t in (q, kv, vertical, slash, v_count, s_count)), *args,
        backend="triton",
    )
    for w, g in zip(want, got, strict=True):
        assert torch.equal(w, g.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_prefill_matches_reference(dtype: torch.dtype, ties: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    rows, cols, k = 64, 20000, 2048
    if ties:
        logits = torch.randint(0, 300, (rows, cols), generator=gen).to(dtype)
    else:
        logits = torch.randn(rows, cols, generator=gen).to(dtype)
    starts = torch.randint(0, 5000, (rows,), generator=gen, dtype=torch.int32)
    lengths = torch.randint(0, 15000, (rows,), generator=gen)
    ends = (starts + lengths).clamp(max=cols).to(torch.int32)
    want = torch.empty(rows, k, dtype=torch.int32)
    top_k_per_row_prefill(logits, starts, ends, want, rows, cols, 1, k, backend="reference")
    got = torch.empty(rows, k, dtype=torch.int32, device=CUDA)
    top_k_per_row_prefill(
        logits.to(CUDA), starts.to(CUDA), ends.to(CUDA), got, rows, cols, 1, k, backend="triton"
    )
    assert torch.equal(want, got.cpu())


def test_top_k_decode_matches_reference() -> None:
    gen = torch.Generator().manual_seed(2)
    next_n, batch, cols, k = 2, 16, 32768, 2048
    seq_lens = torch.randint(1, cols + 1, (batch,), generator=gen, dtype=torch.int32)
    logits = torch.randn(batch * next_n, cols, generator=gen)
    want = torch.empty(batch * next_n, k, dtype=torch.int32)
    top_k_per_row_decode(logits, next_n, seq_lens, want, batch * next_n, cols, 1, k,
                         backend="reference")
    got = torch.empty(batch * next_n, k, dtype=torch.int32, device=CUDA)
    top_k_per_row_decode(logits.to(CUDA), next_n, seq_lens.to(CUDA), got, batch * next_n, cols,
                         1, k, backend="triton")
    assert torch.equal(want, got.cpu())
