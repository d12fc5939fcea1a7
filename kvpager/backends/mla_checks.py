"""Argument checks of the paged MLA ops (`paged_mla_decode`, `concat_and_cache_mla`).

Static checks (metadata only) run when a `kvpager.backends.op_args.MLADecodeArgs` is built,
and when the write op is called; `queue_mla_decode_data_checks` adds the checks that read
tensor contents (one device->host sync, skipped with `check_indices=False`).

Layouts (vLLM's, DeepSeek-V2/V3): one latent row per token,
    latent_cache [num_blocks, block_size, kv_lora_rank + rope_dim]
(DeepSeek-V3: 512 + 64 = 576), query in the absorbed form [num_seqs, num_heads,
kv_lora_rank + rope_dim], output [num_seqs, num_heads, kv_lora_rank].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpager.backends import validation as v
from kvpager.backends.attention_checks import check_tables_and_lens
from kvpager.backends.layout import attention_dtypes

if TYPE_CHECKING:
    import torch

    from kvpager.backends.op_args import MLADecodeArgs

#: Block sizes of an MLA latent cache (FlashMLA and vLLM's MLA backends use 64).
MLA_BLOCK_SIZES: tuple[int, ...] = (8, 16, 32, 64)
#: Widest latent row the kernels take (DeepSeek-V3's 576, with room to spare).
MAX_LATENT_DIM = 1024


def check_latent_cache(name: str, cache: object, dtype: torch.dtype, device: torch.device
                       ) -> torch.Tensor:
    """[num_blocks, block_size, latent_dim] of `dtype` on `device`, rows packed."""
    cache = v.check_tensor(name, cache)
    v.check_device(name, cache, device, "query" if name == "latent_cache" else "kv_c")
    if cache.dtype != dtype:
        raise v.fail(name, f"must have dtype {dtype} (the dtype of the new rows; FP8 latent "
                           f"caches are not supported), got {cache.dtype}")
    v.check_ndim(name, cache, 3, "[num_blocks, block_size, kv_lora_rank + rope_dim]")
    if cache.shape[0] < 1:
        raise v.fail(name, "has no blocks")
    if cache.shape[1] not in MLA_BLOCK_SIZES:
        raise v.fail(name, f"has block_size {cache.shape[1]}; MLA caches take "
                           f"{', '.join(map(str, MLA_BLOCK_SIZES))}")
    v.check_packed(name, cache, 1, "after the block dimension")
    return cache


def check_mla_decode(args: MLADecodeArgs) -> float:
    """Static checks of one `paged_mla_decode` call; returns the scale as a float."""
    import math


    query = v.check_tensor("query", args.query)
    v.check_ndim("query", query, 3, "[num_seqs, num_heads, kv_lora_rank + rope_dim]")
    v.check_dtype("query", query, attention_dtypes())
    num_seqs, num_heads, latent_dim = query.shape
    device = query.device
    if not 1 <= latent_dim <= MAX_LATENT_DIM:
        raise v.fail("query", f"has a latent width of {latent_dim}; 1..{MAX_LATENT_DIM} "
                              f"supported")
    if query.stride(2) != 1 or (num_heads > 1 and query.stride(1) != latent_dim):
        raise v.fail("query", f"must have its heads packed (strides [*, {latent_dim}, 1]), "
                              f"got strides {tuple(query.stride())}")
    rank = args.kv_lora_rank
    v.check_int("kv_lora_rank", rank, 1)
    if rank > latent_dim:
        raise v.fail("kv_lora_rank", f"({rank}) must not exceed the latent width of query "
                                     f"and latent_cache ({latent_dim} = kv_lora_rank + "
                                     f"rope_dim)")
    out = v.check_tensor("out", args.out)
    v.check_device("out", out, device, "query")
    if out.dtype != query.dtype:
        raise v.fail("out", f"must have the dtype of query ({query.dtype}), got {out.dtype}")
    v.check_shape("out", out, (num_seqs, num_heads, rank),
                  "[num_seqs, num_heads, kv_lora_rank]")
    v.check_packed("out", out, 0, "[num_seqs, num_heads, kv_lora_rank]")
    cache = check_latent_cache("latent_cache", args.latent_cache, query.dtype, device)
    if cache.shape[2] != latent_dim:
        raise v.fail("latent_cache", f"has rows of {cache.shape[2]} elements but query has "
                                     f"{latent_dim} (kv_lora_rank + rope_dim)")
    block_size = args.block_size
    v.check_int("block_size", block_size, 1)
    if block_size != cache.shape[1]:
        raise v.fail("block_size", f"({block_size}) must equal the block dimension of "
                                   f"latent_cache ({cache.shape[1]})")
    check_tables_and_lens(args.block_tables, args.seq_lens, device, num_seqs)
    scale = v.check_float("scale", args.scale)
    if not math.isfinite(scale) or scale <= 0:
        raise v.fail("scale", f"must be finite and > 0, got {scale!r}")
    window = args.sliding_window
    if window is not None:
        if not v.is_int(window):
            raise v.fail("sliding_window", f"must be a positive int or None, got "
                                           f"{type(window).__name__} {window!r}")
        v.check_int("sliding_window", window, 1)
    return scale


def queue_mla_decode_data_checks(checks: v.DataChecks, args: MLADecodeArgs) -> None:
    """Lengths >= 0 and within the table; every block id a sequence reads (inside its window)
    is a block of the cache. Entries it does not read may be padding."""
    import torch

    block_tables, block_size = args.block_tables, args.block_size
    lens = args.seq_lens.long()
    checks.require((lens >= 0).all(), "seq_lens", lambda: (
        f"must be >= 0; seq_lens[{v.first_index(lens < 0)[0]}] = {int(lens[lens < 0][0])}"))
    capacity = block_tables.shape[1] * block_size
    beyond = lens > capacity
    checks.require(~beyond.any(), "seq_lens", lambda: (
        f"[{v.first_index(beyond)[0]}] = {int(lens[beyond][0])} needs more than the "
        f"{block_tables.shape[1]} blocks of block_tables (capacity {capacity} tokens)"))
    columns = torch.arange(block_tables.shape[1], device=block_tables.device)
    read = columns[None, :] * block_size < lens[:, None]
    if args.sliding_window is not None:
        first = (lens - args.sliding_window).clamp(min=0)
        read &= (columns[None, :] + 1) * block_size > first[:, None]
    num_blocks = args.latent_cache.shape[0]
    bad = read & ((block_tables < 0) | (block_tables >= num_blocks))

    def explain() -> str:
        row, col = v.first_index(bad)
        return (f"[{row}, {col}] = {int(block_tables[row, col])} is not a block of the cache "
                f"(0..{num_blocks - 1}) but sequence {row} reads it")

    checks.require(~bad.any(), "block_tables", explain)


def check_concat_and_cache_mla(
    kv_c: object, k_pe: object, latent_cache: object, slot_mapping: object,
    kv_cache_dtype: object, scale: object,
) -> None:
    """Static checks of `concat_and_cache_mla` (vLLM's argument order).

    kv_c [num_tokens, kv_lora_rank] and k_pe [num_tokens, rope_dim] of one dtype, rows may be
    strided; latent_cache [num_blocks, block_size, kv_lora_rank + rope_dim] of that dtype;
    slot_mapping int64 [num_tokens]; kv_cache_dtype "auto" only; scale unused for "auto".
    """
    import torch

    kv_c = v.check_tensor("kv_c", kv_c)
    v.check_ndim("kv_c", kv_c, 2, "[num_tokens, kv_lora_rank]")
    v.check_dtype("kv_c", kv_c, attention_dtypes())
    k_pe = v.check_tensor("k_pe", k_pe)
    v.check_ndim("k_pe", k_pe, 2, "[num_tokens, rope_dim]")
    v.check_device("k_pe", k_pe, kv_c.device, "kv_c")
    if k_pe.dtype != kv_c.dtype:
        raise v.fail("k_pe", f"must have the dtype of kv_c ({kv_c.dtype}), got {k_pe.dtype}")
    if k_pe.shape[0] != kv_c.shape[0]:
        raise v.fail("k_pe", f"has {k_pe.shape[0]} tokens but kv_c has {kv_c.shape[0]}")
    cache = check_latent_cache("latent_cache", latent_cache, kv_c.dtype, kv_c.device)
    if cache.shape[2] != kv_c.shape[1] + k_pe.shape[1]:
        raise v.fail("latent_cache", f"has rows of {cache.shape[2]} elements but kv_c + k_pe "
                                     f"have {kv_c.shape[1]} + {k_pe.shape[1]}")
    slots = v.check_tensor("slot_mapping", slot_mapping)
    v.check_device("slot_mapping", slots, kv_c.device, "kv_c")
    v.check_dtype("slot_mapping", slots, (torch.int64,))
    v.check_shape("slot_mapping", slots, (kv_c.shape[0],), "[num_tokens]")
    if kv_cache_dtype != "auto":
        raise v.fail("kv_cache_dtype", f"must be 'auto' for an MLA latent cache (FP8 latent "
                                       f"caches are not supported), got {kv_cache_dtype!r}")
    v.check_scale("scale", scale, kv_c.device)


def queue_concat_and_cache_mla_data_checks(
    checks: v.DataChecks, slot_mapping: torch.Tensor, latent_cache: torch.Tensor
) -> None:
    """Slots (non-negative ones; negative = padding) inside the cache, none twice."""
    import torch

    capacity = latent_cache.shape[0] * latent_cache.shape[1]
    real = slot_mapping[slot_mapping >= 0]
    outside = real >= capacity
    checks.require(~outside.any(), "slot_mapping", lambda: (
        f"holds slot {int(real[outside][0])}, outside the cache's {capacity} slots"))
    checks.require(torch.tensor(real.unique().numel() == real.numel()), "slot_mapping",
                   lambda: "names one slot twice (each new token needs its own slot)")


__all__ = [
    "MAX_LATENT_DIM",
    "MLA_BLOCK_SIZES",
    "check_concat_and_cache_mla",
    "check_latent_cache",
    "check_mla_decode",
    "queue_concat_and_cache_mla_data_checks",
    "queue_mla_decode_data_checks",
]
