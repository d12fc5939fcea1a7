"""sparse_prefill_attention: attention over converted tables equals dense masked attention."""

from __future__ import annotations

import math
import random
import re

import pytest
import torch
from sparse_oracles import dense_attention, listed_keys

from kvpager.sparse import convert_vertical_slash_indexes, sparse_prefill_attention


def i32(rows: object) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32)


def allowed_mask(tables, q_lens, kv_lens, seqlen_q, seqlen_k, block_m, block_n, causal):
    """bool [batch, heads, seqlen_q, seqlen_k]: the keys the tables list for each query's row
    block, inside the keys, not in the query's future (causal), for existing queries only."""
    block_count = tables[0]
    batch, heads, rows = block_count.shape
    allowed = torch.zeros(batch, heads, seqlen_q, seqlen_k, dtype=torch.bool)
    for b in range(batch):
        shift = kv_lens[b] - q_lens[b]
        for h in range(heads):
            for m in range(rows):
                keys = set(listed_keys(*tables, b, h, m, block_n))
                for i in range(m * block_m, min((m + 1) * block_m, q_lens[b])):
                    for key in keys:
                        if 0 <= key < kv_lens[b] and (not causal or key <= i + shift):
                            allowed[b, h, i, key] = True
    return allowed


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("block_m", "block_n"), [(8, 8), (16, 8)])
def test_sparse_attention_equals_dense_attention_with_the_same_mask(
    causal: bool, block_m: int, block_n: int
) -> None:
    torch.manual_seed(0)
    rng = random.Random(42 + causal + block_n)
    batch, heads, kv_heads, dim = 2, 4, 2, 8
    seqlen_q, seqlen_k = 37, 52
    q_lens, kv_lens = [37, 20], [52, 33] if causal else [45, 9]
    q = torch.randn(batch, seqlen_q, heads, dim)
    k = torch.randn(batch, seqlen_k, kv_heads, dim)
    v = torch.randn(batch, seqlen_k, kv_heads, dim)
    vertical = [[rng.sample(range(kv_lens[b]), 4) for _ in range(heads)] for b in range(batch)]
    slash = [[rng.sample(range(60), 5) for _ in range(heads)] for _ in range(batch)]
    tables = convert_vertical_slash_indexes(
        i32(q_lens), i32(kv_lens), i32(vertical), i32(slash), seqlen_q, block_m, block_n, causal
    )
    out, lse = sparse_prefill_attention(
        q, k, v, *tables, 0.3, causal, block_size_M=block_m, block_size_N=block_n,
        q_seqlens=i32(q_lens), kv_seqlens=i32(kv_lens), return_softmax_lse=True,
    )
    allowed = allowed_mask(tables, q_lens, kv_lens, seqlen_q, seqlen_k, block_m, block_n, causal)
    assert allowed.any(dim=-1).float().mean() > 0.5  # most queries see something
    assert not allowed.all(dim=-1).any()  # and none sees everything: the mask matters
    want_out, want_lse = dense_attention(q, k, v, allowed, 0.3)
    torch.testing.assert_close(out.double(), want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-5, rtol=1e-5)


def test_every_diagonal_gives_full_causal_attention() -> None:
    """With every slash 0..n-1 the tables list the whole causal triangle (plus future keys the
    causal mask removes), so the result is ordinary causal attention."""
    torch.manual_seed(1)
    batch, seq, heads, dim = 1, 40, 2, 16
    q, k, v = (torch.randn(batch, seq, heads, dim) for _ in range(3))
    slash = i32([[list(range(seq - 1, -1, -1))] * heads])
    tables = convert_vertical_slash_indexes(
        i32([seq]), i32([seq]), i32([[[0]] * heads]), slash, seq, 16, 16, True
    )
    out = sparse_prefill_attention(q, k, v, *tables, block_size_M=16, block_size_N=16)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_a_key_listed_twice_counts_twice() -> None:
    """The reference sums over the lists like a kernel: listing key 3 both inside block 0 and
    as a column doubles its weight, i.e. adds log 2 to its score."""
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4)
    tables = (i32([[[1]]]), i32([[[[0]]]]), i32([[[1]]]), i32([[[[3]]]]))
    out = sparse_prefill_attention(
        q, k, v, *tables, 1.0, False, block_size_M=8, block_size_N=8
    )
    scores = (q[0, :, 0] @ k[0, :, 0].T).double()
    scores[:, 3] += math.log(2.0)
    want = torch.softmax(scores, dim=-1) @ v[0, :, 0].double()
    torch.testing.assert_close(out[0, :, 0].double(), want, atol=1e-6, rtol=1e-6)


