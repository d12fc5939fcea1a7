"""Run a sweep's points: in this process, in local worker processes, or on a Ray cluster.

A point is one (sweep value, strategy) pair and one independent simulation; the points of
a sweep share nothing, so they spread over processes without coordination. The driver
loads each value's trace once (so a bad trace fails before any work starts) and ships it
with the task; workers need only the installed `kvpager`, not the trace file, which is
what lets a Ray cluster run a sweep whose trace sits on the laptop that submitted it.

Local workers are started with the "spawn" method: the driver may hold threads (Rich's
progress bar refresh, Ray's client), and forking a threaded process can deadlock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from kvpager.sim.config import SimConfig
from kvpager.sweep.analysis import sustained
from kvpager.sweep.spec import TIER_AXIS, SweepSpec, value_label

Progress = Callable[[int, int], None]  # (points done, points total)
SCHEMA = 1
KIND = "kvpager-sweep"


class RayUnavailableError(RuntimeError):
    """`--ray` was asked for but Ray is not installed."""


def run_point(trace, config: SimConfig, strategy: str) -> dict:
    """One simulation (executed in a worker). Returns the strategy's metrics and the
    resolved configuration and capacity it ran with. A tiered point runs without its own
    GPU-only baseline: the sweep's 0 point is that."""
    from kvpager.sim.run import simulate

    m = simulate(trace, config, [strategy], tier_baseline=False)
    return {"metrics": m["strategies"][strategy], "config": m["config"],
            "capacity": m["capacity"]}


def check_workers(workers: int | None) -> int:
    """`workers` (None: one per CPU) validated; raises ValueError naming it."""
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


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
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address):
        raise ValueError(f"ray_address must be 'local' or a cluster address, got "
                         f"{ray_address!r}")
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
    if ray_address is not None:
        results = _run_ray(ray_address, tasks, traces, configs, n_workers, progress)
        executor = {"kind": "ray", "address": ray_address,
                    "workers": n_workers if ray_address == "local" else None}
    elif n_workers == 1 or len(tasks) == 1:
        results = _run_inline(tasks, traces, configs, progress)
        executor = {"kind": "inline", "workers": 1}
    else:
        n_workers = min(n_workers, len(tasks))
        results = _run_processes(tasks, traces, configs, n_workers, progress)
        executor = {"kind": "processes", "workers": n_workers}
    return _document(spec, traces, tasks, results, executor, time.perf_counter() - started)


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


def _run_inline(tasks, traces, configs, progress) -> dict:
    out = {}
    for done, (value, strategy) in enumerate(tasks, start=1):
        out[(value, strategy)] = run_point(traces[value], configs[value], strategy)
        if progress is not None:
            progress(done, len(tasks))
    return out


def _run_processes(tasks, traces, configs, workers, progress) -> dict:
    import multiprocessing

    out = {}
    pool = ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(run_point, traces[v], configs[v], s): (v, s) for v, s in tasks}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                out[futures[f]] = f.result()  # re-raises a worker's error here
                if progress is not None:
                    progress(len(out), len(tasks))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


def _run_ray(address, tasks, traces, configs, workers, progress) -> dict:
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("--ray needs Ray, which is not installed: pip install "
                                  "'kvpager[ray]' (or 'ray')") from None
    owns = not ray.is_initialized()
    if owns:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_point)
        trace_refs = {v: ray.put(t) for v, t in traces.items()}
        config_refs = {v: ray.put(c) for v, c in configs.items()}
        refs = {remote.remote(trace_refs[v], config_refs[v], s): (v, s) for v, s in tasks}
        pending, out = list(refs), {}
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                try:
                    out[refs[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    for p in pending:
                        ray.cancel(p)
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, Exception) else exc) from None
                if progress is not None:
                    progress(len(out), len(tasks))
        return out
    finally:
        if owns:
            ray.shutdown()
