"""Cache writes and block copies in plain torch.

Shapes follow vLLM (see `kvpager.backends.layout`): key_cache [blocks, K, D // x, bs, x],
value_cache [blocks, K, D, bs]; a slot is `block * block_size + offset`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvpager.backends.fp8 import is_fp8, quantize

if TYPE_CHECKING:
    from kvpager.backends.fp8 import Scale
    from kvpager.backends.op_args import CacheWriteArgs


def _encode(x: torch.Tensor, kv_cache_dtype: str, scale: Scale, cache_dtype: torch.dtype):
    if is_fp8(kv_cache_dtype):
        return quantize(x, scale, kv_cache_dtype)
    return x.to(cache_dtype)


def reshape_and_cache(args: CacheWriteArgs) -> None:
    """Store token i's key/value [K, D] at slot_mapping[i]; a negative slot is skipped.

    key, value: [num_tokens, K, D]; slot_mapping: int64 [num_tokens]. FP8 caches receive
    `quantize(x / scale)`. Selecting the kept tokens reads the mask back to the host (one
    sync on a GPU): the reference favours plain indexing over speed.
    """
    key, value, key_cache, value_cache = args.key, args.value, args.key_cache, args.value_cache
    slot_mapping, kv_cache_dtype = args.slot_mapping, args.kv_cache_dtype
    tokens = (slot_mapping >= 0).nonzero().squeeze(1)
    if tokens.numel() == 0:
        return
    slots = slot_mapping[tokens]
    block_size, x = key_cache.shape[3], key_cache.shape[4]
    blocks, offsets = slots // block_size, slots % block_size
    num_kv_heads, head_size = key.shape[1], key.shape[2]
    k = _encode(key[tokens], kv_cache_dtype, args.k_scale, key_cache.dtype)
    v = _encode(value[tokens], kv_cache_dtype, args.v_scale, value_cache.dtype)
    # Indexing dims 0 and 3 with tensors puts the token dim first: [n, K, D // x, x].
    key_cache[blocks, :, :, offsets, :] = k.reshape(-1, num_kv_heads, head_size // x, x)
    value_cache[blocks, :, :, offsets] = v  # [n, K, D]


def copy_blocks(
    key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
    block_mapping: torch.Tensor,
) -> None:
    """For every layer, block dst := block src for each (src, dst) row of block_mapping.

    All sources are read before any destination is written (the ops refuse mappings where
    that order would matter).
    """
    if block_mapping.numel() == 0:
        return
    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    for cache in (*key_caches, *value_caches):
        cache.index_copy_(0, dst, cache.index_select(0, src))


def _runs(pairs: list[list[int]]) -> list[tuple[int, int, int]]:
    """Group (src, dst) pairs into (src_start, dst_start, length) runs of consecutive ids.

    A manager usually hands out neighbouring blocks, so a swap of a whole sequence becomes a
    few large copies instead of one small copy per block.
    """
    runs: list[tuple[int, int, int]] = []
    for src, dst in pairs:
        if runs:
            s0, d0, n = runs[-1]
            if src == s0 + n and dst == d0 + n:
                runs[-1] = (s0, d0, n + 1)
                continue
        runs.append((src, dst, 1))
    return runs


def _pinned(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.is_pinned()


def swap_blocks(src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """dst[d] := src[s] for each (s, d) row of block_mapping (int64 [n, 2] on the CPU).

    Between devices each run of consecutive blocks is one `copy_`, asynchronous
    (`non_blocking`) when the CPU side is pinned, as with vLLM's cudaMemcpyAsync: the caller
    synchronizes the stream before reading a CPU destination or reusing a CPU source.
    """
    if block_mapping.numel() == 0:
        return
    if src.device == dst.device:
        ids = block_mapping.to(src.device)
        dst.index_copy_(0, ids[:, 1], src.index_select(0, ids[:, 0]))
        return
    non_blocking = _pinned(src) or _pinned(dst)
    for s, d, n in _runs(block_mapping.tolist()):
        dst[d:d + n].copy_(src[s:s + n], non_blocking=non_blocking)


__all__ = ["copy_blocks", "reshape_and_cache", "swap_blocks"]
