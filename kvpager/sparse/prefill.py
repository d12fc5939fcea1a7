"""Reference block-sparse prefill attention over the tables of `convert_vertical_slash_indexes`.

It computes what a blocked sparse prefill kernel (vLLM's ``sparse_attn_func`` from its
flash-attention fork, MInference's Triton kernel) computes: for the queries of row block
``m``, attention over the keys of the listed blocks and columns, nothing else. It follows such
a kernel's bookkeeping on purpose -- every listed block contributes ``block_size_N`` keys and
every listed column one key, so a key listed twice would be counted twice -- which makes it a
check of the tables as well as of the idea: its result equals dense attention restricted to
the union of the listed keys exactly when the tables never list a key twice.

Pure torch, loops over row blocks; meant for correctness checks and small shapes, not speed.
The Triton and CUDA backends do not implement it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpager.sparse._checks import (
    check_bool,
    check_int,
    check_range,
    check_same_device,
    check_tensor,
)

if TYPE_CHECKING:
    import torch


def sparse_prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = True,
    *,
    block_size_M: int = 64,
    block_size_N: int = 64,
    q_seqlens: torch.Tensor | None = None,
    kv_seqlens: torch.Tensor | None = None,
    return_softmax_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over the keys its row block's tables list.

    q: ``[batch, seqlen_q, num_heads, head_dim]``; k, v: ``[batch, seqlen_k, num_kv_heads,
    head_dim]`` (flash-attention's layout; ``num_heads`` a multiple of ``num_kv_heads``,
    query head ``h`` reads kv head ``h // (num_heads // num_kv_heads)``); float32/16/bf16.
    block_count, column_count: int ``[batch, num_heads, rows]`` and block_offset,
    column_index: int ``[batch, num_heads, rows, *]`` as returned by
    `convert_vertical_slash_indexes`, with ``rows * block_size_M >= seqlen_q``.
    q_seqlens, kv_seqlens: int ``[batch]``, default ``seqlen_q`` / ``seqlen_k``; queries
    past ``q_seqlen`` get zeros, keys past ``kv_seqlen`` are never read.
    causal: query ``i`` sees key ``j`` only if ``j <= i + kv_seqlen - q_seqlen`` (bottom-right
    alignment, as in flash-attention and the tables).

    Returns out ``[batch, seqlen_q, num_heads, head_dim]`` in q's dtype and, with
    `return_softmax_lse`, the natural-log softmax normaliser float32 ``[batch, num_heads,
    seqlen_q]``. A query that sees no key gets a zero output and an LSE of -inf.
    """
    import torch

    causal = check_bool("causal", causal)
    return_softmax_lse = check_bool("return_softmax_lse", return_softmax_lse)
    block_size_M = check_int("block_size_M", block_size_M, minimum=1)
    block_size_N = check_int("block_size_N", block_size_N, minimum=1)
    if softmax_scale is not None and (
        isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))
    ):
        raise ValueError(f"softmax_scale must be a float or None, got {softmax_scale!r}")
    named = _check_tensors(q, k, v, block_count, block_offset, column_count, column_index)
    q, k, v = named["q"], named["k"], named["v"]
    batch, seqlen_q, _, head_dim = q.shape
    seqlen_k = k.shape[1]
    rows = named["block_count"].shape[2]
    if rows * block_size_M < seqlen_q:
        raise ValueError(
            f"block_count has {rows} rows of block_size_M={block_size_M}, too few for "
            f"seqlen_q={seqlen_q}"
        )
    lens = {}
    for name, given, default in (
        ("q_seqlens", q_seqlens, seqlen_q), ("kv_seqlens", kv_seqlens, seqlen_k),
    ):
        if given is None:
            lens[name] = torch.full((batch,), default, dtype=torch.int64, device=q.device)
            continue
        given = check_tensor(name, given, ndim=1, dtypes=(torch.int32, torch.int64))
        if given.shape[0] != batch:
            raise ValueError(f"{name} must have {batch} entries (batch), got {given.shape[0]}")
        named[name] = given
        lens[name] = given.to(torch.int64)
    check_same_device(named)
    check_range("q_seqlens", lens["q_seqlens"], low=0, high=seqlen_q)
    check_range("kv_seqlens", lens["kv_seqlens"], low=0, high=seqlen_k)
    if softmax_scale is None:
        softmax_scale = head_dim ** -0.5
    out, lse = _attend(
        q, k, v, named["block_count"], named["block_offset"], named["column_count"],
        named["column_index"], float(softmax_scale), causal, block_size_M, block_size_N,
        lens["q_seqlens"], lens["kv_seqlens"],
    )
    return (out, lse) if return_softmax_lse else out


