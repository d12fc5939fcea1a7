"""Eager execution of an op: check the arguments once, pick the backend, run it.

`kvpager.ops` calls these functions directly in eager mode, and the real implementations of
`torch.ops.kvpager.*` call them too (see `torch_library`), so a call checks its arguments the
same way whichever door it came through. Order of work: static checks (raise
before anything else), backend resolution, data checks (one device->host sync, skipped with
`check_indices=False`), then the backend writes the outputs. A call with nothing to write
(zero sequences, tokens, heads or block pairs) stops after the checks: zero-size tensors are
valid arguments, and backends never see them. Meta tensors are refused here, naming the
argument (they hold no data to compute on).

Attention and cache writes take their argument object (`kvpager.backends.op_args`), whose
construction already ran the static checks; `torch_library` builds it from the schema's
arguments, `kvpager.ops` from vLLM's. The short ops keep the schema's signature. All take the
keyword-only `backend` and `check_indices`; see `kvpager.ops` for the tensor shapes.
"""

from __future__ import annotations

import torch

from kvpager import backends as registry
from kvpager.backends.attention_checks import queue_attention_data_checks
from kvpager.backends.base import Backend
from kvpager.backends.cache_checks import (
    check_copy_blocks,
    check_merge_attn_states,
    check_swap_blocks,
    queue_reshape_and_cache_data_checks,
)
from kvpager.backends.mla_checks import (
    check_concat_and_cache_mla,
    queue_concat_and_cache_mla_data_checks,
    queue_mla_decode_data_checks,
)
from kvpager.backends.op_args import CacheWriteArgs, MLADecodeArgs, PagedAttentionArgs
from kvpager.backends.reference import mla as reference_mla
from kvpager.backends.validation import (
    DataChecks,
    check_block_pairs,
    check_real_device,
    same_tensor_storage,
)

Tensor = torch.Tensor


def _attention_backend(
    args: PagedAttentionArgs, backend: str, check_indices: bool
) -> Backend | None:
    """Resolve the backend and run the data checks of a built (statically checked) call; None
    when there is nothing to write."""
    check_real_device("query", args.device)
    impl = registry.resolve(backend, args.device, head_size=args.head_size,
                            block_size=args.block_size, dtype=args.dtype,
                            kv_cache_dtype=args.kv_cache_dtype)
    if check_indices:
        checks = DataChecks()
        queue_attention_data_checks(checks, args)
        checks.verify()
    return None if args.is_empty else impl


def paged_attention_v1(
    args: PagedAttentionArgs, *, backend: str = "auto", check_indices: bool = True
) -> None:
    impl = _attention_backend(args, backend, check_indices)
    if impl is not None:
        impl.paged_attention_v1(args)


def paged_attention_v2(
    args: PagedAttentionArgs, *, backend: str = "auto", check_indices: bool = True
) -> None:
    args.v2_workspace()  # a v1 call is refused before anything else happens
    impl = _attention_backend(args, backend, check_indices)
    if impl is not None:
        impl.paged_attention_v2(args)


def paged_mla_decode(
    args: MLADecodeArgs, *, backend: str = "auto", check_indices: bool = True
) -> None:
    check_real_device("query", args.device)
    impl = registry.resolve(backend, args.device, mla=True)
    if check_indices:
        checks = DataChecks()
        queue_mla_decode_data_checks(checks, args)
        checks.verify()
    if not args.is_empty:
        impl.paged_mla_decode(args)


def concat_and_cache_mla(
    kv_c: Tensor, k_pe: Tensor, latent_cache: Tensor, slot_mapping: Tensor,
    kv_cache_dtype: str = "auto", scale: object = 1.0, *, check_indices: bool = True,
) -> None:
    """One implementation on every device (the reference's torch indexing): a scatter of
    rows, bound by memory bandwidth, needs no kernel of its own."""
    check_concat_and_cache_mla(kv_c, k_pe, latent_cache, slot_mapping, kv_cache_dtype, scale)
    check_real_device("kv_c", kv_c.device)
    if check_indices:
        checks = DataChecks()
        queue_concat_and_cache_mla_data_checks(checks, slot_mapping, latent_cache)
        checks.verify()
    if kv_c.shape[0]:
        reference_mla.concat_and_cache_mla(kv_c, k_pe, latent_cache, slot_mapping)


def reshape_and_cache(
    args: CacheWriteArgs, *, backend: str = "auto", check_indices: bool = True
) -> None:
    check_real_device("key", args.device)
    impl = registry.resolve(backend, args.device, head_size=args.head_size,
                            block_size=args.block_size, dtype=args.dtype,
                            kv_cache_dtype=args.kv_cache_dtype)
    if check_indices:
        checks = DataChecks()
        queue_reshape_and_cache_data_checks(checks, args)
        checks.verify()
    if args.is_empty:
        return
    impl.reshape_and_cache(args)


def copy_blocks(
    key_caches: list[Tensor], value_caches: list[Tensor], block_mapping: Tensor, *,
    backend: str = "auto", check_indices: bool = True,
) -> None:
    num_blocks = check_copy_blocks(key_caches, value_caches, block_mapping)
    device = key_caches[0].device if key_caches else block_mapping.device
    check_real_device("key_caches[0]" if key_caches else "block_mapping", device)
    impl = registry.resolve(backend, device)
    if not key_caches:
        return
    if check_indices:
        checks = DataChecks()
        check_block_pairs(checks, "block_mapping", block_mapping, num_blocks, num_blocks,
                          disjoint=True)
        checks.verify()
    if block_mapping.shape[0] == 0:
        return
    impl.copy_blocks(list(key_caches), list(value_caches), block_mapping)


def _swap_device(src: Tensor, dst: Tensor) -> torch.device:
    """The device a swap's backend must accept: the accelerator side, if there is one."""
    return dst.device if src.device.type == "cpu" else src.device


def swap_blocks(
    src: Tensor, dst: Tensor, block_mapping: Tensor, *, backend: str = "auto",
    check_indices: bool = True,
) -> None:
    check_swap_blocks(src, dst, block_mapping)
    check_real_device("src", src.device)
    check_real_device("dst", dst.device)
    impl = registry.resolve(backend, _swap_device(src, dst))
    if check_indices:
        checks = DataChecks()
        check_block_pairs(checks, "block_mapping", block_mapping, src.shape[0], dst.shape[0],
                          disjoint=same_tensor_storage(src, dst))
        checks.verify()
    if block_mapping.shape[0] == 0:
        return
    impl.swap_blocks(src, dst, block_mapping)


def merge_attn_states(
    output: Tensor, prefix_output: Tensor, prefix_lse: Tensor, suffix_output: Tensor,
    suffix_lse: Tensor, output_lse: Tensor | None = None, *, backend: str = "auto",
) -> None:
    check_merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse,
                            output_lse)
    check_real_device("output", output.device)
    impl = registry.resolve(backend, output.device)
    if output.shape[0] == 0 or output.shape[1] == 0:
        return
    impl.merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse,
                           output_lse)


__all__ = [
    "concat_and_cache_mla",
    "copy_blocks",
    "merge_attn_states",
    "paged_attention_v1",
    "paged_attention_v2",
    "paged_mla_decode",
    "reshape_and_cache",
    "swap_blocks",
]
