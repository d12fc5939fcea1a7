"""Options shared by the commands that simulate (`simulate`, `sweep`): one declaration of
each deployment option, its help and its default, and one place that turns them into a
`SimConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvpager.sim.config import PAGED, STRATEGIES, SimConfig, parse_tier_size

Model = Annotated[str, typer.Option(
    help="Model preset (llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, llama-3-70b, "
         "llama-3.1-8b, llama-3.1-70b, "
         "mistral-7b, opt-13b) or a model spec JSON file.")]
Gpu = Annotated[str, typer.Option(
    help="GPU preset (a100-40gb, a100-80gb, h100-80gb, h200) or a GPU spec JSON file.")]
Tp = Annotated[int, typer.Option(help="Tensor-parallel degree.")]
Cache = Annotated[list[str] | None, typer.Option(
    "--cache", help=f"Cache strategy; repeat for several ({', '.join(STRATEGIES)}). "
                    "Default: paged and the three Orca baselines.")]
BlockSize = Annotated[int, typer.Option(help="Tokens per KV block (paged).")]
SwapSpace = Annotated[float, typer.Option(help="CPU swap space per GPU, GiB.")]
Preemption = Annotated[str, typer.Option(help="auto, swap or recompute.")]
PrefixCaching = Annotated[bool, typer.Option(help="Share prompt blocks by content (paged "
                                                  "only).")]
ChunkedPrefill = Annotated[bool, typer.Option(help="Split prompts into chunks that share "
                                                   "steps with decodes.")]
MaxNumSeqs = Annotated[int, typer.Option(help="Sequences running at once.")]
MaxNumBatchedTokens = Annotated[int | None, typer.Option(
    help="Tokens per step; default vLLM's (8192, or max-model-len without chunked "
         "prefill).")]
MaxModelLen = Annotated[int | None, typer.Option(
    help="Longest prompt + output a request may have; default the model's context length. "
         "Longer requests are rejected (counted, with the reason) and the run goes on.")]
KvCacheDtype = Annotated[str, typer.Option(help="auto, fp8 or fp8_e5m2.")]
GpuMemoryUtilization = Annotated[float, typer.Option(help="Fraction of GPU memory used.")]
Calibration = Annotated[Path | None, typer.Option(
    help="Calibration file for the cost model: measured kernel times (kvpager bench "
         "attention --calibration) or a GPU fit (kvpager calibrate from-profiles; shipped "
         "in kvpager/sim/cost_model/calibrations/).")]
# Capacity and long-prompt choices (issue 14): declared together.
NumGpuBlocks = Annotated[int | None, typer.Option(
    help="KV blocks of the GPU cache, overriding the computed capacity (to match a "
         "measured deployment).")]
KvCacheMemory = Annotated[float | None, typer.Option(
    "--kv-cache-memory", help="KV cache memory per GPU, GiB, overriding the computed "
                              "budget.")]
LongPrompts = Annotated[str, typer.Option(
    help="Prompts longer than max-model-len: reject (as vLLM) or truncate.")]
# The CPU prefix tier (issue 15).
CpuPrefixCache = Annotated[str | None, typer.Option(
    "--cpu-prefix-cache", metavar="SIZE",
    help="CPU prefix tier: host memory per GPU, GiB, or 'unlimited'. Cached prompt blocks "
         "the GPU evicts are offloaded there and loaded back on a hit. Needs "
         "--prefix-caching and the paged strategy.")]
TierBaseline = Annotated[bool, typer.Option(
    help="With --cpu-prefix-cache: also run paged without the tier and report what the tier "
         "saved in TTFT (doubles the paged run's time).")]
ArrivalCv = Annotated[float | None, typer.Option(
    help="Coefficient of variation of generated gaps (Gamma; default 1 = Poisson).")]


def sim_config(
    *, model: str, gpu: str, tp: int, block_size: int, swap_space: float, preemption: str,
    prefix_caching: bool, chunked_prefill: bool, max_num_seqs: int,
    max_num_batched_tokens: int | None, max_model_len: int | None, kv_cache_dtype: str,
    gpu_memory_utilization: float, calibration: Path | None, seed: int,
    num_gpu_blocks: int | None = None, kv_cache_memory: float | None = None,
    long_prompts: str = "reject", cpu_prefix_cache_gib: float = 0.0,
) -> SimConfig:
    """The `SimConfig` the shared options describe (raises ValueError naming a bad one)."""
    return SimConfig(
        model=model, gpu=gpu, tp=tp, kv_cache_dtype=kv_cache_dtype,
        gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
        swap_space_gib=swap_space, preemption=preemption, prefix_caching=prefix_caching,
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len, chunked_prefill=chunked_prefill, seed=seed,
        calibration=None if calibration is None else str(calibration),
        num_gpu_blocks=num_gpu_blocks, kv_cache_memory_gib=kv_cache_memory,
        long_prompts=long_prompts, cpu_prefix_cache_gib=cpu_prefix_cache_gib)


def tier_size(text: str | None, prefix_caching: bool, cache: list[str] | None) -> float:
    """GiB of the CPU prefix tier that `--cpu-prefix-cache` asks for (0.0 when not given;
    math.inf for 'unlimited'). Raises ValueError naming the option for a bad size, without
    --prefix-caching, or with a strategy other than paged in --cache."""
    if text is None:
        return 0.0
    size = parse_tier_size(text)
    if size > 0 and not prefix_caching:
        raise ValueError("--cpu-prefix-cache: the CPU prefix tier holds prefix-cache blocks; "
                         "add --prefix-caching")
    others = [c for c in cache or () if c != PAGED]
    if size > 0 and others:
        raise ValueError(f"--cpu-prefix-cache: the CPU prefix tier needs --cache paged only; "
                         f"{others[0]!r} keeps one contiguous region per sequence and caches "
                         "no prefix blocks")
    return size

# Replicas behind a router (issue 21).
Replicas = Annotated[int, typer.Option(help="Replicas (servers) behind the router.")]
RouterName = Annotated[str, typer.Option(
    "--router", help="round-robin, random, least-requests, least-queued, least-kv, "
                     "prefix-approx, kv-cost or weighted.")]
RouterWeights = Annotated[str | None, typer.Option(
    help="weighted: scorer weights, e.g. prefix=3,queue=2,kv=2 (scorers prefix, queue, kv, "
         "requests); kv-cost: overlap=W.")]
RouterSignalDelay = Annotated[float, typer.Option(
    help="Seconds late the router sees replica load (llm-d scrapes every 0.05 s).")]
SloTtft = Annotated[float | None, typer.Option(help="TTFT SLO, seconds (attainment, goodput).")]
SloTpot = Annotated[float | None, typer.Option(help="TPOT SLO, seconds (attainment, goodput).")]


def cluster_config(*, replicas: int, router: str, router_weights: str | None,
                   signal_delay: float, slo_ttft: float | None, slo_tpot: float | None):
    """The `ClusterConfig` the cluster options describe (ValueError naming a bad one)."""
    from kvpager.sim.cluster.config import ClusterConfig, parse_weights
    from kvpager.sim.cluster.routers import ROUTERS

    if router not in ROUTERS:
        raise ValueError(f"--router {router!r}: unknown router; choose one of "
                         f"{', '.join(ROUTERS)}")
    return ClusterConfig(replicas=replicas, router=router,
                         weights=parse_weights(router_weights, router),
                         signal_delay_s=signal_delay, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot)
