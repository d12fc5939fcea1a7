"""An independent oracle: dense softmax(QK^T)V, one sequence and one head at a time.

Written from docs/architecture.md's formulas with Python loops and float64 arithmetic, sharing
no code with kvpager: it gathers each sequence's keys and values block by block through its block
table, decodes FP8 bytes with torch's float8 dtypes, applies ALiBi and the block-sparse rule
token by token, and also produces the per-partition max / sum / output that v2 must write.
It reads only the tokens each head attends (slots past seq_len are never gathered; tokens
masked by sparsity are removed by selection), and NaN or inf in what it reads propagates
as torch.softmax propagates it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kernel_matrix import PARTITION_SIZE, AttentionInputs

_FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
        "fp8_e5m2": torch.float8_e5m2}


@dataclass
class DenseResult:
    out: torch.Tensor  # float64 [S, H, D]
    part_max: torch.Tensor  # float64 [S, H, P]; -inf where nothing is attended
    part_sum: torch.Tensor  # float64 [S, H, P]
    part_out: torch.Tensor  # float64 [S, H, P, D]


def _decode(raw: torch.Tensor, kv_cache_dtype: str, scale) -> torch.Tensor:
    if kv_cache_dtype == "auto":
        return raw.double()
    factor = float(scale) if not isinstance(scale, torch.Tensor) else float(scale.item())
    return raw.view(_FP8[kv_cache_dtype]).double() * factor


def gather_sequence(inp: AttentionInputs, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [L, num_kv_heads, head_size] of one sequence, decoded to float64.

    Token t lives in block block_tables[seq, t // bs] at offset t % bs; in the key cache
    element d of head h is key_cache[block, h, d // x, offset, d % x], in the value cache
    value_cache[block, h, d, offset]. Blocks wholly before the sliding window are not looked
    up (their table entries may be padding): their tokens read as 0, and are masked.
    """
    length = int(inp.seq_lens[seq])
    bs = inp.case.block_size
    first = inp.window_start(seq)
    keys, values = [], []
    for b in range(math.ceil(length / bs)):
        if (b + 1) * bs <= first:
            keys.append(torch.zeros_like(keys_of(inp, 0)))
            values.append(torch.zeros_like(inp.value_cache[0].permute(2, 0, 1)))
            continue
        block = int(inp.block_tables[seq, b])
        kb = inp.key_cache[block]  # [K, D // x, bs, x]
        keys.append(kb.permute(2, 0, 1, 3).reshape(bs, kb.shape[0], -1))  # [bs, K, D]
        values.append(inp.value_cache[block].permute(2, 0, 1))  # [bs, K, D]
    kv = inp.case.kv_cache_dtype
    k = torch.cat(keys)[:length] if keys else inp.key_cache.new_empty(0)
    v = torch.cat(values)[:length] if values else inp.value_cache.new_empty(0)
    return _decode(k, kv, inp.k_scale), _decode(v, kv, inp.v_scale)


def keys_of(inp: AttentionInputs, block: int) -> torch.Tensor:
    """[bs, K, D]: the keys of one cache block, token-major."""
    kb = inp.key_cache[block]
    return kb.permute(2, 0, 1, 3).reshape(kb.shape[2], kb.shape[0], -1)


def block_attended(inp: AttentionInputs, length: int, head: int, block_idx: int) -> bool:
    """The block-sparse rule of docs/architecture.md for one cache block of a sequence (True
    when dense)."""
    if not inp.sparse_kwargs or inp.sparse_kwargs["vert"] <= 1:
        return True
    s = inp.sparse_kwargs
    local, vert, sparse_block, step = s["local"], s["vert"], s["block"], s["step"]
    num_heads, num_kv_heads = inp.case.heads
    tp_rank = inp.tp_rank
    k_bs = block_idx * inp.case.block_size // sparse_block
    q_bs = (length - 1) // sparse_block
    if step >= 0:
        offset = (tp_rank * num_heads + head) * step + 1
    else:
        kv_head = head // (num_heads // num_kv_heads)
        offset = (tp_rank * num_kv_heads + kv_head) * (-step) + 1
    return (k_bs + offset) % vert == 0 or k_bs > q_bs - local


