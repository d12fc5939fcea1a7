"""Paged MLA decode and its cache write in plain torch: the definition other backends meet.

MLA (DeepSeek-V2/V3) caches one latent row per token, [num_blocks, block_size, L] with
L = kv_lora_rank + rope_dim (576 = 512 + 64 for DeepSeek-V3), instead of a K/V pair. A decode
query in the absorbed form [S, H, L] attends it directly:

    logit(h, t) = scale * q_h . latent_t            (the whole row: latent part + rope part)
    out_h       = sum_t softmax(logit(h, .))_t * latent_t[:kv_lora_rank]

computed in float32 and cast once. Every query head reads the one shared latent (MQA-like).
Semantics shared with paged attention (`reference.attention`): a sequence of length 0
outputs 0; with `sliding_window` W the query (at seq_len - 1) attends tokens
seq_len - W .. seq_len - 1 and blocks wholly before that are never gathered (their table
entries may be padding); table entries past ceil(seq_len / block_size) are never read; rows
not attended are removed by selection, so stale NaN there changes nothing, while NaN in what
is read propagates as the softmax formula gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvpager.backends.reference.attention import length_groups, window_starts

if TYPE_CHECKING:
    from kvpager.backends.op_args import MLADecodeArgs

_NEG_INF = float("-inf")


def gather_latent(
    latent_cache: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
    num_blocks: int, first_tokens: torch.Tensor,
) -> torch.Tensor:
    """float32 [S, num_blocks * block_size, L]: each sequence's latent rows in token order.

    Table entries a sequence does not read (past seq_len, wholly before its window) are
    replaced by block 0 before indexing; callers mask the rows they do not attend.
    """
    block_size = latent_cache.shape[1]
    columns = torch.arange(num_blocks, device=block_tables.device)
    needed = (columns[None, :] * block_size < seq_lens[:, None].long()) & (
        (columns[None, :] + 1) * block_size > first_tokens[:, None])
    ids = torch.where(needed, block_tables[:, :num_blocks], 0).long()  # [S, n]
    rows = latent_cache[ids]  # [S, n, bs, L]
    return rows.reshape(ids.shape[0], num_blocks * block_size, latent_cache.shape[2]).float()


def paged_mla_decode(args: MLADecodeArgs) -> None:
    """out [S, H, kv_lora_rank] from query [S, H, L] over each sequence's latent rows."""
    out, rank = args.out, args.kv_lora_rank
    out.masked_fill_((args.seq_lens == 0)[:, None, None], 0)  # a head that reads nothing
    per_token = 4 * (args.latent_dim + args.num_heads)
    for rows, longest in length_groups(args.seq_lens, per_token):
        if longest == 0:
            continue
        lens = args.seq_lens[rows].long()
        first = window_starts(lens, args.sliding_window)
        num_blocks = min(-(-longest // args.block_size), args.block_tables.shape[1])
        latent = gather_latent(args.latent_cache, args.block_tables[rows], lens, num_blocks,
                               first)  # [n, T, L]
        tokens = torch.arange(latent.shape[1], device=latent.device)
        attended = (tokens[None, :] < lens[:, None]) & (tokens[None, :] >= first[:, None])
        logits = (args.query[rows].float() @ latent.transpose(1, 2)) * args.scale  # [n, H, T]
        logits = torch.where(attended[:, None, :], logits, _NEG_INF)
        top = logits.amax(-1, keepdim=True)  # every row attends >= 1 token here
        weights = torch.where(attended[:, None, :], torch.exp(logits - top), 0.0)
        probs = weights / weights.sum(-1, keepdim=True)
        values = latent[..., :rank].masked_fill_(~attended[..., None], 0.0)  # selection
        out[rows] = (probs @ values).to(out.dtype)


def concat_and_cache_mla(
    kv_c: torch.Tensor, k_pe: torch.Tensor, latent_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write [kv_c | k_pe] of each token into its latent row; negative slots are skipped.

    kv_c [T, kv_lora_rank], k_pe [T, rope_dim], latent_cache [blocks, block_size, L],
    slot_mapping int64 [T] (slot = block * block_size + offset). Plain torch indexing on the
    tensors' device: the one implementation of this write, whatever the backend.
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    block_size = latent_cache.shape[1]
    latent_cache[slots // block_size, slots % block_size] = torch.cat([kv_c[keep], k_pe[keep]],
                                                                      dim=1)


__all__ = ["concat_and_cache_mla", "gather_latent", "paged_mla_decode"]
