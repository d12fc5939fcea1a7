"""The Triton backend: paged attention, cache writes and state merging as Triton kernels.

Runs on CUDA tensors (kernels compiled by Triton for the GPU at hand) and, for testing, on
CPU tensors in Triton's interpreter when `TRITON_INTERPRET=1` is set before the first call.
Importing this package imports neither torch nor triton: the registry asks
`unavailable_reason` first, and the kernel modules are imported on the first call.

Modules: `attention_kernels` / `attention` (v1, v2 and v2's reduce), `cache_ops`
(reshape_and_cache; copy_blocks and swap_blocks are served by the reference's torch code, as
their docstrings say), `merge` (merge_attn_states), `fp8_codec` (FP8 bytes in kernels),
`runtime` (interpreter or GPU, scale arguments), `mla_kernels` / `mla` (paged MLA decode).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from kvpager.backends.base import Backend, common_capability_reason
from kvpager.backends.triton import runtime

if TYPE_CHECKING:
    import torch

    from kvpager.backends.op_args import CacheWriteArgs, MLADecodeArgs, PagedAttentionArgs


_KERNEL_MODULES = ("attention", "cache_ops", "merge", "mla")


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
    def paged_attention_v1(self, args: PagedAttentionArgs) -> None:
        _kernels("attention").paged_attention_v1(args)

    def paged_attention_v2(self, args: PagedAttentionArgs) -> None:
        _kernels("attention").paged_attention_v2(args)

    # ---- MLA ----------------------------------------------------------------------------
    def mla_reason(self) -> str | None:
        return None

    def paged_mla_decode(self, args: MLADecodeArgs) -> None:
        _kernels("mla").paged_mla_decode(args)

    # ---- cache ops ----------------------------------------------------------------------
    def reshape_and_cache(self, args: CacheWriteArgs) -> None:
        _kernels("cache_ops").reshape_and_cache(args)

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
