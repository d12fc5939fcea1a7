"""Options shared by the commands that simulate (`simulate`, `sweep`): one declaration of
each deployment option, its help and its default, and one place that turns them into a
`SimConfig`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from kvpager.sim.config import PAGED, STRATEGIES, SimConfig, parse_tier_size
from kvpager.sim.cost_model import KV_CACHE_DTYPES, choose_cost_model
from kvpager.sim.presets import GPUS, MODELS, get_model
from kvpager.sim.strategies import hybrid_refusal

Model = Annotated[str, typer.Option(
    help=f"Model preset ({', '.join(MODELS)}) or a model spec JSON file.")]
Gpu = Annotated[str, typer.Option(
    help=f"GPU preset ({', '.join(GPUS)}) or a GPU spec JSON file.")]
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
KvCacheDtype = Annotated[str, typer.Option(
    help=f"KV cache element type: {', '.join(KV_CACHE_DTYPES)} (auto = the model's dtype).")]
GpuMemoryUtilization = Annotated[float, typer.Option(help="Fraction of GPU memory used.")]
CostModelOption = Annotated[str, typer.Option(
    "--cost-model", metavar="auto|roofline|calibrated|FILE",
    help="Step-time model. auto: the calibration shipped for the GPU (a100-80gb, h100-80gb: "
         "fitted to public operator profiles), else the roofline; roofline; calibrated (the "
         "shipped fit, an error where none covers the GPU); or a calibration FILE (kvpager "
         "bench attention --calibration, kvpager calibrate from-profiles). The run prints "
         "and records which one ran.")]
Calibration = Annotated[Path | None, typer.Option(
    hidden=True, help="Same as --cost-model FILE (the 0.1 spelling).")]
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
# Hybrid models (issue 20).
Hybrid = Annotated[bool, typer.Option(
    "--hybrid/--no-hybrid",
    help="Give each attention kind of a hybrid model (sliding window, chunked, MLA, "
         "state) its own KV-cache group (default); --no-hybrid allocates every layer as full "
         "attention, as a manager without groups does, for comparison.")]
FreeOrder = Annotated[str, typer.Option(
    help="Hybrid models: free pages reused first. window_first (blocks a window released, "
         "before other requests' cached blocks) or lru (one queue, for comparison).")]
ArrivalCv = Annotated[float | None, typer.Option(
    help="Coefficient of variation of generated gaps (Gamma; default 1 = Poisson).")]


def sim_config(
    *, model: str, gpu: str, tp: int, block_size: int, swap_space: float, preemption: str,
    prefix_caching: bool, chunked_prefill: bool, max_num_seqs: int,
    max_num_batched_tokens: int | None, max_model_len: int | None, kv_cache_dtype: str,
    gpu_memory_utilization: float, cost_model: str, calibration: Path | None, seed: int,
    num_gpu_blocks: int | None = None, kv_cache_memory: float | None = None,
    long_prompts: str = "reject", cpu_prefix_cache_gib: float = 0.0, hybrid: bool = True,
    free_order: str = "window_first",
) -> SimConfig:
    """The `SimConfig` the shared options describe, its cost model chosen (raises ValueError
    naming the bad option, not the config field)."""
    try:
        config = SimConfig(
            model=model, gpu=gpu, tp=tp, kv_cache_dtype=kv_cache_dtype,
            gpu_memory_utilization=gpu_memory_utilization, block_size=block_size,
            swap_space_gib=swap_space, preemption=preemption, prefix_caching=prefix_caching,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len, chunked_prefill=chunked_prefill, seed=seed,
            cost_model=_cost_model(cost_model, calibration),
            num_gpu_blocks=num_gpu_blocks, kv_cache_memory_gib=kv_cache_memory,
            long_prompts=long_prompts, cpu_prefix_cache_gib=cpu_prefix_cache_gib,
            hybrid=hybrid, free_order=free_order)
        spec = get_model(config.model)
        choose_cost_model(config.cost_model, config.gpu, spec)  # a bad file or GPU: fail now
        if hybrid and spec.is_hybrid:
            refusal = hybrid_refusal(spec.linear_attention is not None, prefix_caching,
                                     cpu_prefix_cache_gib > 0)
            if refusal:
                raise ValueError(refusal)
    except ValueError as exc:
        raise ValueError(as_options(str(exc))) from None
    return config


#: SimConfig fields -> the options that set them, for messages raised by the library.
FIELD_OPTIONS = {
    "model": "--model", "gpu": "--gpu", "tp": "--tp", "kv_cache_dtype": "--kv-cache-dtype",
    "gpu_memory_utilization": "--gpu-memory-utilization", "block_size": "--block-size",
    "swap_space_gib": "--swap-space", "preemption": "--preemption",
    "max_num_seqs": "--max-num-seqs", "max_num_batched_tokens": "--max-num-batched-tokens",
    "max_model_len": "--max-model-len", "seed": "--seed", "cost_model": "--cost-model",
    "num_gpu_blocks": "--num-gpu-blocks", "kv_cache_memory_gib": "--kv-cache-memory",
    "long_prompts": "--long-prompts", "cpu_prefix_cache_gib": "--cpu-prefix-cache",
    "prefix_caching": "--prefix-caching", "calibration": "--cost-model",
    "free_order": "--free-order",
    # the sweep's own (SweepSpec, run_sweep)
    "metric": "--metric", "latency_bound": "--latency-bound", "workers": "--workers",
    "rate_scales": "--rate-scale", "arrival_cv": "--arrival-cv", "limit": "--limit",
}
# snake_case names are unambiguous anywhere in a message; plain words ("model") only where a
# message starts with the field ("model: unknown model 'x'" keeps its second "model").
_SNAKE = re.compile(r"\b(" + "|".join(sorted((f for f in FIELD_OPTIONS if "_" in f),
                                             key=len, reverse=True)) + r")\b")
_WORD = re.compile(r"^(" + "|".join(f for f in FIELD_OPTIONS if "_" not in f)
                   + r")(?=:| must)")


def as_options(message: str) -> str:
    """A library message about SimConfig fields, naming the command-line options instead
    ("block_size must be ..." -> "--block-size must be ...")."""
    text = _SNAKE.sub(lambda m: FIELD_OPTIONS[m.group(1)], message)
    return _WORD.sub(lambda m: FIELD_OPTIONS[m.group(1)], text)


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


def _cost_model(cost_model: str, calibration: Path | None) -> str:
    """`--cost-model`, or the file of the older `--calibration` (not both)."""
    if calibration is None:
        return cost_model
    if cost_model != "auto":
        raise ValueError("--calibration: give the calibration file as --cost-model FILE, "
                         "not both")
    return str(calibration)


# Replicas behind a router (issue 21).
Replicas = Annotated[int, typer.Option(help="Replicas (servers) behind the router.")]
RouterName = Annotated[str, typer.Option(
    "--router", help="round-robin, random, least-requests, least-queued, least-kv, "
                     "prefix-approx, prefix-precise (an index fed by the replicas' KV "
                     "events), kv-cost or weighted.")]
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
