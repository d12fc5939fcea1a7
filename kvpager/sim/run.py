"""Run a trace through several cache strategies and write the run directory.

    from kvpager.sim import SimConfig, simulate
    metrics = simulate(load_trace("examples/azure_conv_sample.csv"), SimConfig(),
                       strategies=["paged", "orca-oracle"], out_dir="runs/demo")

The run directory holds everything reports need: `metrics.json` (configuration, trace
summary, per-strategy metrics), `requests_<strategy>.csv` (one row per request),
`memory_<strategy>.csv` (the memory and queue time series) and `events_<strategy>.csv`
(time-stamped preemptions, in groups, and swaps, in blocks).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from kvpager.core.memory.usage import FIELDS as MEMORY_FIELDS
from kvpager.sim import kv_groups
from kvpager.sim.caveats import run_caveats
from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.disagg import DisaggSimulation
from kvpager.sim.cluster.disagg_config import DisaggConfig, check_disagg
from kvpager.sim.cluster.files import write_load, write_replica_series
from kvpager.sim.config import (
    DEFAULT_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_STRATEGIES,
    PAGED,
    SimConfig,
    check_strategies,
    check_tier_strategies,
)
from kvpager.sim.cost_model import (
    CostModel,
    CostModelChoice,
    ModelDoesNotFitError,
    choose_cost_model,
)
from kvpager.sim.engine import Progress, Simulation
from kvpager.sim.metrics import FINISHED, REJECTED
from kvpager.sim.presets import get_model
from kvpager.sim.tier import add_gpu_only
from kvpager.sim.traces import Trace, summarize

StrategyProgress = Callable[[str, int, int], None]  # (strategy, done, total)
SCHEMA_VERSION = 1


def cost_model(config: SimConfig, given: SimConfig | None = None,
               choice: CostModelChoice | None = None) -> CostModel:
    """The cost model a resolved configuration describes (raises ValueError on bad
    names/values). `num_gpu_blocks` / `kv_cache_memory_gib` set its KV capacity outright.
    `given` is the configuration before `resolve`: when the model does not fit because of a
    limit the user set there, the message says which and how to lower it. `choice`: the
    step-time model already chosen for `config.cost_model` (chosen here when None)."""
    if choice is None:
        choice = choose_cost_model(config.cost_model, config.gpu, get_model(config.model))
    calibration = choice.calibration
    try:
        return _cost(config, calibration)
    except ModelDoesNotFitError as exc:
        hint = None if given is None else _limit_hint(config, given)
        if hint is None:
            raise
        raise ModelDoesNotFitError(f"{exc}; {hint}") from None


def _cost(config: SimConfig, calibration=None) -> CostModel:
    cost = CostModel(config.model, config.gpu, tp=config.tp,
                     kv_cache_dtype=config.kv_cache_dtype,
                     gpu_memory_utilization=config.gpu_memory_utilization,
                     max_num_batched_tokens=config.resolved_limits()[1],
                     max_num_seqs=config.max_num_seqs, calibration=calibration)
    if config.num_gpu_blocks is not None:
        kv_bytes = config.num_gpu_blocks * config.block_size * cost.kv_bytes_per_token
        return replace(cost, kv_cache_bytes=float(kv_bytes))
    if config.kv_cache_memory_gib is not None:
        return replace(cost, kv_cache_bytes=config.kv_cache_memory_gib * (1 << 30))
    return cost


def capacity_source(config: SimConfig) -> str:
    """How the run's KV capacity was chosen, for the report's configuration."""
    if config.num_gpu_blocks is not None:
        return f"--num-gpu-blocks {config.num_gpu_blocks}"
    if config.kv_cache_memory_gib is not None:
        return f"--kv-cache-memory {config.kv_cache_memory_gib:g} GiB"
    return "computed (memory x utilisation - weights - activation reserve)"


def _fits(config: SimConfig) -> bool:
    try:
        _cost(config)
    except ModelDoesNotFitError:
        return False
    return True


def _limit_hint(config: SimConfig, given: SimConfig) -> str | None:
    """The user-set limit without which the model would fit (its default would), if any:
    the activation reserve grows with max_num_batched_tokens (set directly, or through
    max_model_len without chunked prefill) and with max_num_seqs (the logits)."""
    tries = []
    if given.max_num_seqs != DEFAULT_MAX_NUM_SEQS:
        tries.append((replace(config, max_num_seqs=DEFAULT_MAX_NUM_SEQS),
                      f"max_num_seqs = {given.max_num_seqs:,} (--max-num-seqs) reserves "
                      "memory for the logits of that many sequences: lower it"))
    if given.max_num_batched_tokens is not None:
        tries.append((resolve(replace(given, max_num_batched_tokens=None)),
                      f"max_num_batched_tokens = {given.max_num_batched_tokens:,} "
                      "(--max-num-batched-tokens) reserves activations for that many tokens "
                      "per step: lower it"))
    elif given.max_model_len is not None:
        tries.append((resolve(replace(given, max_model_len=None)),
                      f"--max-model-len {given.max_model_len} makes each step hold up to "
                      f"{config.max_num_batched_tokens:,} prompt tokens (max_num_batched_tokens "
                      f"= max({DEFAULT_BATCHED_TOKENS}, max_model_len) without chunked "
                      "prefill), and the activation reserve grows with it: lower "
                      "--max-model-len, or add --chunked-prefill or --max-num-batched-tokens"))
    for alternative, hint in tries:
        if _fits(alternative):
            return hint
    return None


def resolve(config: SimConfig) -> SimConfig:
    """`config` with the defaults of `max_model_len` (the model's context length, as vLLM
    takes it from the model's configuration) and `max_num_batched_tokens` filled in.

    Requests longer than `max_model_len` are rejected by the simulation with a reason; the
    trace does not size the deployment, so one outlier cannot make the model not fit.
    """
    return config.resolved(get_model(config.model).max_context)


def simulate(
    trace: Trace,
    config: SimConfig,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    out_dir: str | Path | None = None,
    progress: StrategyProgress | None = None,
    tier_baseline: bool = True,
    cluster: ClusterConfig | None = None,
    disagg: DisaggConfig | None = None,
) -> dict:
    """Simulate every strategy on the trace; write the run directory when `out_dir` is set.

    With a CPU prefix tier (`config.cpu_prefix_cache_gib`) and `tier_baseline`, the paged
    strategy is also run without the tier, and its `prefix_tier` section gets that run's
    figures (`gpu_only`) and what the tier saved in TTFT (`ttft_saved_s`, GPU-only minus
    tiered; positive = faster with the tier). It doubles the paged run's time.

    `cluster`: replicas behind a router (default one replica); every strategy runs on it.
    `disagg`: a prefill pool and a decode pool instead (`kvpager.sim.cluster.disagg`; the
    cluster's router chooses within each pool; the paged strategy only).

    Returns the `metrics.json` content: {"schema", "config", "trace", "capacity", "cluster",
    "strategies": {name: metrics}}.
    """
    names = check_strategies(tuple(strategies))
    check_tier_strategies(config, names)
    if disagg is not None:
        check_disagg(config, names)
    given, config = config, resolve(config)
    choice = choose_cost_model(config.cost_model, config.gpu, get_model(config.model))
    cost = cost_model(config, given, choice)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    sims: dict[str, Simulation] = {}
    for name in names:
        report: Progress | None = None if progress is None else (
            lambda d, t, n=name: progress(n, d, t))
        sim = (Simulation(trace, config, name, cost, report, cluster) if disagg is None
               else DisaggSimulation(trace, config, name, cost, disagg, report, cluster))
        results[name] = sim.run()
        sims[name] = sim
        if sim.replica.group_memory is not None:  # replica 0's groups
            results[name]["kv_by_group"] = sim.replica.group_memory.to_dict(
                results[name]["time"]["simulated_s"])
    if config.has_prefix_tier and tier_baseline:
        report = None if progress is None else (
            lambda d, t: progress(f"{PAGED} (GPU only)", d, t))
        plain = Simulation(trace, replace(config, cpu_prefix_cache_gib=0.0), PAGED, cost,
                           report, cluster).run()
        add_gpu_only(results[PAGED], plain)
    metrics = {
        "schema": SCHEMA_VERSION,
        "config": config.to_dict() | {"strategies": list(names)},
        "trace": summarize(trace, block_size=config.block_size).to_dict()
        | {"source": str(getattr(trace, "source", ""))},
        "capacity": {
            "kv_tokens": cost.kv_capacity_tokens,
            "kv_bytes_per_token": cost.kv_bytes_per_token,
            "kv_capacity_gib": cost.kv_capacity_bytes / (1 << 30),
            "gpu_blocks": cost.num_gpu_blocks(config.block_size),
            "block_size": config.block_size,
            "source": capacity_source(config),
            "long_prompts": config.long_prompts,
            "cpu_prefix_blocks": sims[PAGED].tier_blocks if PAGED in sims else 0,
        } | kv_groups.capacity_fields(cost, config),
        "cost_model": choice.to_dict()
        | ({"terms": cost.calibration_notes} if cost.calibration_notes else {}),
        "cluster": (cluster or ClusterConfig()).to_dict() | {
            "router_settings": next(iter(sims.values())).router.settings()}
        | ({} if disagg is None else {"replicas": disagg.replicas,
                                       "disaggregation": disagg.to_dict()}),
        "strategies": results,
        "wall_s": time.perf_counter() - started,
    }
    metrics["caveats"] = run_caveats(metrics)
    if out_dir is not None:
        write_run(Path(out_dir), metrics, sims)
    return metrics


def write_run(out: Path, metrics: dict, sims: dict[str, Simulation]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2) + "\n")
    for name, sim in sims.items():
        _write_requests(out / f"requests_{name}.csv", sim)
        _write_memory(out / f"memory_{name}.csv", sim)
        _write_events(out / f"events_{name}.csv", sim)
        if len(sim.replicas) > 1:  # each replica's series (kvpager.sim.cluster.files)
            write_replica_series(out / f"replicas_{name}.csv", [r.memory for r in sim.replicas])
            write_load(out / f"load_{name}.csv", *sim.load_samples())


def _write_requests(path: Path, sim: Simulation) -> None:
    r, t = sim.requests, sim.trace
    status = {FINISHED: "finished", REJECTED: "rejected"}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "id", "arrival_s", "prompt_tokens", "output_tokens", "admitted_s",
                    "first_token_s", "finish_s", "ttft_s", "e2e_s", "preemptions", "status",
                    "reason"])
        for i in range(len(t)):
            w.writerow([i, t.ids[i], _num(r.arrival[i]), int(r.prompt_tokens[i]),
                        int(r.output_tokens[i]), _num(r.admitted[i]), _num(r.first_token[i]),
                        _num(r.finish[i]), _num(r.first_token[i] - r.arrival[i]),
                        _num(r.finish[i] - r.arrival[i]), int(r.preemptions[i]),
                        status.get(int(r.status[i]), "pending"), r.reasons.get(i, "")])


def _write_memory(path: Path, sim: Simulation) -> None:
    m = sim.memory
    frac = m.fractions()
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", *MEMORY_FIELDS, "running_seqs", "waiting", "swapped",
                    "prefix_hit_rate", "prefix_gpu_hit_rate", "prefix_cpu_hit_rate"])
        for j, t in enumerate(m.time):
            w.writerow([_num(t), *(f"{x:.6f}" for x in frac[j]), m.running[j], m.waiting[j],
                        m.swapped[j], f"{m.prefix_hit_rate[j]:.6f}",
                        f"{m.prefix_gpu_hit_rate[j]:.6f}", f"{m.prefix_cpu_hit_rate[j]:.6f}"])


def _write_events(path: Path, sim: Simulation) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", "kind", "count"])
        for t, kind, count in sim.events:
            w.writerow([_num(t), kind, count])


def _num(x: float) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.6f}"


def _clean(obj):
    """JSON-safe: numpy scalars to Python, non-finite floats to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
