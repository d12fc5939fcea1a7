"""The pure-torch backend: the definition of every op's semantics, and the oracle of tests.

It runs wherever torch runs (CPU or GPU), computes attention in float32, and favours plain,
readable tensor code over speed; vectorized over sequences so that the CPU engine and data
tests can use it for real work. Its modules: `attention` (v1, v2 and the v2 reduce),
`cache_ops` (reshape_and_cache, copy_blocks, swap_blocks), `merge` (merge_attn_states).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvpager.backends.base import Backend, common_capability_reason
from kvpager.backends.reference import attention, cache_ops, merge

if TYPE_CHECKING:
    from kvpager.backends.fp8 import Scale


class ReferenceBackend(Backend):
    """Serves every configuration `kvpager.ops` accepts, on any device with real data."""

    name = "reference"

    def device_reason(self, device: torch.device) -> str | None:
        if device.type == "meta":
            return "meta tensors hold no data to compute on"
        return None

    def capability_reason(
        self, *, head_size: int, block_size: int, dtype: torch.dtype, kv_cache_dtype: str
    ) -> str | None:
        return common_capability_reason(head_size=head_size, block_size=block_size,
                                        dtype=dtype, kv_cache_dtype=kv_cache_dtype)

    def paged_attention_v1(
        self, out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
        value_cache: torch.Tensor, num_kv_heads: int, scale: float,
        block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, max_seq_len: int,
        alibi_slopes: torch.Tensor | None, kv_cache_dtype: str, k_scale: Scale,
        v_scale: Scale, tp_rank: int = 0, blocksparse_local_blocks: int = 0,
        blocksparse_vert_stride: int = 0, blocksparse_block_size: int = 64,
        blocksparse_head_sliding_step: int = 0,
    ) -> None:
        attention.paged_attention_v1(
            out, query, key_cache, value_cache, num_kv_heads, scale, block_tables, seq_lens,
            block_size, max_seq_len, alibi_slopes, kv_cache_dtype, k_scale, v_scale, tp_rank,
            blocksparse_local_blocks, blocksparse_vert_stride, blocksparse_block_size,
            blocksparse_head_sliding_step,
        )

    def paged_attention_v2(
        self, out: torch.Tensor, exp_sums: torch.Tensor, max_logits: torch.Tensor,
        tmp_out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
        value_cache: torch.Tensor, num_kv_heads: int, scale: float,
        block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, max_seq_len: int,
        alibi_slopes: torch.Tensor | None, kv_cache_dtype: str, k_scale: Scale,
        v_scale: Scale, tp_rank: int = 0, blocksparse_local_blocks: int = 0,
        blocksparse_vert_stride: int = 0, blocksparse_block_size: int = 64,
        blocksparse_head_sliding_step: int = 0,
    ) -> None:
        attention.paged_attention_v2(
            out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, num_kv_heads,
            scale, block_tables, seq_lens, block_size, max_seq_len, alibi_slopes,
            kv_cache_dtype, k_scale, v_scale, tp_rank, blocksparse_local_blocks,
            blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step,
        )

    def reshape_and_cache(
        self, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
        value_cache: torch.Tensor, slot_mapping: torch.Tensor, kv_cache_dtype: str,
        k_scale: Scale, v_scale: Scale,
    ) -> None:
        cache_ops.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping,
                                    kv_cache_dtype, k_scale, v_scale)

    def copy_blocks(
        self, key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
        block_mapping: torch.Tensor,
    ) -> None:
        cache_ops.copy_blocks(key_caches, value_caches, block_mapping)

    def swap_blocks(
        self, src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor
    ) -> None:
        cache_ops.swap_blocks(src, dst, block_mapping)

    def merge_attn_states(
        self, output: torch.Tensor, prefix_output: torch.Tensor, prefix_lse: torch.Tensor,
        suffix_output: torch.Tensor, suffix_lse: torch.Tensor,
        output_lse: torch.Tensor | None = None,
    ) -> None:
        merge.merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse,
                                output_lse)


BACKEND = ReferenceBackend()

__all__ = ["BACKEND", "ReferenceBackend"]
