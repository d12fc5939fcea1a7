"""The pure-torch backend: the definition of every op's semantics, and the oracle of tests.

It runs wherever torch runs (CPU or GPU), computes attention in float32, and favours plain,
readable tensor code over speed; vectorized over sequences so that the CPU engine and data
tests can use it for real work. Its modules: `attention` (v1, v2 and the v2 reduce),
`cache_ops` (reshape_and_cache, copy_blocks, swap_blocks), `merge` (merge_attn_states),
`mla` (paged MLA decode and its latent-cache write).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kvpager.backends.base import Backend, common_capability_reason
from kvpager.backends.reference import attention, cache_ops, merge, mla

if TYPE_CHECKING:
    from kvpager.backends.op_args import CacheWriteArgs, MLADecodeArgs, PagedAttentionArgs


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

    def paged_attention_v1(self, args: PagedAttentionArgs) -> None:
        attention.paged_attention_v1(args)

    def paged_attention_v2(self, args: PagedAttentionArgs) -> None:
        attention.paged_attention_v2(args)

    def mla_reason(self) -> str | None:
        return None

    def paged_mla_decode(self, args: MLADecodeArgs) -> None:
        mla.paged_mla_decode(args)

    def reshape_and_cache(self, args: CacheWriteArgs) -> None:
        cache_ops.reshape_and_cache(args)

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
