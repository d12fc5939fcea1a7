"""Run a sweep's points: in this process, in local worker processes, or on a Ray cluster.

A point is one (sweep value, strategy) pair and one independent simulation; the points of
a sweep share nothing, so they spread over processes without coordination
(`kvpager.sweep.parallel.Executor`). The driver loads each value's trace once (so a bad
trace fails before any work starts) and ships it with the task.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kvpager.sim.config import SimConfig
from kvpager.sweep.analysis import sustained
from kvpager.sweep.parallel import Executor, RayUnavailableError, check_workers
from kvpager.sweep.spec import TIER_AXIS, SweepSpec, value_label

Progress = Callable[[int, int], None]  # (points done, points total)
SCHEMA = 1
KIND = "kvpager-sweep"


def run_point(trace, config: SimConfig, strategy: str) -> dict:
    """One simulation (executed in a worker). Returns the strategy's metrics and the
    resolved configuration and capacity it ran with. A tiered point runs without its own
    GPU-only baseline: the sweep's 0 point is that."""
    from kvpager.sim.run import simulate

    m = simulate(trace, config, [strategy], tier_baseline=False)
    return {"metrics": m["strategies"][strategy], "config": m["config"],
            "capacity": m["capacity"]}


def _measured_rate(trace) -> float | None:
    """Requests per second over the trace's span (as `kvpager trace info` counts it)."""
    n = len(trace)
    if n < 2:
        return None
    span = float(trace.arrival[-1] - trace.arrival[0])
    return n / span if span > 0 else None


def run_sweep(spec: SweepSpec, workers: int | None = None, ray_address: str | None = None,
              progress: Progress | None = None) -> dict:
    """Run every (value, strategy) point of `spec`; return the sweep document (what
    `sweep.json` holds).

    workers: local processes (None: os.cpu_count(); 1 runs in this process). With
        `ray_address`, the CPUs of a local Ray instance ("local") and ignored for a cluster.
    ray_address: None for local processes; "local" to start a private Ray instance; else
        the address of a running cluster ("auto", "host:6379", "ray://host:10001").
    """
    if not isinstance(spec, SweepSpec):
        raise ValueError(f"spec must be a SweepSpec, got {type(spec).__name__}")
    n_workers = check_workers(workers)
    executor = Executor(n_workers, ray_address)
    started = time.perf_counter()
    if spec.axis == TIER_AXIS:  # one load: one trace shared by every tier size
        one = spec.load(spec.values[0])
        traces = dict.fromkeys(spec.values, one)
    else:
        traces = {v: spec.load(v) for v in spec.values}
    configs = {v: spec.config_at(v) for v in spec.values}
    from kvpager.sim.run import cost_model, resolve

    cost_model(resolve(spec.config), spec.config)  # bad model/GPU: fail now
    tasks = [(v, s) for v in spec.values for s in spec.strategies]
    with executor:
        done = executor.map(run_point, [(traces[v], configs[v], s) for v, s in tasks],
                            progress)
    results = dict(zip(tasks, done, strict=True))
    return _document(spec, traces, tasks, results, executor.describe(),
                     time.perf_counter() - started)


def _document(spec: SweepSpec, traces: dict, tasks: list, results: dict, executor: dict,
              wall_s: float) -> dict:
    first = next(iter(traces.values()))
    native = None
    tiers = spec.axis == TIER_AXIS
    if spec.rate_scales is not None:
        scale = spec.rate_scales[0]
        measured = _measured_rate(first)
        native = None if measured is None else measured / scale
    points = []
    for value, strategy in tasks:
        r = results[(value, strategy)]
        load = spec.load_values[0] if tiers else value
        nominal = load if spec.rates is not None else (
            None if native is None else native * load)
        points.append({"value": value_label(value) if tiers else value, "strategy": strategy,
                       "rate_per_s": nominal,
                       "measured_rate_per_s": _measured_rate(traces[value]),
                       "metrics": r["metrics"]})
    any_result = results[tasks[0]]
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "spec": spec.to_dict(),
        "config": any_result["config"],
        "capacity": any_result["capacity"],
        "trace": {"source": spec.trace, "requests": len(first),
                  "native_rate_per_s": native},
        "points": points,
        "sustained": {} if tiers else sustained(points, spec.strategies, spec.metric,
                                                spec.bound),
        "executor": executor,
        "wall_s": wall_s,
    }


__all__ = ["RayUnavailableError", "check_workers", "run_point", "run_sweep"]
