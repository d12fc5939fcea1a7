"""Configuration of the memory manager (`CacheConfig`) and the scheduler (`SchedulerConfig`).

The manager's result types live in `kvpager.core.plans`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvpager.core.groups import GroupSpec, StateSpec, check_groups


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


FREE_ORDERS = ("window_first", "lru")


@dataclass(frozen=True)
class CacheConfig:
    """Shape of the paged KV cache as the memory manager sees it (no tensors).

    Args:
        num_gpu_blocks: physical blocks of the device cache, > 0.
        block_size: tokens per block, > 0 (kernels accept 8, 16 or 32).
        num_cpu_blocks: blocks of the CPU swap area, >= 0 (0 disables swapping).
        watermark: fraction of GPU blocks that admitting a *new* prompt must leave free, in
            [0, 1). Running sequences may still use them: the margin keeps a burst of
            admissions from forcing immediate preemptions of running decodes.
        enable_prefix_caching: keep full computed blocks (prompt blocks, and generated blocks
            when their token ids are known) for reuse by content.
        max_model_len: tokens a sequence may hold at most (None: no limit). An append past
            it raises `SequenceTooLongError` instead of growing the table.
        num_cpu_prefix_blocks: host blocks of a tier for prefix blocks the GPU evicts (0: no
            tier; needs prefix caching). Host ids of the tier follow the swap area's
            (`kvpager.core.memory.prefix_tier`).
        prefix_tier_write_through: copy each block to the tier when it is registered, not
            only when the GPU evicts it (more host-link traffic, no copy on the eviction path).
        free_order: which free blocks are reused first. "window_first" (default): blocks a
            sliding window releases, before any other cached block (clean ones at once,
            cached ones ahead of other requests' cached prefixes), so window churn does not
            flush the prefix cache. "lru": one LRU queue of every freed block, cached or not
            (vLLM's single free queue), for comparison.
        groups: the model's KV-cache groups (`kvpager.core.groups` specs), group 0 first;
            None: one full-attention group, the manager of every earlier release. Several
            groups need `HybridKVCacheManager`, which caches prefixes across groups (a hit
            is the longest prefix every group serves). A state group refuses prefix caching
            (it keeps no checkpoint to serve a hit from), and the host prefix tier is not
            supported with several groups yet.
    """

    num_gpu_blocks: int
    block_size: int = 16
    num_cpu_blocks: int = 0
    watermark: float = 0.01
    enable_prefix_caching: bool = False
    max_model_len: int | None = None
    num_cpu_prefix_blocks: int = 0
    prefix_tier_write_through: bool = False
    groups: tuple[GroupSpec, ...] | None = None
    free_order: str = "window_first"

    def __post_init__(self) -> None:
        _check_int("num_gpu_blocks", self.num_gpu_blocks, 1)
        _check_int("block_size", self.block_size, 1)
        _check_int("num_cpu_blocks", self.num_cpu_blocks, 0)
        if not isinstance(self.watermark, (int, float)) or not 0.0 <= self.watermark < 1.0:
            raise ValueError(f"watermark must be a float in [0, 1), got {self.watermark!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"enable_prefix_caching must be a bool, got {self.enable_prefix_caching!r}"
            )
        if self.max_model_len is not None:
            _check_int("max_model_len", self.max_model_len, 1)
        _check_int("num_cpu_prefix_blocks", self.num_cpu_prefix_blocks, 0)
        if self.num_cpu_prefix_blocks and not self.enable_prefix_caching:
            raise ValueError("num_cpu_prefix_blocks needs enable_prefix_caching=True: the "
                             "tier holds prefix-cached blocks")
        if not isinstance(self.prefix_tier_write_through, bool):
            raise ValueError(f"prefix_tier_write_through must be a bool, got "
                             f"{self.prefix_tier_write_through!r}")
        if self.free_order not in FREE_ORDERS:
            raise ValueError(f"free_order must be one of {FREE_ORDERS}, got "
                             f"{self.free_order!r}")
        if self.groups is not None:
            groups = check_groups(self.groups)
            object.__setattr__(self, "groups", groups)
            states = [i for i, g in enumerate(groups) if isinstance(g, StateSpec)]
            if states and self.enable_prefix_caching:
                raise ValueError(f"enable_prefix_caching: groups[{states[0]}] is a state "
                                 "group, which keeps no checkpoint, so no prefix hit could "
                                 "ever be served; disable prefix caching for this model")

    @property
    def watermark_blocks(self) -> int:
        return int(self.watermark * self.num_gpu_blocks)


PREEMPTION_MODES = ("auto", "swap", "recompute")
BATCHING_MODES = ("continuous", "static")


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits and policies.

    Args:
        max_num_seqs: sequences running at once (a group counts its samples / beams).
        max_num_batched_tokens: tokens computed in one step (prefill tokens + decodes). Without
            chunked prefill, a recomputation that outgrew it runs alone in its step.
        max_model_len: prompt + output tokens a sequence may reach; longer prompts are
            rejected, generation stops there. None: the memory manager's limit
            (`CacheConfig.max_model_len`), which owns it; a value that differs from the
            manager's is an error (`Scheduler` raises), so there is one limit.
        reject_over_length: refuse at `add_request` a request whose prompt plus
            `max_output_tokens` exceeds max_model_len (as vLLM answers 400), instead of
            stopping its generation at the limit.
        chunked_prefill: split prompts into chunks that share steps with decodes.
        preemption: "swap", "recompute", or "auto" (swap groups of several sequences, whose
            recomputation would lose their sharing, recompute single sequences).
        num_lookahead_slots: extra slots reserved per decoding sequence each step
            (speculative or multi-step decoding).
        batching: "continuous" (iteration-level: requests join and leave at every step) or
            "static" (request-level, as FasterTransformer: a batch is admitted only when the
            previous one has completely finished).
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    reject_over_length: bool = False
    chunked_prefill: bool = False
    preemption: str = "auto"
    num_lookahead_slots: int = 0
    batching: str = "continuous"

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {BATCHING_MODES}, got {self.batching!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.max_model_len is not None and (
            not isinstance(self.max_model_len, int) or self.max_model_len < 2
        ):
            raise ValueError(f"max_model_len must be an int >= 2 or None, got "
                             f"{self.max_model_len!r}")
        if not isinstance(self.reject_over_length, bool):
            raise ValueError(f"reject_over_length must be a bool, got "
                             f"{self.reject_over_length!r}")
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(f"preemption must be one of {PREEMPTION_MODES}, got "
                             f"{self.preemption!r}")
        if not isinstance(self.num_lookahead_slots, int) or self.num_lookahead_slots < 0:
            raise ValueError(f"num_lookahead_slots must be an int >= 0, got "
                             f"{self.num_lookahead_slots!r}")
