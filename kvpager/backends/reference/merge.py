"""Merging two partial attention results by their log-sum-exps, in plain torch.

Used when one query attends two disjoint sets of keys computed separately (a cached prefix
and a fresh suffix, or two cascade levels): with per-part outputs o_p, o_s and LSEs l_p, l_s,
the result over the union is (e^l_p o_p + e^l_s o_s) / (e^l_p + e^l_s), and its LSE is
log(e^l_p + e^l_s).
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")


def merge_attn_states(
    output: torch.Tensor, prefix_output: torch.Tensor, prefix_lse: torch.Tensor,
    suffix_output: torch.Tensor, suffix_lse: torch.Tensor,
    output_lse: torch.Tensor | None = None,
) -> None:
    """Write the merged [N, H, D] output (and float32 [H, N] LSE when asked).

    An infinite LSE, +inf or -inf, marks a part that attended nothing (vLLM reads +inf the
    same way); such a part's output is not read at all, so it may be uninitialised memory.
    When both parts are empty the output is 0 and the LSE -inf. A NaN LSE is not an empty
    part: the merged output and LSE are NaN, as the formula gives. `output` may alias either
    input: everything is computed before it is written.
    """
    p_lse = torch.where(torch.isinf(prefix_lse), _NEG_INF, prefix_lse)
    s_lse = torch.where(torch.isinf(suffix_lse), _NEG_INF, suffix_lse)
    top = torch.maximum(p_lse, s_lse)  # NaN if either LSE is NaN
    top = torch.where(top == _NEG_INF, 0.0, top)
    p_weight, s_weight = torch.exp(p_lse - top), torch.exp(s_lse - top)  # [H, N]
    total = p_weight + s_weight

    def share(weight: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        # total is 0 only when both parts are empty; a NaN LSE makes every share NaN.
        fraction = torch.where(total == 0, 0.0, weight / total).t()[..., None]  # [N, H, 1]
        return torch.where(fraction == 0, 0.0, part.float() * fraction)

    merged = share(p_weight, prefix_output) + share(s_weight, suffix_output)
    if output_lse is not None:
        output_lse.copy_(torch.log(total) + top)
    output.copy_(merged.to(output.dtype))


__all__ = ["merge_attn_states"]
