"""Cache writes in Triton (`reshape_and_cache`) and block copies delegated to torch.

Shapes follow vLLM (see `kvpager.backends.layout`): key_cache [blocks, K, D // x, bs, x],
value_cache [blocks, K, D, bs]; a slot is `block * block_size + offset`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl

from kvpager.backends.reference import cache_ops as reference_cache_ops
from kvpager.backends.triton import runtime
from kvpager.backends.triton.fp8_codec import FORMAT_CODES, encode_fp8

if TYPE_CHECKING:
    import torch

    from kvpager.backends.op_args import CacheWriteArgs


@triton.jit
def reshape_and_cache_kernel(
    key_ptr, value_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr, k_scale, v_scale,
    key_token_stride, value_token_stride, k_block_stride, v_block_stride,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    X: tl.constexpr, KV_FP8: tl.constexpr, K_SCALE_PTR: tl.constexpr,
    V_SCALE_PTR: tl.constexpr,
):
    """Grid (num_tokens, num_kv_heads): one head vector of one token per program.

    key / value rows [D] of token t, head h are stored at slot s = slot_mapping[t]:
    key_cache[s // bs, h, d // X, s % bs, d % X] and value_cache[s // bs, h, d, s % bs]. A
    negative slot is padding: the program returns before touching memory. FP8 caches get
    `encode_fp8(x / scale)` with an IEEE division (`div_rn`), bit for bit what the reference
    writes.
    """
    token = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_SIZE
    src = head * HEAD_SIZE + dims
    key = tl.load(key_ptr + token.to(tl.int64) * key_token_stride + src, mask=dim_ok)
    value = tl.load(value_ptr + token.to(tl.int64) * value_token_stride + src, mask=dim_ok)
    head_base = head.to(tl.int64) * (HEAD_SIZE * BLOCK_SIZE)
    key_dst = (block * k_block_stride + head_base + offset * X
               + (dims // X) * (BLOCK_SIZE * X) + dims % X)
    value_dst = block * v_block_stride + head_base + dims * BLOCK_SIZE + offset
    if KV_FP8 != 0:
        ks = tl.load(k_scale) if K_SCALE_PTR else k_scale
        vs = tl.load(v_scale) if V_SCALE_PTR else v_scale
        key_out = encode_fp8(tl.math.div_rn(key.to(tl.float32), ks), KV_FP8)
        value_out = encode_fp8(tl.math.div_rn(value.to(tl.float32), vs), KV_FP8)
    else:
        key_out = key.to(key_cache_ptr.dtype.element_ty)
        value_out = value.to(value_cache_ptr.dtype.element_ty)
    tl.store(key_cache_ptr + key_dst, key_out, mask=dim_ok)
    tl.store(value_cache_ptr + value_dst, value_out, mask=dim_ok)


def reshape_and_cache(args: CacheWriteArgs) -> None:
    """Store token i's key/value [K, D] at slot_mapping[i]; negative slots are skipped.

    key, value: [num_tokens, K, D] (token stride free, heads packed); slot_mapping int64
    [num_tokens]. Any block size and head size. Unlike the reference, it never reads the
    slots back to the host: no device sync, safe inside CUDA-graph capture.
    """
    key, value, key_cache, value_cache = args.key, args.value, args.key_cache, args.value_cache
    num_tokens, num_kv_heads, head_size = key.shape
    if num_tokens == 0:
        return
    fmt = FORMAT_CODES[args.kv_cache_dtype]
    k_arg, k_is_ptr, v_arg, v_is_ptr = runtime.scale_arguments(bool(fmt), args.k_scale,
                                                                args.v_scale, key.device)
    reshape_and_cache_kernel[(num_tokens, num_kv_heads)](
        key, value, key_cache, value_cache, args.slot_mapping, k_arg, v_arg,
        key.stride(0), value.stride(0), key_cache.stride(0), value_cache.stride(0),
        HEAD_SIZE=head_size, HEAD_PAD=runtime.next_power_of_2(head_size),
        BLOCK_SIZE=key_cache.shape[3], X=key_cache.shape[4], KV_FP8=fmt,
        K_SCALE_PTR=k_is_ptr, V_SCALE_PTR=v_is_ptr, num_warps=1,
    )


def copy_blocks(
    key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
    block_mapping: torch.Tensor,
) -> None:
    """Copy-on-write block copies: served by the reference backend's torch code.

    Pure data movement (`index_select` + `index_copy_` per layer, already bound by memory
    bandwidth on a GPU); a Triton kernel would move the same bytes. Same contract as
    `kvpager.backends.reference.cache_ops.copy_blocks`.
    """
    reference_cache_ops.copy_blocks(key_caches, value_caches, block_mapping)


def swap_blocks(src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor) -> None:
    """GPU <-> CPU block copies: served by the reference backend's torch code.

    Copies between devices are DMA transfers (`copy_`, asynchronous with a pinned CPU side)
    that no kernel can speed up; within a device it is one gather + scatter. Same contract
    as `kvpager.backends.reference.cache_ops.swap_blocks`.
    """
    reference_cache_ops.swap_blocks(src, dst, block_mapping)


__all__ = ["copy_blocks", "reshape_and_cache", "reshape_and_cache_kernel", "swap_blocks"]
