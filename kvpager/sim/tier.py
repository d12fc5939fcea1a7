"""The CPU prefix tier in the simulator: its size in blocks, the load-or-recompute rule, and
the numbers a run reports about it.

The tier itself (which blocks are offloaded, which hits are loaded back) is the library's
manager (`KVCacheManager` with `CacheConfig.num_cpu_prefix_blocks`); the simulator only
sizes it, gives it the cost model's rule for when a load beats recomputation, and times the
offload / load pairs of each step over the host link (`kvpager.sim.replica`): loads before
the forward pass that reads them, offloads overlapping the step on the other direction.

Host memory: the tier is its own area of `cpu_prefix_cache_gib` per GPU, after the swap
space of `swap_space_gib` (one host id space: swap blocks first, then the tier's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from kvpager.sim.config import SimConfig, tier_label
from kvpager.sim.cost_model import CostModel, prefill_attention_work

if TYPE_CHECKING:
    from kvpager.core.memory.prefix import PrefixCache
    from kvpager.sim.traces import Trace

GiB = 1 << 30
LoadPolicy = Callable[[int, int], int]


def tier_blocks(config: SimConfig, cost: CostModel, trace: Trace) -> int:
    """Blocks of the tier: `cpu_prefix_cache_gib` through the cost model's bytes per block
    (as the swap space becomes `num_cpu_blocks`), or for an unlimited tier one block for
    every full block the trace's requests can register (prompt and output), so that it never
    evicts."""
    size, bs = config.cpu_prefix_cache_gib, config.block_size
    if size <= 0:
        return 0
    if math.isinf(size):
        lengths = (np.asarray(trace.prompt_tokens, dtype=np.int64)
                   + np.asarray(trace.output_tokens, dtype=np.int64))
        return max(1, int((lengths // bs).sum()))
    return cost.num_cpu_blocks(size * GiB, bs)


def recompute_seconds(cost: CostModel, tokens: int, context_before: int) -> float:
    """Seconds that prefilling `tokens` more prompt tokens, after `context_before` cached
    ones, adds to a compute-bound prefill step (one of `max_num_batched_tokens` tokens).

    A marginal cost, not the time of a step of its own: recomputed prefix tokens ride in
    the same forward pass as the rest of their prompt, so neither the per-step overhead nor
    the weight-streaming floor of a small step is theirs to pay.
    """
    base = cost.max_num_batched_tokens
    work = prefill_attention_work(base, 0)
    before = cost.step_time(base, work, 0, 0, 1)
    after = cost.step_time(base + tokens, work + prefill_attention_work(tokens, context_before),
                           0, 0, 1)
    return max(after - before, 0.0)


def load_policy(cost: CostModel, block_size: int) -> LoadPolicy:
    """The rule the manager asks on a tier hit: load all `n` tier-hit blocks when moving them
    over the host link (`cost.swap_time`) takes no longer than recomputing their tokens
    (`recompute_seconds`), else load none.

    All or nothing is the best prefix under this model: loading k blocks and recomputing
    the rest costs load(k) + R(all) - R(first k), with load linear in k and R, the
    recompute time of the first k blocks, convex (each later token attends to more), so
    the minimum over k lies at k = 0 or k = n.
    """

    def policy(num_cached_tokens: int, num_tier_blocks: int) -> int:
        if num_tier_blocks <= 0:
            return 0
        load = cost.swap_time(num_tier_blocks, block_size)
        recompute = recompute_seconds(cost, num_tier_blocks * block_size, num_cached_tokens)
        return num_tier_blocks if load <= recompute else 0

    return policy


def tier_step_seconds(compute_s: float, load_s: float, offload_s: float) -> tuple[float, float]:
    """(seconds, stall) of a step whose prefix tier moves `load_s` seconds of blocks host to
    GPU and `offload_s` GPU to host. The host link's two directions are resources of their
    own (PCIe and NVLink-C2C are full duplex).

    Loads must land before the forward pass that reads them: they add to the step. Offloads
    copy blocks the step does not read, asynchronously, as vLLM's offloading connector does:
    they overlap the loads and the compute, and the step outlasts them only when they take
    longer (`stall`; the next step may not reuse those blocks before their copy ends).
    Charging both serially, as 0.1 did, made a tier that raised the hit rate look slower
    than none.
    """
    busy = compute_s + load_s
    return max(busy, offload_s), max(offload_s - busy, 0.0)


def hit_blocks_by_tier(prefix: PrefixCache, tiered: bool) -> tuple[int, int]:
    """(GPU hit blocks, CPU hit blocks loaded from the tier) of a prefix cache; without a
    tier every hit is a GPU hit."""
    if not tiered:
        return prefix.hit_blocks, 0
    return prefix.gpu_hit_blocks, prefix.cpu_hit_blocks


def tier_metrics(prefix: PrefixCache, config: SimConfig, cost: CostModel, *, tiered: bool,
                 prefill_tokens: int, link_seconds: float, stall_seconds: float = 0.0) -> dict:
    """The `prefix_tier` section of a paged run's metrics with prefix caching: hits by tier,
    prompt tokens served from each tier and computed, bytes moved over the host link.

    `tiered`: whether the manager has a tier (without one, every hit is a GPU hit and
    nothing moves). `prefill_tokens`: tokens the run's prefill chunks computed (the
    uncached rest of each prompt, tier hits the load rule chose to recompute, and
    recomputation after preemption). `link_seconds`: time the host link spent on offloads
    and loads; `stall_seconds`: time steps outlasted their compute and loads waiting on
    offloads (offloads overlap the step: `Replica._with_tier_transfers`).
    """
    bs = config.block_size
    block_bytes = bs * cost.kv_bytes_per_token if tiered else 0
    tier = prefix.tier if tiered else None
    queried = prefix.queried_blocks
    gpu, cpu = hit_blocks_by_tier(prefix, tiered)
    offloaded = prefix.offloaded_blocks if tiered else 0
    loaded = prefix.loaded_blocks if tiered else 0
    return {
        "size_gib": tier_label(config.cpu_prefix_cache_gib) if tiered else 0,
        "capacity_blocks": 0 if tier is None else tier.capacity,
        "blocks_held": 0 if tier is None else len(tier),
        "hit_rate": prefix.hit_rate,
        "gpu_hit_rate": gpu / queried if queried else 0.0,
        "cpu_hit_rate": cpu / queried if queried else 0.0,
        "hit_blocks": {"gpu": gpu, "cpu": cpu},
        "prompt_tokens": {"queried": queried * bs, "from_gpu": gpu * bs, "from_cpu": cpu * bs,
                          "computed": prefill_tokens},
        "offloaded_blocks": offloaded,
        "loaded_blocks": loaded,
        "offloaded_bytes": offloaded * block_bytes,
        "loaded_bytes": loaded * block_bytes,
        "host_link_s": link_seconds,
        "offload_stall_s": stall_seconds,
    }


def add_gpu_only(tiered: dict, plain: dict) -> None:
    """Put the GPU-only run's figures (`plain`, the same deployment without the tier) into the
    tiered run's `prefix_tier` section, with what the tier saved in TTFT (GPU-only minus
    tiered, seconds, per statistic; None where either run finished nothing)."""
    section = tiered.get("prefix_tier")
    if section is None:
        return
    ttft, base = tiered["latency_s"]["ttft"], plain["latency_s"]["ttft"]
    section["gpu_only"] = {
        "hit_rate": (plain.get("prefix_tier") or {}).get("hit_rate"),
        "ttft_s": dict(base),
        "requests_per_s": plain["throughput"]["requests_per_s"],
        "output_tokens_per_s": plain["throughput"]["output_tokens_per_s"],
        "finished": plain["requests"]["finished"],
    }
    section["ttft_saved_s"] = {
        stat: None if base.get(stat) is None or ttft.get(stat) is None
        else base[stat] - ttft[stat] for stat in ("mean", "p50", "p90", "p99")}
