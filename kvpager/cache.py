"""KVCache: the per-layer K/V tensors of a paged cache, and the executor of the manager's plans.

The manager decides and this class moves memory: `execute` carries out one step's swap and
copy-on-write plans with `swap_blocks` / `copy_blocks`, `write` stores new tokens with
`reshape_and_cache`, and the attention kernels read `key_caches[layer]` /
`value_caches[layer]` directly. Layouts are vLLM's (see docs/architecture.md):

- key cache `[num_blocks, num_kv_heads, head_size // x, block_size, x]`, x = 16 bytes /
  element size of the cache dtype;
- value cache `[num_blocks, num_kv_heads, head_size, block_size]`.

A CPU swap area of the same per-block layout holds swapped-out blocks; it is page-locked
when the device cache is on a GPU, so swaps run asynchronously on the current stream.
Block ids are the manager's: GPU ids index the device tensors, CPU ids the swap area.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from kvpager import ops
from kvpager.backends.layout import allocate_kv_cache, cache_dtype_for, x_for
from kvpager.backends.validation import OpArgumentError

if TYPE_CHECKING:
    from kvpager.core.memory.manager import KVCacheManager
    from kvpager.core.sched.output import SchedulerOutput

Scale = float | torch.Tensor


class KVCache:
    """K/V tensors of `num_layers` layers on `device`, plus `num_cpu_blocks` host blocks (the
    swap area, then the host prefix tier when the manager has one).

    Args:
        num_layers, num_blocks, num_kv_heads, head_size, block_size: cache geometry.
        dtype: the model's dtype (fp32/fp16/bf16); an "auto" cache stores it.
        kv_cache_dtype: "auto", "fp8" / "fp8_e4m3" or "fp8_e5m2" (uint8 storage).
        k_scale, v_scale: FP8 scales (stored as quantize(x / scale)); 1.0 otherwise.
        backend: kernel backend for the cache ops ("auto" picks per device).
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        num_kv_heads: int,
        head_size: int,
        block_size: int,
        *,
        dtype: torch.dtype = torch.float16,
        kv_cache_dtype: str = "auto",
        device: torch.device | str = "cpu",
        num_cpu_blocks: int = 0,
        k_scale: Scale = 1.0,
        v_scale: Scale = 1.0,
        backend: str = "auto",
    ) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
        if not isinstance(num_cpu_blocks, int) or num_cpu_blocks < 0:
            raise ValueError(f"num_cpu_blocks must be an int >= 0, got {num_cpu_blocks!r}")
        self.device = torch.device(device)
        self.num_layers, self.num_blocks, self.num_cpu_blocks = num_layers, num_blocks, \
            num_cpu_blocks
        self.num_kv_heads, self.head_size, self.block_size = num_kv_heads, head_size, block_size
        self.dtype, self.kv_cache_dtype = dtype, kv_cache_dtype
        self.k_scale, self.v_scale = k_scale, v_scale
        self.backend = backend
        layers = [allocate_kv_cache(num_blocks, num_kv_heads, head_size, block_size,
                                    dtype=dtype, kv_cache_dtype=kv_cache_dtype, device=device)
                  for _ in range(num_layers)]
        self.key_caches = [k for k, _ in layers]
        self.value_caches = [v for _, v in layers]
        pin = self.device.type == "cuda"
        cpu = [allocate_kv_cache(num_cpu_blocks, num_kv_heads, head_size, block_size,
                                 dtype=dtype, kv_cache_dtype=kv_cache_dtype, device="cpu",
                                 pin_memory=pin) for _ in range(num_layers)] \
            if num_cpu_blocks else []
        self.cpu_key_caches = [k for k, _ in cpu]
        self.cpu_value_caches = [v for _, v in cpu]

    @classmethod
    def for_manager(
        cls, manager: KVCacheManager, num_layers: int, num_kv_heads: int, head_size: int,
        **kwargs,
    ) -> KVCache:
        """A cache sized by a manager's configuration: GPU blocks, block size, and one host
        buffer holding the swap area and then the host prefix tier (the manager's host ids
        index it directly)."""
        cfg = manager.config
        return cls(num_layers, cfg.num_gpu_blocks, num_kv_heads, head_size, cfg.block_size,
                   num_cpu_blocks=cfg.num_cpu_blocks + cfg.num_cpu_prefix_blocks, **kwargs)

    @staticmethod
    def bytes_per_block(
        num_layers: int, num_kv_heads: int, head_size: int, block_size: int,
        dtype: torch.dtype = torch.float16, kv_cache_dtype: str = "auto",
    ) -> int:
        """Bytes one block takes over all layers, K and V: how a server turns free GPU
        memory into `num_gpu_blocks`."""
        element = torch.empty((), dtype=cache_dtype_for(kv_cache_dtype, dtype)).element_size()
        return 2 * num_layers * num_kv_heads * head_size * block_size * element

    @property
    def x(self) -> int:
        return x_for(self.key_caches[0].dtype)

    # ---- plans --------------------------------------------------------------------------
    def execute(self, out: SchedulerOutput) -> None:
        """Carry out one step's memory plans in the order that keeps them correct: offloads to
        the host prefix tier (evicted blocks are about to be reused), swap out (blocks freed
        now may be reused below), swap in, loads from the tier, then copy-on-write."""
        self.swap_out(out.offload)
        self.swap_out(out.swap_out)
        self.swap_in(out.swap_in)
        self.swap_in(out.load)
        self.copy(out.copies)

    def copy(self, pairs: np.ndarray) -> None:
        """Copy (src, dst) GPU blocks in every layer; `pairs` int64 `[n, 2]`."""
        if len(pairs):
            mapping = torch.as_tensor(np.asarray(pairs, dtype=np.int64), device=self.device)
            ops.copy_blocks(self.key_caches, self.value_caches, mapping, backend=self.backend)

    def swap_out(self, pairs: np.ndarray) -> None:
        """Copy (gpu, cpu) blocks to the swap area in every layer."""
        self._swap(pairs, self.key_caches, self.value_caches, self.cpu_key_caches,
                   self.cpu_value_caches)

    def swap_in(self, pairs: np.ndarray) -> None:
        """Copy (cpu, gpu) blocks back from the swap area in every layer."""
        self._swap(pairs, self.cpu_key_caches, self.cpu_value_caches, self.key_caches,
                   self.value_caches)

    def _swap(self, pairs, src_k, src_v, dst_k, dst_v) -> None:
        if not len(pairs):
            return
        if not self.num_cpu_blocks:
            raise ValueError("this KVCache has no host blocks for swap space or a prefix tier "
                             "(num_cpu_blocks=0)")
        mapping = torch.as_tensor(np.asarray(pairs, dtype=np.int64))
        for layer in range(self.num_layers):
            ops.swap_blocks(src_k[layer], dst_k[layer], mapping, backend=self.backend)
            ops.swap_blocks(src_v[layer], dst_v[layer], mapping, backend=self.backend)

    # ---- tokens -------------------------------------------------------------------------
    def write(
        self, layer: int, key: torch.Tensor, value: torch.Tensor,
        slot_mapping: torch.Tensor | np.ndarray,
    ) -> None:
        """Store new tokens' K/V of one layer at their slots.

        key, value: `[num_tokens, num_kv_heads, head_size]`; slot_mapping: int64
        `[num_tokens]` (negative = padding, skipped).
        """
        self._check_layer(layer)
        slots = torch.as_tensor(slot_mapping, dtype=torch.int64, device=self.device)
        ops.reshape_and_cache(key, value, self.key_caches[layer], self.value_caches[layer],
                              slots, self.kv_cache_dtype, self.k_scale, self.v_scale,
                              backend=self.backend)

    def gather(
        self, layer: int, blocks: np.ndarray | list[int], num_tokens: int, *, cpu: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `num_tokens` tokens' K and V through a block table, dequantized to fp32:
        `[num_tokens, num_kv_heads, head_size]` each. For tests and debugging, not speed."""
        self._check_layer(layer)
        k_cache = (self.cpu_key_caches if cpu else self.key_caches)[layer]
        v_cache = (self.cpu_value_caches if cpu else self.value_caches)[layer]
        ids = torch.as_tensor(np.asarray(blocks, dtype=np.int64), device=k_cache.device)
        if num_tokens > ids.numel() * self.block_size:
            raise ValueError(f"num_tokens {num_tokens} exceeds the {ids.numel()} blocks given")
        # [n, H, D/x, bs, x] -> [n, bs, H, D]; [n, H, D, bs] -> [n, bs, H, D]
        k = k_cache[ids].permute(0, 3, 1, 2, 4).reshape(-1, self.num_kv_heads, self.head_size)
        v = v_cache[ids].permute(0, 3, 1, 2).reshape(-1, self.num_kv_heads, self.head_size)
        return (self._dequantize(k[:num_tokens], self.k_scale),
                self._dequantize(v[:num_tokens], self.v_scale))

    def _dequantize(self, t: torch.Tensor, scale: Scale) -> torch.Tensor:
        if self.kv_cache_dtype == "auto":
            return t.float()
        from kvpager.backends.fp8 import dequantize

        return dequantize(t, scale, self.kv_cache_dtype)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise OpArgumentError("layer", f"must be in [0, {self.num_layers}), got {layer}")