def token_mask(inp: AttentionInputs, length: int, head: int, first: int = 0) -> torch.Tensor:
    """bool [length]: token t is attended iff its block t // block_size is and t >= first
    (the sliding window's first token, transformers' convention: t > p - W, p = length - 1).
    """
    bs = inp.case.block_size
    blocks = [block_attended(inp, length, head, b) for b in range(math.ceil(length / bs))]
    in_window = torch.arange(length) >= first
    return torch.tensor(blocks).repeat_interleave(bs)[:length] & in_window


def dense_attention(inp: AttentionInputs) -> DenseResult:
    inp = inp.to("cpu")
    num_seqs, num_heads, head_size = inp.query.shape
    group = num_heads // inp.num_kv_heads
    parts = inp.num_partitions()
    out = torch.zeros(num_seqs, num_heads, head_size, dtype=torch.float64)
    part_max = torch.full((num_seqs, num_heads, parts), -math.inf, dtype=torch.float64)
    part_sum = torch.zeros(num_seqs, num_heads, parts, dtype=torch.float64)
    part_out = torch.zeros(num_seqs, num_heads, parts, head_size, dtype=torch.float64)
    for s in range(num_seqs):
        length = int(inp.seq_lens[s])
        if length == 0:
            continue
        keys, values = gather_sequence(inp, s)
        positions = torch.arange(length, dtype=torch.float64)
        for h in range(num_heads):
            kv_head = h // group
            q = inp.query[s, h].double()
            logits = inp.scale * (keys[:, kv_head] @ q)  # [L]
            if inp.alibi_slopes is not None:
                logits = logits + float(inp.alibi_slopes[h]) * (positions - length + 1)
            mask = token_mask(inp, length, h, inp.window_start(s))
            logits = torch.where(mask, logits, -math.inf)
            # Tokens the head skips are removed by selection: 0 * a stale NaN would be NaN.
            vals = torch.where(mask[:, None], values[:, kv_head], 0.0)  # [L, D]
            if mask.any():
                if inp.sinks is None:
                    out[s, h] = torch.softmax(logits, 0) @ vals
                else:  # the sink is one more logit with no value: softmax, then drop it
                    sink = inp.sinks[h].double().reshape(1)
                    out[s, h] = torch.softmax(torch.cat([logits, sink]), 0)[:length] @ vals
            for p in range(math.ceil(length / PARTITION_SIZE)):
                part = slice(p * PARTITION_SIZE, min(length, (p + 1) * PARTITION_SIZE))
                if not mask[part].any():
                    continue
                top = logits[part].max()
                if inp.sinks is not None and top == -math.inf:
                    # with sinks, a partition whose attended logits are all -inf is empty
                    # (max -inf, sum 0): the sink's finite logit takes the weight, as in v1
                    continue
                weights = torch.exp(logits[part] - top)
                part_max[s, h, p] = top
                part_sum[s, h, p] = weights.sum()
                part_out[s, h, p] = (weights / weights.sum()) @ vals[part]
    return DenseResult(out, part_max, part_sum, part_out)


def dense_mla(inp) -> torch.Tensor:
    """float64 [S, H, kv_lora_rank]: MLA decode by its definition, one sequence and head at a
    time (`kvpager.verify.mla_matrix.MLAInputs`): token t's latent row sits at
    latent_cache[block_tables[s, t // bs], t % bs]; keys are whole rows, values their first
    kv_lora_rank elements; with a window only tokens t >= seq_len - W are looked up."""
    cache = inp.latent_cache.cpu()
    table = inp.block_tables.cpu()
    bs, rank = inp.case.block_size, inp.case.kv_lora_rank
    num_seqs, num_heads, _ = inp.query.shape
    out = torch.zeros(num_seqs, num_heads, rank, dtype=torch.float64)
    for s in range(num_seqs):
        length = int(inp.seq_lens[s])
        tokens = range(inp.window_start(s), length)
        if not tokens:
            continue
        rows = torch.stack([cache[int(table[s, t // bs]), t % bs] for t in tokens]).double()
        for h in range(num_heads):
            q = inp.query[s, h].cpu().double()
            weights = torch.softmax(inp.scale * (rows @ q), 0)
            out[s, h] = weights @ rows[:, :rank]
    return out
