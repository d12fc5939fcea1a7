"""Triton kernel of paged MLA decode (DeepSeek-V2/V3 latent attention).

A program owns one sequence and HEAD_BLOCK query heads (padded to 16 rows, the smallest
`tl.dot` tile) and walks the sequence's latent rows in tiles of TILE tokens with an online
softmax (running max `m`, sum `l`, accumulator `acc`, all float32). Every head reads the same
latent rows, so one tile load serves HEAD_BLOCK heads.

Tile shapes (HB = HEAD_BLOCK, R = RANK_PAD, E = ROPE_PAD, T = TILE):

    q_lat [HB, R], q_rope [HB, E]     the absorbed query, split at kv_lora_rank
    c     [T, R],  pe     [T, E]      latent rows of the tile: the values are c
    logits [HB, T] = q_lat c^T + q_rope pe^T;   acc [HB, R] += p c

A latent row of token t sits at `block * block_stride + (t % BLOCK_SIZE) * LATENT`, so a
tile need not hold whole blocks (rows of one block are contiguous, each token looks its block
up). Loads are masked by the token's validity (inside the sliding window and below seq_len),
so rows outside it, even NaN, never reach the arithmetic; the first tile starts at the block
of the window's first token, so blocks wholly before the window (and their table entries)
are never read. Rank and rope widths that are not powers of two are padded and masked; a
rope width of 0 skips its product (HAS_ROPE). FP32_DOT runs the products on float32 tiles
(float32 models, and the interpreter, which multiplies bfloat16 as raw integers).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["num_heads", "window"])
def paged_mla_decode_kernel(
    out_ptr, q_ptr, cache_ptr, block_tables_ptr, seq_lens_ptr, scale,
    q_seq_stride, cache_block_stride, table_stride, num_heads, window,
    RANK: tl.constexpr, ROPE: tl.constexpr, RANK_PAD: tl.constexpr, ROPE_PAD: tl.constexpr,
    HAS_ROPE: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_BLOCK: tl.constexpr,
    TILE: tl.constexpr, FP32_DOT: tl.constexpr,
):
    """Grid (num_seqs, cdiv(num_heads, HEAD_BLOCK)); writes out[seq, heads, :RANK]."""
    LATENT: tl.constexpr = RANK + ROPE
    seq = tl.program_id(0)
    heads = tl.program_id(1) * HEAD_BLOCK + tl.arange(0, HEAD_BLOCK)
    head_ok = heads < num_heads
    seq_len = tl.load(seq_lens_ptr + seq)
    first_token = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)
    start = (first_token // BLOCK_SIZE) * BLOCK_SIZE

    r = tl.arange(0, RANK_PAD)
    r_ok = r < RANK
    q_rows = q_ptr + seq.to(tl.int64) * q_seq_stride + heads[:, None] * LATENT
    q_lat = tl.load(q_rows + r[None, :], mask=head_ok[:, None] & r_ok[None, :], other=0.0)
    if FP32_DOT:
        q_lat = q_lat.to(tl.float32)
    if HAS_ROPE:
        e = tl.arange(0, ROPE_PAD)
        e_ok = e < ROPE
        q_rope = tl.load(q_rows + RANK + e[None, :], mask=head_ok[:, None] & e_ok[None, :],
                         other=0.0)
        if FP32_DOT:
            q_rope = q_rope.to(tl.float32)
    table_row = block_tables_ptr + seq.to(tl.int64) * table_stride

    m_i = tl.full([HEAD_BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([HEAD_BLOCK], tl.float32)
    acc = tl.zeros([HEAD_BLOCK, RANK_PAD], tl.float32)
    for tile_start in range(start, seq_len, TILE):
        tokens = tile_start + tl.arange(0, TILE)
        token_ok = (tokens < seq_len) & (tokens >= first_token)
        physical = tl.load(table_row + tokens // BLOCK_SIZE, mask=token_ok, other=0)
        rows = cache_ptr + physical.to(tl.int64) * cache_block_stride + (
            tokens % BLOCK_SIZE) * LATENT  # [T]
        c = tl.load(rows[:, None] + r[None, :], mask=token_ok[:, None] & r_ok[None, :],
                    other=0.0)  # [T, R]
        if FP32_DOT:
            c = c.to(tl.float32)
        logits = tl.dot(q_lat, tl.trans(c), input_precision="ieee")
        if HAS_ROPE:
            pe = tl.load(rows[:, None] + RANK + e[None, :],
                         mask=token_ok[:, None] & e_ok[None, :], other=0.0)
            if FP32_DOT:
                pe = pe.to(tl.float32)
            logits += tl.dot(q_rope, tl.trans(pe), input_precision="ieee")
        logits = tl.where(token_ok[None, :], logits * scale, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(logits - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c, input_precision="ieee")

    # A sequence that attends nothing (seq_len 0) outputs 0; attended logits that are all
    # -inf leave l_i = 0 and give NaN (0 / 0), as the reference's softmax does.
    seen = head_ok & (seq_len > first_token)
    l_i = tl.where(seen & (l_i == 0.0), float("nan"), l_i)
    result = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
    out_rows = (seq.to(tl.int64) * num_heads + heads) * RANK
    tl.store(out_ptr + out_rows[:, None] + r[None, :], result.to(out_ptr.dtype.element_ty),
             mask=head_ok[:, None] & r_ok[None, :])


__all__ = ["paged_mla_decode_kernel"]
