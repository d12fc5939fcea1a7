"""The Triton backend: paged attention, cache writes and state merging as Triton kernels.

Runs on CUDA tensors (kernels compiled by Triton for the GPU at hand) and, for testing, on
CPU tensors in Triton's interpreter when `TRITON_INTERPRET=1` is set before the first call.
Importing this package imports neither torch nor triton: the registry asks
`unavailable_reason` first, and the kernel modules are imported on the first call.

Modules: `attention_kernels` / `attention` (v1, v2 and v2's reduce), `cache_ops`
(reshape_and_cache; copy_blocks and swap_blocks are served by the reference's torch code, as
their docstrings say), `merge` (merge_attn_states), `fp8_codec` (FP8 bytes in kernels),
`runtime` (interpreter or GPU, scale arguments).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from kvpager.backends.base import Backend, common_capability_reason
from kvpager.backends.triton import runtime

if TYPE_CHECKING:
    import torch

    from kvpager.backends.fp8 import Scale


_KERNEL_MODULES = ("attention", "cache_ops", "merge")


def _kernels(name: str) -> ModuleType:
    """A kernel module; the first call imports them all, so all share one mode (Triton
    fixes interpreter or compiled when a kernel is defined) and records it."""
    modules = [importlib.import_module(f"kvpager.backends.triton.{m}") for m in _KERNEL_MODULES]
    runtime.kernels_imported()
    return modules[_KERNEL_MODULES.index(name)]


class TritonBackend(Backend):
    """Triton kernels for every op of `Backend`, with vLLM's layouts and argument order."""

    name = "triton"

    def unavailable_reason(self) -> str | None:
        return runtime.import_error()

    def usable_reason(self) -> str | None:
        """None with a CUDA GPU, or on the CPU when the interpreter is on; else why not."""
        import torch

        if torch.cuda.is_available():
            return None
        reason = runtime.cpu_reason()
        return None if reason is None else f"no CUDA GPU here; {reason}"

    def device_reason(self, device: torch.device) -> str | None:
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            return runtime.cpu_reason()
        return f"Triton kernels run on CUDA tensors (or CPU ones when interpreted), not on " \
               f"{device.type} tensors"

    def capability_reason(
        self, *, head_size: int, block_size: int, dtype: torch.dtype, kv_cache_dtype: str
    ) -> str | None:
        """Dtypes and formats the kernels implement.

        The kernels pad any head size to a power of two and mask it, and take any block size
        that divides the 512-token partition (the attention ops accept 8, 16, 32; the cache
        writes any size); other sizes are refused by the ops' own checks first.
        """
        return common_capability_reason(head_size=head_size, block_size=block_size,
                                        dtype=dtype, kv_cache_dtype=kv_cache_dtype)

    # ---- attention ----------------------------------------------------------------------
    def paged_attention_v1(
        self, out: torch.Tensor, query: torch.Tensor, key_cache: torch.Tensor,
        value_cache: torch.Tensor, num_kv_heads: int, scale: float,
        block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int, max_seq_len: int,
        alibi_slopes: torch.Tensor | None, kv_cache_dtype: str, k_scale: Scale,
        v_scale: Scale, tp_rank: int = 0, blocksparse_local_blocks: int = 0,
        blocksparse_vert_stride: int = 0, blocksparse_block_size: int = 64,
        blocksparse_head_sliding_step: int = 0,
    ) -> None:
        _kernels("attention").paged_attention_v1(
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
        _kernels("attention").paged_attention_v2(
            out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache, num_kv_heads,
            scale, block_tables, seq_lens, block_size, max_seq_len, alibi_slopes,
            kv_cache_dtype, k_scale, v_scale, tp_rank, blocksparse_local_blocks,
            blocksparse_vert_stride, blocksparse_block_size, blocksparse_head_sliding_step,
        )

    # ---- cache ops ----------------------------------------------------------------------
    def reshape_and_cache(
        self, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
        value_cache: torch.Tensor, slot_mapping: torch.Tensor, kv_cache_dtype: str,
        k_scale: Scale, v_scale: Scale,
    ) -> None:
        _kernels("cache_ops").reshape_and_cache(key, value, key_cache, value_cache,
                                                slot_mapping, kv_cache_dtype, k_scale, v_scale)

    def copy_blocks(
        self, key_caches: list[torch.Tensor], value_caches: list[torch.Tensor],
        block_mapping: torch.Tensor,
    ) -> None:
        """Served by the reference backend's torch indexing (pure data movement, already
        bound by memory bandwidth); see `cache_ops.copy_blocks`."""
        _kernels("cache_ops").copy_blocks(key_caches, value_caches, block_mapping)

    def swap_blocks(
        self, src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor
    ) -> None:
        """Served by the reference backend's torch copies (DMA between devices); see
        `cache_ops.swap_blocks`."""
        _kernels("cache_ops").swap_blocks(src, dst, block_mapping)

    def merge_attn_states(
        self, output: torch.Tensor, prefix_output: torch.Tensor, prefix_lse: torch.Tensor,
        suffix_output: torch.Tensor, suffix_lse: torch.Tensor,
        output_lse: torch.Tensor | None = None,
    ) -> None:
        _kernels("merge").merge_attn_states(output, prefix_output, prefix_lse, suffix_output,
                                            suffix_lse, output_lse)


BACKEND = TritonBackend()

__all__ = ["BACKEND", "TritonBackend"]
