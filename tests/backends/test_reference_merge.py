"""merge_attn_states: merging two parts must equal attention over the union of their keys."""

from __future__ import annotations

import math

import pytest
import torch

import kvpager.ops as ops


def _part(logits: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention over one key set: output [N, H, D] and LSE [H, N].

    logits: [N, H, T]; values: [N, H, T, D]. An empty key set (T = 0) gives LSE -inf.
    """
    lse = torch.logsumexp(logits, dim=-1)  # -inf for T = 0
    probs = torch.softmax(logits, dim=-1) if logits.shape[-1] else logits
    out = torch.einsum("nht,nhtd->nhd", probs, values)
    return out, lse.t().contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_lse", [True, False])
def test_merge_equals_attention_over_the_union(dtype, with_lse) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens, heads, head_size, n_prefix, n_suffix = 5, 4, 64, 37, 11
    logits = 3 * torch.randn(tokens, heads, n_prefix + n_suffix, generator=gen,
                             dtype=torch.float64)
    values = torch.randn(tokens, heads, n_prefix + n_suffix, head_size, generator=gen,
                         dtype=torch.float64)
    full_out, full_lse = _part(logits, values)
    p_out, p_lse = _part(logits[..., :n_prefix], values[:, :, :n_prefix])
    s_out, s_lse = _part(logits[..., n_prefix:], values[:, :, n_prefix:])
    output = torch.empty(tokens, heads, head_size, dtype=dtype)
    output_lse = torch.empty(heads, tokens) if with_lse else None
    ops.merge_attn_states(output, p_out.to(dtype), p_lse.float(), s_out.to(dtype),
                          s_lse.float(), output_lse)
    atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(output.double(), full_out, atol=atol, rtol=atol,
                               check_dtype=False)
    if with_lse:
        torch.testing.assert_close(output_lse.double(), full_lse, atol=1e-5, rtol=1e-5,
                                   check_dtype=False)


@pytest.mark.parametrize("empty_value", [float("inf"), float("-inf")])
def test_infinite_lse_is_an_empty_part_and_its_output_is_not_read(empty_value) -> None:
    tokens, heads, head_size = 3, 2, 32
    suffix = torch.randn(tokens, heads, head_size)
    s_lse = torch.randn(heads, tokens)
    garbage = torch.full((tokens, heads, head_size), float("nan"))  # e.g. torch.empty
    p_lse = torch.full((heads, tokens), empty_value)
    output, output_lse = torch.empty_like(suffix), torch.empty(heads, tokens)
    ops.merge_attn_states(output, garbage, p_lse, suffix, s_lse, output_lse)
    assert torch.equal(output, suffix)
    assert torch.equal(output_lse, s_lse)
    # ... and symmetrically for an empty suffix
    ops.merge_attn_states(output, suffix, s_lse, garbage, p_lse, output_lse)
    assert torch.equal(output, suffix)
    assert torch.equal(output_lse, s_lse)


def test_both_parts_empty_give_zero_and_minus_inf() -> None:
    tokens, heads, head_size = 2, 2, 32
    nan = torch.full((tokens, heads, head_size), float("nan"))
    lse = torch.tensor([[float("inf"), float("-inf")], [float("-inf"), float("inf")]])
    output, output_lse = torch.empty(tokens, heads, head_size), torch.empty(heads, tokens)
    ops.merge_attn_states(output, nan, lse, nan.clone(), lse.clone(), output_lse)
    assert output.eq(0).all()
    assert output_lse.eq(-math.inf).all()


def test_mixed_rows_and_in_place_output() -> None:
    """Per (head, token) decisions are independent; output may alias prefix_output."""
    p_out = torch.tensor([[[1.0] * 32, [2.0] * 32]])  # [1 token, 2 heads, 32]
    s_out = torch.tensor([[[5.0] * 32, [7.0] * 32]])
    p_lse = torch.tensor([[0.0], [float("-inf")]])  # head 1: prefix empty
    s_lse = torch.tensor([[0.0], [1.0]])  # head 0: equal weights
    ops.merge_attn_states(p_out, p_out, p_lse, s_out, s_lse)
    torch.testing.assert_close(p_out[0, 0], torch.full((32,), 3.0))
    torch.testing.assert_close(p_out[0, 1], torch.full((32,), 7.0))