def _check_tensors(
    q: object, k: object, v: object, block_count: object, block_offset: object,
    column_count: object, column_index: object,
) -> dict[str, torch.Tensor]:
    """Types, ranks and shapes of the attention inputs and tables; {name: tensor}."""
    import torch

    floats = (torch.float32, torch.float16, torch.bfloat16)
    ints = (torch.int32, torch.int64)
    named = {
        "q": check_tensor("q", q, ndim=4, dtypes=floats),
        "k": check_tensor("k", k, ndim=4, dtypes=floats),
        "v": check_tensor("v", v, ndim=4, dtypes=floats),
        "block_count": check_tensor("block_count", block_count, ndim=3, dtypes=ints),
        "block_offset": check_tensor("block_offset", block_offset, ndim=4, dtypes=ints),
        "column_count": check_tensor("column_count", column_count, ndim=3, dtypes=ints),
        "column_index": check_tensor("column_index", column_index, ndim=4, dtypes=ints),
    }
    batch, _, num_heads, head_dim = named["q"].shape
    k_shape, v_shape = tuple(named["k"].shape), tuple(named["v"].shape)
    if k_shape[0] != batch or k_shape[3] != head_dim:
        raise ValueError(
            f"k must be [batch={batch}, seqlen_k, num_kv_heads, head_dim={head_dim}], "
            f"got {k_shape}"
        )
    if v_shape != k_shape:
        raise ValueError(f"v must have k's shape {k_shape}, got {v_shape}")
    if k_shape[2] == 0 or num_heads % k_shape[2] != 0:
        raise ValueError(
            f"q's num_heads ({num_heads}) must be a multiple of k's num_kv_heads ({k_shape[2]})"
        )
    rows = named["block_count"].shape[2]
    for name, ndim in (
        ("block_count", 3), ("column_count", 3), ("block_offset", 4), ("column_index", 4),
    ):
        shape = tuple(named[name].shape)
        if shape[:3] != (batch, num_heads, rows):
            extra = ", *" if ndim == 4 else ""
            raise ValueError(
                f"{name} must be [batch={batch}, num_heads={num_heads}, rows={rows}{extra}], "
                f"got {shape}"
            )
    return named


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_count: torch.Tensor,
    block_offset: torch.Tensor,
    column_count: torch.Tensor,
    column_index: torch.Tensor,
    softmax_scale: float,
    causal: bool,
    block_size_M: int,
    block_size_N: int,
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The computation of `sparse_prefill_attention` on checked arguments, in float32.

    Per row block: gather the listed keys ([batch, heads, n_listed], blocks then columns),
    mask what a kernel masks (unused slots, keys past kv_seqlen, causal future), softmax.
    """
    import torch

    batch, seqlen_q, num_heads, head_dim = q.shape
    device = q.device
    out = torch.zeros(batch, seqlen_q, num_heads, head_dim, dtype=q.dtype, device=device)
    lse = torch.full((batch, num_heads, seqlen_q), float("-inf"), device=device)
    group = num_heads // k.shape[2]
    # [batch, num_heads, seqlen_k, head_dim]: every query head with its kv head's keys.
    keys = k.repeat_interleave(group, dim=2).transpose(1, 2).float()
    values = v.repeat_interleave(group, dim=2).transpose(1, 2).float()
    q_len = q_seqlens.view(batch, 1, 1, 1)
    kv_len = kv_seqlens.view(batch, 1, 1, 1)
    within_block = torch.arange(block_size_N, device=device)
    for m in range(-(-seqlen_q // block_size_M)):
        first, last = m * block_size_M, min((m + 1) * block_size_M, seqlen_q)
        starts = block_offset[:, :, m].to(torch.int64)
        block_keys = (starts.unsqueeze(-1) + within_block).flatten(2)
        block_used = (
            torch.arange(starts.shape[-1], device=device) < block_count[:, :, m, None]
        ).repeat_interleave(block_size_N, dim=-1)
        col_keys = column_index[:, :, m].to(torch.int64)
        col_used = torch.arange(col_keys.shape[-1], device=device) < column_count[:, :, m, None]
        listed = torch.cat([block_keys, col_keys], dim=-1)
        used = torch.cat([block_used, col_used], dim=-1)
        used &= (listed >= 0) & (listed < kv_len.view(batch, 1, 1))
        gather_at = torch.where(used, listed, 0).unsqueeze(-1).expand(-1, -1, -1, head_dim)
        k_sel = keys.gather(2, gather_at)  # [batch, num_heads, n_listed, head_dim]
        v_sel = values.gather(2, gather_at)
        q_rows = q[:, first:last].transpose(1, 2).float()  # [batch, num_heads, rows, head_dim]
        scores = (q_rows @ k_sel.transpose(-1, -2)) * softmax_scale
        query_pos = torch.arange(first, last, device=device).view(1, 1, -1, 1)
        visible = used.unsqueeze(2) & (query_pos < q_len)
        if causal:
            visible &= listed.unsqueeze(2) <= query_pos + kv_len - q_len
        scores = scores.masked_fill(~visible, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # -inf where nothing is visible
        seen = torch.isfinite(row_lse)
        probs = torch.exp(scores - torch.where(seen, row_lse, 0).unsqueeze(-1))
        block_out = torch.where(seen.unsqueeze(-1), probs @ v_sel, 0)
        out[:, first:last] = block_out.transpose(1, 2).to(q.dtype)
        lse[:, :, first:last] = row_lse
    return out, lse
