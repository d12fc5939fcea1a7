"""Cache strategies: which memory manager and batching policy a simulated server uses.

- `paged`: kvpager's `KVCacheManager` (blocks on demand, sharing, swapping, prefix cache).
- `orca-max`, `orca-pow2`, `orca-oracle`: one contiguous region per sequence reserved at
  admission from a buddy allocator over the KV token space, for the maximum length, the next
  power of two of the true output, or exactly the true length (the vLLM paper's Orca
  baselines); continuous batching as in Orca.
- `static`: FasterTransformer-like: maximum-length contiguous reservations and request-level
  batching (a new batch starts only when the previous one has finished).

Every strategy runs the same `Scheduler` with the same limits; only memory management and
(for `static`) the batching policy differ. `prefix_caching` applies to `paged` alone: the
contiguous strategies keep one region per sequence, cannot share, and run without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvpager.core.config import CacheConfig, SchedulerConfig
from kvpager.core.memory.event_sink import KVEventSink
from kvpager.core.sched.scheduler import Scheduler
from kvpager.sim.config import PAGED, STATIC, SimConfig
from kvpager.sim.cost_model import CostModel
from kvpager.sim.hybrid_manager import HybridSimManager
from kvpager.sim.kv_groups import KVLayout, layout, num_pages
from kvpager.sim.manager_protocol import PagedSimManager, SimManager
from kvpager.sim.presets import get_model

GiB = 1 << 30


@dataclass
class Deployment:
    """A manager and the scheduler driving it, plus the unit sizes the engine needs."""

    strategy: str
    manager: SimManager
    scheduler: Scheduler
    slots_per_block: int  # tokens one manager block holds (for swap and copy timing)
    capacity_slots: int  # KV token slots of the GPU cache


def build(strategy: str, config: SimConfig, cost: CostModel, tier_blocks: int = 0,
          events: KVEventSink | None = None) -> Deployment:
    """The manager and scheduler of `strategy` for a deployment described by a resolved
    `config` (`SimConfig.resolved`); `tier_blocks` > 0 gives the paged manager a CPU prefix
    tier of that many blocks (`kvpager.sim.tier`); `events` receives the paged manager's KV
    events (a router's precise index)."""
    max_model_len, max_num_batched_tokens = config.resolved_limits()
    sched = SchedulerConfig(
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        # the limit's owner is the manager (below); the scheduler reads it from there
        reject_over_length=config.long_prompts == "reject",
        chunked_prefill=config.chunked_prefill,
        preemption=config.preemption,
        batching="static" if strategy == STATIC else "continuous",
    )
    swap_bytes = config.swap_space_gib * GiB
    if strategy == PAGED:
        bs = config.block_size
        if get_model(config.model).is_hybrid:  # a window, a chunk or a state
            kv = layout(cost, bs, config.hybrid)
            if not kv.single_full:  # the multi-group manager
                if events is not None:
                    raise ValueError("router: prefix-precise needs the replicas' KV events, "
                                     "which the hybrid manager does not publish yet; add "
                                     "--no-hybrid or choose another --router")
                return _hybrid(kv, config, cost, sched, swap_bytes)
        cache: dict[str, Any] = {"num_gpu_blocks": cost.num_gpu_blocks(bs), "block_size": bs,
                 "num_cpu_blocks": cost.num_cpu_blocks(swap_bytes, bs),
                 "enable_prefix_caching": config.prefix_caching,
                 "max_model_len": max_model_len}
        manager: SimManager = (_tiered_manager(cache, tier_blocks, cost, bs, events)
                               if tier_blocks else PagedSimManager(CacheConfig(**cache),
                                                                   events=events))
        return Deployment(strategy, manager, Scheduler(manager, sched, kernel_inputs=False), bs,
                          cost.num_gpu_blocks(bs) * bs)
    # prefix caching applies to the paged strategy only: a contiguous region per sequence
    # cannot share blocks, so these strategies run without a prefix cache (and say so)
    from kvpager.sim.contiguous import ContiguousManager

    policy = "orca-max" if strategy == STATIC else strategy
    capacity = cost.kv_capacity_tokens
    manager = ContiguousManager(capacity, policy, max_model_len=max_model_len,
                                num_cpu_tokens=cost.num_cpu_blocks(swap_bytes, 1))
    scheduler = Scheduler(manager, sched, kernel_inputs=False)
    return Deployment(strategy, manager, scheduler, 1, capacity)


def _hybrid(kv: KVLayout, config: SimConfig, cost: CostModel, sched: SchedulerConfig,
            swap_bytes: float) -> Deployment:
    """The library's multi-group manager over one pool of pages (`kvpager.sim.kv_groups`;
    state groups take whole pages of it per sequence)."""
    check_hybrid_options(config, kv)
    pages = (config.num_gpu_blocks if config.num_gpu_blocks is not None
             else num_pages(cost, kv))
    cache = CacheConfig(num_gpu_blocks=pages, block_size=kv.block_size,
                        num_cpu_blocks=int(swap_bytes // kv.page_bytes),
                        enable_prefix_caching=config.prefix_caching,
                        free_order=config.free_order,
                        max_model_len=config.max_model_len, groups=kv.paged + kv.states)
    manager = HybridSimManager(cache)
    return Deployment(PAGED, manager, Scheduler(manager, sched, kernel_inputs=False),
                      kv.block_size, pages * kv.block_size)


def check_hybrid_options(config: SimConfig, kv: KVLayout) -> None:
    """Refuse what the hybrid manager cannot do yet, naming the option (ValueError)."""
    message = hybrid_refusal(kv.states != (), config.prefix_caching, config.has_prefix_tier)
    if message:
        raise ValueError(message)


def hybrid_refusal(has_state: bool, prefix_caching: bool, prefix_tier: bool) -> str:
    """Why a hybrid layout cannot run these options ("" when it can)."""
    if prefix_tier:
        return ("cpu_prefix_cache_gib: the simulator does not time the host prefix tier of "
                "several KV-cache groups yet (the library's HybridKVCacheManager has it); "
                "add --no-hybrid to allocate every layer as full attention")
    if prefix_caching and has_state:
        return ("prefix_caching: a prefix hit would skip the linear-attention state, and the "
                "library keeps no state checkpoints yet; run without prefix caching")
    return ""


def _tiered_manager(cache: dict, tier_blocks: int, cost: CostModel, block_size: int,
                    events: KVEventSink | None = None) -> PagedSimManager:
    """A paged manager with a CPU prefix tier whose loads follow the cost model."""
    from kvpager.sim.tier import load_policy

    config = CacheConfig(**cache, num_cpu_prefix_blocks=tier_blocks)
    return PagedSimManager(config, tier_load_policy=load_policy(cost, block_size),
                           events=events)
