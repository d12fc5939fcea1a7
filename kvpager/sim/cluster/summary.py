"""A cluster run's metrics: the cluster's totals in today's fields, each replica's own
summary, load imbalance, and SLO attainment and goodput.

Cluster totals: latency and throughput over every request; memory, the mean over replicas
of each one's time-averaged breakdown (the replicas have equal capacity); counters summed
(rates recomputed from the summed counts); `time.busy_s` the replicas' busy seconds summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kvpager.sim.metrics import FINISHED, RequestLog, StepLog

_RATES = ("hit_rate", "gpu_hit_rate", "cpu_hit_rate")


def subset(requests: RequestLog, mask: np.ndarray) -> RequestLog:
    """The requests `mask` (bool [num_requests]) selects, as their own log."""
    log = RequestLog(requests.arrival[mask], requests.prompt_tokens[mask],
                     requested_output=None if requests.requested_output is None
                     else requests.requested_output[mask])
    for name in ("admitted", "first_token", "finish", "output_tokens", "preemptions",
                 "status"):
        setattr(log, name, getattr(requests, name)[mask])
    where = np.flatnonzero(mask)
    position = {int(i): j for j, i in enumerate(where)}
    log.reasons = {position[i]: r for i, r in requests.reasons.items() if i in position}
    return log


def merge_steps(logs: Sequence[StepLog]) -> StepLog:
    out = StepLog()
    for log in logs:
        out.steps += log.steps
        out.batch_sum += log.batch_sum
        out.batch_max = max(out.batch_max, log.batch_max)
        out.busy_time += log.busy_time
    return out


def merge_counters(counters: Sequence[dict]) -> dict:
    """Replica counters summed leaf by leaf; rates recomputed from the summed counts."""
    merged = _sum(list(counters))
    prefix = merged.get("prefix_cache")
    if isinstance(prefix, dict):
        q = prefix["queried_blocks"]
        prefix["hit_rate"] = prefix["hit_blocks"] / q if q else 0.0
    tier = merged.get("prefix_tier")
    if isinstance(tier, dict):
        blocks = tier["prompt_tokens"]["queried"]
        gpu, cpu = tier["prompt_tokens"]["from_gpu"], tier["prompt_tokens"]["from_cpu"]
        tier["hit_rate"] = (gpu + cpu) / blocks if blocks else 0.0
        tier["gpu_hit_rate"] = gpu / blocks if blocks else 0.0
        tier["cpu_hit_rate"] = cpu / blocks if blocks else 0.0
        tier["size_gib"] = counters[0]["prefix_tier"]["size_gib"]
    return merged


def _sum(values: list):
    first = values[0]
    if isinstance(first, dict):
        return {k: _sum([v[k] for v in values]) for k in first}
    if isinstance(first, bool) or not isinstance(first, (int, float)):
        return first
    return sum(values)


def slo(requests: RequestLog, ttft_s: float | None, tpot_s: float | None,
        makespan: float) -> dict | None:
    """Attainment (fraction of arrived requests that finished within both bounds; requests
    with one output token have no TPOT and meet that bound) and goodput (such requests per
    second of the run). None when no bound is set."""
    if ttft_s is None and tpot_s is None:
        return None
    done = requests.status == FINISHED
    ttft = requests.first_token - requests.arrival
    tokens = requests.output_tokens
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(tokens > 1, (requests.finish - requests.first_token)
                        / np.maximum(tokens - 1, 1), 0.0)
    ok = done.copy()
    if ttft_s is not None:
        ok &= ttft <= ttft_s
    if tpot_s is not None:
        ok &= tpot <= tpot_s
    met, n = int(ok.sum()), int(requests.arrival.size)
    return {"ttft_s": ttft_s, "tpot_s": tpot_s, "met": met,
            "attainment": met / n if n else None,
            "goodput_requests_per_s": met / makespan if makespan > 0 else None}


def imbalance(times: Sequence[float], in_flight: Sequence[Sequence[int]]) -> dict:
    """Max / mean in-flight requests across replicas, sampled at each arrival and averaged
    over time (each sample holds until the next; samples where the cluster is empty are
    skipped). 1.0 is perfect balance, N all on one replica. `series` is the same over
    time (`_binned`)."""
    if len(times) < 2:
        return {"max_over_mean": 1.0 if times else None, "peak": 1.0 if times else None}
    x = np.asarray(in_flight, dtype=np.float64)  # [samples, replicas]
    mean = x.mean(axis=1)
    busy = mean > 0
    ratio = np.where(busy, x.max(axis=1) / np.where(busy, mean, 1.0), 0.0)
    weight = np.diff(np.asarray(times, dtype=np.float64), append=times[-1]) * busy
    if weight.sum() <= 0:
        weight = busy.astype(np.float64)
    if weight.sum() <= 0:
        return {"max_over_mean": 1.0, "peak": 1.0}
    return {"max_over_mean": float((ratio * weight).sum() / weight.sum()),
            "peak": float(ratio[busy].max()),
            "series": _binned(np.asarray(times, dtype=np.float64), ratio, weight)}


IMBALANCE_BINS = 100


def _binned(times: np.ndarray, ratio: np.ndarray, weight: np.ndarray) -> dict:
    """The imbalance over time: `IMBALANCE_BINS` equal spans of the arrivals, each the
    time-weighted mean of max / mean in flight over its busy samples (None when the cluster
    was empty throughout)."""
    edges = np.linspace(times[0], times[-1], IMBALANCE_BINS + 1)
    which = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, IMBALANCE_BINS - 1)
    w = np.bincount(which, weights=weight, minlength=IMBALANCE_BINS)
    rw = np.bincount(which, weights=ratio * weight, minlength=IMBALANCE_BINS)
    values = [float(a / b) if b > 0 else None for a, b in zip(rw, w, strict=True)]
    return {"t_s": [float(t) for t in edges[:-1]], "max_over_mean": values}