def test_queries_that_see_nothing_get_zeros_and_minus_infinity() -> None:
    q, k, v = torch.randn(1, 16, 1, 4), torch.randn(1, 16, 1, 4), torch.randn(1, 16, 1, 4)
    # Row block 0 lists block 0; row block 1 lists nothing. Queries 12.. are past q_seqlen.
    tables = (i32([[[1, 0]]]), i32([[[[0], [0]]]]), i32([[[0, 0]]]), i32([[[[0], [0]]]]))
    out, lse = sparse_prefill_attention(
        q, k, v, *tables, None, True, block_size_M=8, block_size_N=8,
        q_seqlens=i32([12]), return_softmax_lse=True,
    )
    assert torch.isfinite(lse[0, 0, :8]).all()
    assert torch.isinf(lse[0, 0, 8:]).all() and (lse[0, 0, 8:] < 0).all()
    assert not out[0, 8:].any()
    # Causal with 12 queries over 16 keys: query 0 sits at key 4 and sees keys 0..4 of block 0.
    scores = (q[0, 0, 0] @ k[0, :5, 0].T) / 2.0
    torch.testing.assert_close(lse[0, 0, 0], torch.logsumexp(scores, dim=0))


def test_half_precision_inputs_keep_their_dtype() -> None:
    q, k, v = (torch.randn(1, 8, 2, 8, dtype=torch.bfloat16) for _ in range(3))
    tables = (i32([[[1]] * 2]), i32([[[[0]]] * 2]), i32([[[0]] * 2]), i32([[[[0]]] * 2]))
    out = sparse_prefill_attention(q, k, v, *tables, block_size_M=8, block_size_N=8)
    assert out.dtype == torch.bfloat16
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(),
        is_causal=True,
    ).transpose(1, 2)
    torch.testing.assert_close(out.float(), want, atol=2e-2, rtol=2e-2)


def good_inputs() -> dict:
    return dict(
        q=torch.zeros(1, 8, 2, 4), k=torch.zeros(1, 8, 1, 4), v=torch.zeros(1, 8, 1, 4),
        block_count=i32([[[0]] * 2]), block_offset=i32([[[[0]]] * 2]),
        column_count=i32([[[0]] * 2]), column_index=i32([[[[0]]] * 2]),
        block_size_M=8, block_size_N=8,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(q=torch.zeros(1, 8, 2)), "q must be 4-D"),
        (dict(k=torch.zeros(1, 8, 1, 5), v=torch.zeros(1, 8, 1, 5)), "k must be [batch=1"),
        (dict(v=torch.zeros(1, 9, 1, 4)), "v must have k's shape"),
        (dict(k=torch.zeros(1, 8, 3, 4), v=torch.zeros(1, 8, 3, 4)), "must be a multiple of"),
        (dict(block_count=i32([[[0]]])), "block_count must be [batch=1, num_heads=2, rows=1]"),
        (dict(column_index=i32([[[[0]]]])), "column_index must be [batch=1, num_heads=2"),
        (dict(block_size_M=4), "block_count has 1 rows of block_size_M=4"),
        (dict(block_offset=torch.zeros(1, 2, 1, 1)), "block_offset must have dtype"),
        (dict(q_seqlens=i32([9])), "q_seqlens must be <= 8"),
        (dict(kv_seqlens=i32([1, 2])), "kv_seqlens must have 1 entries"),
        (dict(softmax_scale="0.5"), "softmax_scale must be a float or None"),
        (dict(causal=None), "causal must be a bool"),
    ],
)
def test_bad_arguments_name_the_argument(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sparse_prefill_attention(**(good_inputs() | change))

