"""`merge_attn_states` in Triton: combine two partial attention results by their LSEs.

With per-part outputs o_p, o_s and log-sum-exps l_p, l_s over disjoint key sets, the result
over their union is (e^l_p o_p + e^l_s o_s) / (e^l_p + e^l_s) and its LSE
log(e^l_p + e^l_s); both are computed relative to max(l_p, l_s) so nothing overflows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl

from kvpager.backends.triton import runtime

if TYPE_CHECKING:
    import torch


@triton.jit
def merge_attn_states_kernel(
    output_ptr, prefix_ptr, prefix_lse_ptr, suffix_ptr, suffix_lse_ptr, output_lse_ptr,
    num_tokens, output_stride, prefix_stride, suffix_stride,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, WRITE_LSE: tl.constexpr,
):
    """Grid (num_tokens, num_heads); outputs [N, H, D] (token stride free), LSEs [H, N].

    An infinite LSE (+inf or -inf) marks an empty part: its weight is 0 and its output row
    is not loaded at all (the load is masked), so it may hold uninitialised memory. The
    row is read completely before it is written, so `output` may alias either input.
    """
    token = tl.program_id(0)
    head = tl.program_id(1)
    lse_at = head.to(tl.int64) * num_tokens + token
    p_lse = tl.load(prefix_lse_ptr + lse_at)
    s_lse = tl.load(suffix_lse_ptr + lse_at)
    p_lse = tl.where((p_lse == float("inf")) | (p_lse == float("-inf")), float("-inf"), p_lse)
    s_lse = tl.where((s_lse == float("inf")) | (s_lse == float("-inf")), float("-inf"), s_lse)
    top = tl.maximum(p_lse, s_lse)
    top = tl.where(top == float("-inf"), 0.0, top)
    p_weight = tl.exp(p_lse - top)
    s_weight = tl.exp(s_lse - top)
    total = p_weight + s_weight
    safe_total = tl.where(total > 0, total, 1.0)
    p_share = p_weight / safe_total
    s_share = s_weight / safe_total

    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_SIZE
    row = head * HEAD_SIZE + dims
    tok = token.to(tl.int64)
    zeros = tl.zeros([HEAD_PAD], tl.float32)  # broadcasts the scalar shares to the row
    prefix = tl.load(prefix_ptr + tok * prefix_stride + row,
                     mask=dim_ok & (zeros + p_share > 0), other=0.0).to(tl.float32)
    suffix = tl.load(suffix_ptr + tok * suffix_stride + row,
                     mask=dim_ok & (zeros + s_share > 0), other=0.0).to(tl.float32)
    merged = prefix * p_share + suffix * s_share
    if WRITE_LSE:
        tl.store(output_lse_ptr + lse_at, tl.log(total) + top)
    tl.store(output_ptr + tok * output_stride + row,
             merged.to(output_ptr.dtype.element_ty), mask=dim_ok)


def merge_attn_states(
    output: torch.Tensor, prefix_output: torch.Tensor, prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor, suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None = None,
) -> None:
    """Write the merged [N, H, D] output (and float32 [H, N] LSE when asked).

    Both parts empty: output 0 and LSE -inf, as in the reference.
    """
    num_tokens, num_heads, head_size = output.shape
    if num_tokens == 0 or num_heads == 0:
        return
    merge_attn_states_kernel[(num_tokens, num_heads)](
        output, prefix_output, prefix_lse, suffix_output, suffix_lse,
        output if output_lse is None else output_lse,
        num_tokens, output.stride(0), prefix_output.stride(0), suffix_output.stride(0),
        HEAD_SIZE=head_size, HEAD_PAD=runtime.next_power_of_2(head_size),
        WRITE_LSE=output_lse is not None, num_warps=1,
    )


__all__ = ["merge_attn_states", "merge_attn_states_kernel"]
