"""Eager execution of an op: check the arguments once, pick the backend, run it.

`kvpager.ops` calls these functions directly in eager mode, and `torch.ops.kvpager.*`
registers them as the real implementations (see `torch_library`), so a call checks its
arguments the same way whichever door it came through. Order of work: static checks (raise
before anything else), backend resolution, data checks (one device->host sync, skipped with
`check_indices=False`), then the backend writes the outputs. A call with nothing to write
(zero sequences, tokens, heads or block pairs) stops after the checks: zero-size tensors are
valid arguments, and backends never see them. Meta tensors are refused here, naming the
argument (they hold no data to compute on). Signatures are the schema's:
vLLM's arguments plus keyword-only `backend` and `check_indices`; see `kvpager.ops` for the
tensor shapes.
"""

from __future__ import annotations

import torch

from kvpager import backends as registry
from kvpager.backends.attention_checks import (
    check_attention,
    check_v2_workspace,
    queue_attention_data_checks,
)
from kvpager.backends.cache_checks import (
    check_copy_blocks,
    check_merge_attn_states,
    check_reshape_and_cache,
    check_swap_blocks,
    queue_reshape_and_cache_data_checks,
)
from kvpager.backends.validation import (
    DataChecks,
    check_block_pairs,
    check_real_device,
    same_tensor_storage,
)

Tensor = torch.Tensor
Scale = float | torch.Tensor


def paged_attention_v1(
    out: Tensor, query: Tensor, key_cache: Tensor, value_cache: Tensor, num_kv_heads: int,
    scale: float, block_tables: Tensor, seq_lens: Tensor, block_size: int, max_seq_len: int,
    alibi_slopes: Tensor | None, kv_cache_dtype: str, k_scale: Scale, v_scale: Scale,
    tp_rank: int = 0, blocksparse_local_blocks: int = 0, blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64, blocksparse_head_sliding_step: int = 0, *,
    backend: str = "auto", check_indices: bool = True,
) -> None:
    dims = check_attention(
        out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
        block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank,
        blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
        blocksparse_head_sliding_step,
    )
    check_real_device("query", dims.device)
    impl = registry.resolve(backend, dims.device, head_size=dims.head_size,
                            block_size=dims.block_size, dtype=dims.dtype,
                            kv_cache_dtype=dims.kv_cache_dtype)
    if check_indices:
        checks = DataChecks()
        queue_attention_data_checks(checks, dims, block_tables, seq_lens, max_seq_len,
                                    k_scale, v_scale)
        checks.verify()
    if dims.num_seqs == 0 or dims.num_heads == 0:
        return
    impl.paged_attention_v1(
        out, query, key_cache, value_cache, num_kv_heads, float(scale), block_tables, seq_lens,
        block_size, max_seq_len, alibi_slopes, dims.kv_cache_dtype, k_scale, v_scale, tp_rank,
        blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
        blocksparse_head_sliding_step,
    )


def paged_attention_v2(
    out: Tensor, exp_sums: Tensor, max_logits: Tensor, tmp_out: Tensor, query: Tensor,
    key_cache: Tensor, value_cache: Tensor, num_kv_heads: int, scale: float,
    block_tables: Tensor, seq_lens: Tensor, block_size: int, max_seq_len: int,
    alibi_slopes: Tensor | None, kv_cache_dtype: str, k_scale: Scale, v_scale: Scale,
    tp_rank: int = 0, blocksparse_local_blocks: int = 0, blocksparse_vert_stride: int = 0,
    blocksparse_block_size: int = 64, blocksparse_head_sliding_step: int = 0, *,
    backend: str = "auto", check_indices: bool = True,
) -> None:
    dims = check_attention(
        out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
        block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank,
        blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
        blocksparse_head_sliding_step,
    )
    check_v2_workspace(dims, exp_sums, max_logits, tmp_out, max_seq_len)
    check_real_device("query", dims.device)
    impl = registry.resolve(backend, dims.device, head_size=dims.head_size,
                            block_size=dims.block_size, dtype=dims.dtype,
                            kv_cache_dtype=dims.kv_cache_dtype)
    if check_indices:
        checks = DataChecks()
        queue_attention_data_checks(checks, dims, block_tables, seq_lens, max_seq_len,
                                    k_scale, v_scale)
        checks.verify()
    if dims.num_seqs == 0 or dims.num_heads == 0:
        return
    impl.paged_attention_v2(
        out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, num_kv_heads,
        float(scale), block_tables, seq_lens, block_size, max_seq_len, alibi_slopes,
        dims.kv_cache_dtype, k_scale, v_scale, tp_rank, blocksparse_local_blocks,
        blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step,
    )


def reshape_and_cache(
    key: Tensor, value: Tensor, key_cache: Tensor, value_cache: Tensor, slot_mapping: Tensor,
    kv_cache_dtype: str, k_scale: Scale, v_scale: Scale, *, backend: str = "auto",
    check_indices: bool = True,
) -> None:
    dims = check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping,
                                   kv_cache_dtype, k_scale, v_scale)
    check_real_device("key", dims.device)
    impl = registry.resolve(backend, dims.device, head_size=dims.head_size,
                            block_size=dims.block_size, dtype=dims.dtype,
                            kv_cache_dtype=dims.kv_cache_dtype)
    if check_indices:
        checks = DataChecks()
        queue_reshape_and_cache_data_checks(checks, dims, slot_mapping, k_scale, v_scale)
        checks.verify()
    if dims.num_tokens == 0 or key.numel() == 0:
        return
    impl.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping,
                           dims.kv_cache_dtype, k_scale, v_scale)


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
    "copy_blocks",
    "merge_attn_states",
    "paged_attention_v1",
    "paged_attention_v2",
    "reshape_and_cache",
    "swap_blocks",
]
