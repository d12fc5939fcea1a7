"""Self-attention of one step over the paged KV cache.

A step's tokens are flattened vLLM-style into one `[num_tokens, ...]` batch: first the
prefill chunks (several tokens of one sequence each), then the decode tokens (one per
sequence). Every token's K/V is written to its slot with `reshape_and_cache` before anyone
attends, so that

- a decode token attends its whole history, itself included, with `paged_attention`
  straight from the blocks (the kernel under test, any backend);
- a prefill chunk attends causally with dense SDPA: over its own fresh K/V when it starts at
  position 0, and over the cached prefix (read back through its block table) followed by
  its own K/V when it continues a sequence: after a prefix-cache hit, a chunked prefill, or
  a recomputation that found its prompt blocks still cached.

Hybrid models (`CacheConfig.groups`) give each KV-cache group its own slots and block
tables (`GroupInputs`); a layer reads and writes through its group's. A sliding-window layer
(a query at `p` reads keys `p - W + 1 .. p`) reads only the blocks of its window, never the
released ones before it, and a layer with attention sinks (gpt-oss) adds one learned logit
per head to the softmax denominator; decodes pass both to the paged kernel.

Why dense SDPA for prefills: kvpager's kernels are vLLM's decode kernels (one query per
sequence); a production engine would use a variable-length flash kernel that reads block
tables, which is a different kernel, not a different memory manager.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvpager import ops
from kvpager.cache import KVCache


@dataclass(frozen=True)
class PrefillSegment:
    """Tokens `offset .. offset + count - 1` of the flat batch are positions
    `start .. start + count - 1` of one sequence. `history_blocks`: int64 `[ceil(start /
    block_size)]` physical blocks holding positions `0 .. start - 1` (empty when start is 0).
    """

    offset: int
    count: int
    start: int
    history_blocks: torch.Tensor
    #: Position of `history_blocks[0]`'s first token (a multiple of the block size): 0, or
    #: later for a window layer whose group released the blocks before its window.
    history_start: int = 0


@dataclass(frozen=True)
class GroupInputs:
    """Where one KV-cache group's layers write and read this step: slot_mapping int64
    `[num_tokens]`, one segment per prefill chunk (its history through this group's table),
    decode_block_tables int32 `[num_decodes, max_blocks]` (released window entries read 0,
    never read by a kernel)."""

    slot_mapping: torch.Tensor
    prefills: list[PrefillSegment]
    decode_block_tables: torch.Tensor


@dataclass(frozen=True)
class StepInputs:
    """Everything the model needs for one step, on the model's device.

    input_ids, positions, slot_mapping: int64 `[num_tokens]`, prefill tokens first.
    prefills: one segment per prefill chunk, in batch order.
    decode_block_tables: int32 `[num_decodes, max_blocks]`; decode_seq_lens: int32
        `[num_decodes]` (tokens each decode sequence attends, its new token included);
        decode_max_seq_len: their maximum (a host int, so the kernel needs no sync for it).
    logits_indices: int64 `[num_logits]`: the flat tokens whose next-token logits are
        wanted (last token of each chunk that completes a sequence, every decode token).
    extra_groups: groups 1.. of a hybrid model (the fields above are group 0's).
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    slot_mapping: torch.Tensor
    prefills: list[PrefillSegment]
    decode_block_tables: torch.Tensor
    decode_seq_lens: torch.Tensor
    decode_max_seq_len: int
    logits_indices: torch.Tensor
    extra_groups: tuple[GroupInputs, ...] = ()

    def group(self, index: int) -> GroupInputs:
        """KV-cache group `index`'s slots and tables."""
        if index == 0:
            return GroupInputs(self.slot_mapping, self.prefills, self.decode_block_tables)
        return self.extra_groups[index - 1]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_prefill_tokens(self) -> int:
        return sum(seg.count for seg in self.prefills)

    @property
    def num_decodes(self) -> int:
        return int(self.decode_seq_lens.numel())


def gather_history(
    cache: KVCache, layer: int, blocks: torch.Tensor, num_tokens: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the first `num_tokens` positions `blocks` hold, as `dtype`.

    blocks: int64 `[n]` on the cache's device (a table, or the part of one from a window's
    first block). Returns `[num_tokens, num_kv_heads, head_size]` each, dequantised when the
    cache is FP8.
    """
    k_cache, v_cache = cache.key_caches[layer], cache.value_caches[layer]
    heads, size = cache.num_kv_heads, cache.head_size
    # [n, H, D/x, bs, x] -> [n, bs, H, D/x, x];  [n, H, D, bs] -> [n, bs, H, D]
    k = k_cache[blocks].permute(0, 3, 1, 2, 4).reshape(-1, heads, size)[:num_tokens]
    v = v_cache[blocks].permute(0, 3, 1, 2).reshape(-1, heads, size)[:num_tokens]
    if cache.kv_cache_dtype != "auto":
        from kvpager.backends.fp8 import dequantize

        k = dequantize(k, cache.k_scale, cache.kv_cache_dtype)
        v = dequantize(v, cache.v_scale, cache.kv_cache_dtype)
    return k.to(dtype), v.to(dtype)


def _prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float,
    key_start: int = 0, window: int | None = None, sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of `c` queries at positions start.. over keys at positions
    `key_start .. start + c - 1`.

    q: `[c, num_heads, D]`; k, v: `[start + c - key_start, num_kv_heads, D]`. window: a query
    at p reads keys p - window + 1 .. p only. sinks: float32 `[num_heads]`, one extra logit
    per head in the softmax denominator (its value row is zero). Returns `[c, num_heads, D]`.
    Query head h reads kv head h // (num_heads // num_kv_heads), as the paged kernels do.
    """
    groups = q.shape[1] // k.shape[1]
    qh = q.transpose(0, 1).unsqueeze(0)  # [1, H, c, D]
    kh = k.transpose(0, 1).repeat_interleave(groups, dim=0).unsqueeze(0)
    vh = v.transpose(0, 1).repeat_interleave(groups, dim=0).unsqueeze(0)
    if start == 0 and window is None and sinks is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=q.shape[0] > 1, scale=scale)
        return out[0].transpose(0, 1)
    rows = torch.arange(q.shape[0], device=q.device)[:, None] + start
    cols = torch.arange(k.shape[0], device=q.device)[None, :] + key_start
    allowed = cols <= rows
    if window is not None:
        allowed &= cols > rows - window
    if sinks is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed, scale=scale)
        return out[0].transpose(0, 1)
    logits = torch.matmul(qh, kh.transpose(-1, -2)) * scale  # [1, H, c, L]
    logits = logits.masked_fill(~allowed, float("-inf"))
    sink = sinks.to(logits.dtype).view(1, -1, 1, 1).expand(1, -1, q.shape[0], 1)
    combined = torch.cat([logits, sink], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probs = torch.softmax(combined.float(), dim=-1)[..., :-1].to(vh.dtype)
    return torch.matmul(probs, vh)[0].transpose(0, 1)


def paged_self_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, cache: KVCache,
    batch: StepInputs, scale: float, *, backend: str = "auto", check_indices: bool = True,
    group: int = 0, sliding_window: int | None = None, sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write this step's K/V into the cache, then attend.

    q: `[num_tokens, num_heads, D]`; k, v: `[num_tokens, num_kv_heads, D]`, rotary already
    applied, in the model dtype. layer: the cache's layer tensors to use; group: the
    KV-cache group whose slots and tables the layer follows (`StepInputs.group`).
    sliding_window, sinks: see `_prefill_attention`. Returns `[num_tokens, num_heads, D]`.
    """
    tables = batch.group(group)
    cache.write(layer, k, v, tables.slot_mapping)
    out = torch.empty_like(q)
    for seg in tables.prefills:
        end = seg.offset + seg.count
        ks, vs = k[seg.offset:end], v[seg.offset:end]
        if seg.start > seg.history_start:
            hk, hv = gather_history(cache, layer, seg.history_blocks,
                                    seg.start - seg.history_start, q.dtype)
            ks, vs = torch.cat([hk, ks]), torch.cat([hv, vs])
        out[seg.offset:end] = _prefill_attention(q[seg.offset:end], ks, vs, seg.start, scale,
                                                 seg.history_start, sliding_window, sinks)
    first = batch.num_prefill_tokens
    if batch.num_decodes:
        extra: dict[str, object] = {}
        if sliding_window is not None:
            extra["sliding_window"] = sliding_window
        if sinks is not None:
            extra["sinks"] = sinks
        ops.paged_attention(
            q[first:], cache.key_caches[layer], cache.value_caches[layer],
            tables.decode_block_tables, batch.decode_seq_lens, scale=scale,
            num_kv_heads=cache.num_kv_heads, block_size=cache.block_size,
            max_seq_len=batch.decode_max_seq_len, kv_cache_dtype=cache.kv_cache_dtype,
            k_scale=cache.k_scale, v_scale=cache.v_scale, out=out[first:], backend=backend,
            check_indices=check_indices, **extra,  # type: ignore[arg-type]
        )
    return out


__all__ = ["GroupInputs", "PrefillSegment", "StepInputs", "gather_history",
           "paged_self_attention"]
