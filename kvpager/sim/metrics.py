"""What a simulation records, and the summary numbers computed from it.

Per request (columnar arrays, one slot per trace request): arrival, first scheduled, first
token and finish times, tokens generated, preemptions, and how it ended. Per step: the batch
size. Every `sample_interval_s` of simulated time: the KV memory breakdown and the queues.

Latency definitions (the vLLM paper's and common serving benchmarks'):
- TTFT: first token time - arrival;
- TPOT: (finish - first token) / (output tokens - 1), requests with more than one token;
- end-to-end: finish - arrival;
- normalized latency: end-to-end / output tokens, per request (its mean is the paper's
  "normalized latency").
Memory fractions are time-averaged: each sample holds until the next one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kvpager.core.memory.usage import FIELDS as MEMORY_FIELDS
from kvpager.sim.rejections import rejection_kinds

FINISHED, REJECTED, PENDING = 0, 1, 2


def _stats(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90),
            "p99": float(p99)}


@dataclass
class RequestLog:
    """Per-request records, indexed like the trace."""

    arrival: np.ndarray
    prompt_tokens: np.ndarray
    admitted: np.ndarray = field(init=False)
    first_token: np.ndarray = field(init=False)
    finish: np.ndarray = field(init=False)
    output_tokens: np.ndarray = field(init=False)
    preemptions: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    reasons: dict[int, str] = field(default_factory=dict)
    #: int64 [N] output tokens each request asked for (the trace's), for rejection ranges
    requested_output: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.arrival.size
        self.admitted = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.output_tokens = np.zeros(n, dtype=np.int64)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.status = np.full(n, PENDING, dtype=np.int8)


@dataclass
class MemorySeries:
    """Samples of KV memory (fractions of capacity) and queue lengths over time."""

    capacity_slots: int
    time: list[float] = field(default_factory=list)
    slots: list[tuple[int, ...]] = field(default_factory=list)  # one per MEMORY_FIELDS
    running: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    swapped: list[int] = field(default_factory=list)
    prefix_hit_rate: list[float] = field(default_factory=list)
    # the hit rate split by where the hit blocks came from: the GPU cache, the CPU tier
    prefix_gpu_hit_rate: list[float] = field(default_factory=list)
    prefix_cpu_hit_rate: list[float] = field(default_factory=list)

    def add(self, t: float, slots: dict[str, int], running: int, waiting: int, swapped: int,
            hit_rate: float, tier_hit_rates: tuple[float, float] = (0.0, 0.0)) -> None:
        """One sample; `tier_hit_rates` = (GPU, CPU) hit blocks / queried blocks so far."""
        self.time.append(t)
        self.slots.append(tuple(int(slots[f]) for f in MEMORY_FIELDS))
        self.running.append(running)
        self.waiting.append(waiting)
        self.swapped.append(swapped)
        self.prefix_hit_rate.append(hit_rate)
        self.prefix_gpu_hit_rate.append(tier_hit_rates[0])
        self.prefix_cpu_hit_rate.append(tier_hit_rates[1])

    def fractions(self) -> np.ndarray:
        """float64 `[num_samples, len(MEMORY_FIELDS)]`: each kind's fraction of capacity
        (rows sum to 1)."""
        if not self.slots:
            return np.zeros((0, len(MEMORY_FIELDS)))
        return np.asarray(self.slots, dtype=np.float64) / self.capacity_slots

    def time_averaged(self, end: float) -> dict[str, float]:
        """Each kind's fraction of capacity averaged over [first sample, end]."""
        frac = self.fractions()
        if frac.shape[0] == 0:
            return dict.fromkeys(MEMORY_FIELDS, 0.0) | {"free": 1.0}
        t = np.asarray(self.time + [max(end, self.time[-1])])
        weights = np.diff(t)
        if weights.sum() <= 0:
            weights = np.ones(frac.shape[0])
        avg = (frac * weights[:, None]).sum(axis=0) / weights.sum()
        return {name: float(v) for name, v in zip(MEMORY_FIELDS, avg, strict=True)}


@dataclass
class StepLog:
    """Per-step counters; a multi-step window of k decode steps counts k steps."""

    steps: int = 0
    batch_sum: int = 0
    batch_max: int = 0
    busy_time: float = 0.0

    def add(self, batch: int, steps: int, seconds: float) -> None:
        self.steps += steps
        self.batch_sum += batch * steps
        self.batch_max = max(self.batch_max, batch)
        self.busy_time += seconds


def summarize(
    requests: RequestLog, memory: MemorySeries, steps: StepLog, counters: dict
) -> dict:
    """The per-strategy numbers of `metrics.json`."""
    done = requests.status == FINISHED
    rejected = requests.status == REJECTED
    arrival, finish = requests.arrival, requests.finish
    out_tokens = requests.output_tokens
    start = float(arrival.min()) if arrival.size else 0.0
    end = float(np.nanmax(finish)) if done.any() else start
    makespan = max(end - start, 0.0)
    e2e = (finish - arrival)[done]
    ttft = (requests.first_token - arrival)[done]
    multi = done & (out_tokens > 1)
    tpot = ((finish - requests.first_token)[multi] / (out_tokens[multi] - 1))
    kinds = rejection_kinds(requests.reasons, requests.prompt_tokens,
                            requests.requested_output)
    return {
        "requests": {
            "arrived": int(arrival.size),
            "finished": int(done.sum()),
            "rejected": int(rejected.sum()),
            "rejected_reasons": {kind: entry["count"] for kind, entry in kinds.items()},
            "rejected_kinds": kinds,
        },
        "throughput": {
            "requests_per_s": float(done.sum() / makespan) if makespan > 0 else None,
            "output_tokens_per_s": float(out_tokens[done].sum() / makespan)
            if makespan > 0 else None,
        },
        "latency_s": {
            "ttft": _stats(ttft),
            "tpot": _stats(tpot),
            "e2e": _stats(e2e),
            "normalized": _stats(e2e / np.maximum(out_tokens[done], 1)),
        },
        "memory": memory.time_averaged(end),
        "batch": {
            "mean_running": steps.batch_sum / steps.steps if steps.steps else 0.0,
            "max_running": steps.batch_max,
        },
        **counters,
        "time": {
            "simulated_s": makespan,
            "busy_s": steps.busy_time,
            "steps": steps.steps,
        },
    }


def finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
