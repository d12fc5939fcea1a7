"""The fleet study of docs/cluster_routing.md: how many one-H100 replicas of Llama-3.1-8B the
full Mooncake conversation trace needs per router to meet an SLO, and what a stale router
signal costs the best router.

    PYTHONPATH=. python benchmarks/cluster_routing.py [--workers 2] [--max-replicas 12]

1. `kvpager.plan.plan_fleet` over the routers (bisection over 1..max replicas, each probe a
   full simulation, the probes of a round in parallel worker processes);
2. every router at the best router's size (the probes the bisection did not already run);
3. the best router at its size and one below, with `--router-signal-delay` 0.05 and 1 s;
4. (`--jittered-delays`, added to an existing record) the same delays on the trace with each
   arrival moved by a uniform jitter within its timestamp slot: the trace's timestamps are
   quantized (about 10 requests share each instant, slots about 3 s apart), so a delayed
   router routes a whole slot on one stale reading; jittered, it sees them one by one.

Records everything in `benchmarks/results/cluster_routing.json`, with the machine's load
average before and after (the machine is shared: wall times are not speeds).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import record

from kvpager.plan import PlanSpec, plan_fleet, probe
from kvpager.sim import SimConfig
from kvpager.sim.traces import load_trace
from kvpager.sweep.parallel import Executor

TRACE = Path("/work/shared/traces/mooncake_fast25/conversation_trace.jsonl")
ROUTERS = ("round-robin", "least-requests", "prefix-approx", "prefix-precise")
SLO_TTFT_S = 3.0  # 96% of the trace's prompts prefill within 3 s on an idle H100
SLO_TPOT_S = 0.1  # 10 tokens/s per stream
ATTAINMENT = 0.9
DELAYS_S = (0.05, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-replicas", type=int, default=12)
    ap.add_argument("--routers", default=",".join(ROUTERS))
    ap.add_argument("--limit", type=int, default=None, help="first N requests (a dry run)")
    ap.add_argument("--jittered-delays", action="store_true",
                    help="only step 4, added to benchmarks/results/cluster_routing.json")
    args = ap.parse_args()
    if args.jittered_delays:
        jittered_delays(args)
        return
    load_before = os.getloadavg()
    started = time.perf_counter()
    trace = load_trace(args.trace, limit=args.limit)
    config = SimConfig(model="llama-3.1-8b", gpu="h100-80gb", tp=1, prefix_caching=True,
                       chunked_prefill=True)
    spec = PlanSpec(slo_ttft_s=SLO_TTFT_S, slo_tpot_s=SLO_TPOT_S, attainment=ATTAINMENT,
                    routers=tuple(args.routers.split(",")), max_replicas=args.max_replicas)
    with Executor(args.workers) as executor:
        doc = plan_fleet({1.0: trace}, config, spec, executor,
                         lambda d, t: print(f"probes {d}/{t}", flush=True))
        print(f"plan: {doc['probes']} probes in {doc['rounds']} rounds, "
              f"{doc['wall_s']:.0f} s", flush=True)
        met = [a for a in doc["answers"] if a["met"]]
        best = min(met, key=lambda a: (a["replicas"], -a["attainment"])) if met else None
        extra: list[tuple[str, str, int, float]] = []  # (kind, router, replicas, delay)
        if best is not None:
            n = best["replicas"]
            for a in doc["answers"]:
                if n not in {p["replicas"] for p in a["probes"]}:
                    extra.append(("same size", a["router"], n, 0.0))
            for delay in DELAYS_S:
                for count in (n, n - 1) if n > 1 else (n,):
                    extra.append(("signal delay", best["router"], count, delay))
        results = executor.map(probe, [
            (trace, config, spec.cluster(router, count) if delay == 0 else
             _delayed(spec, router, count, delay))
            for _, router, count, delay in extra],
            lambda d, t: print(f"extra {d}/{t}", flush=True))
    runs = [{"kind": kind, "router": router, "replicas": count, "signal_delay_s": delay}
            | r for (kind, router, count, delay), r in zip(extra, results, strict=True)]
    out = {
        "trace": str(args.trace), "requests": len(trace),
        "trace_duration_s": float(trace.duration),
        "deployment": config.to_dict(),
        "slo": {"ttft_s": SLO_TTFT_S, "tpot_s": SLO_TPOT_S, "attainment": ATTAINMENT},
        "plan": doc, "best_router": None if best is None else best["router"],
        "best_replicas": None if best is None else best["replicas"], "extra_runs": runs,
        "wall_s": time.perf_counter() - started,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "note": "2-core machine shared with other agents (load averages above): wall times "
                "are not speeds; the simulated figures do not depend on the load.",
    }
    path = record("cluster_routing", out)
    print(f"wrote {path} in {out['wall_s']:.0f} s")


def jittered_delays(args: argparse.Namespace) -> None:
    """Step 4 (see the module docstring), at the recorded best router's size."""
    import json

    import numpy as np
    from _common import RESULTS

    path = RESULTS / "cluster_routing.json"
    doc = json.loads(path.read_text())
    out = doc["results"]
    router, n = out["best_router"], out["best_replicas"]
    trace = load_trace(args.trace, limit=args.limit)
    slots = np.unique(trace.arrival)
    slot = float(np.median(np.diff(slots))) if slots.size > 1 else 0.0
    jitter = np.random.default_rng(0).uniform(0.0, slot, len(trace))
    jittered = trace.with_arrival_times(trace.arrival + jitter)
    config = SimConfig(model="llama-3.1-8b", gpu="h100-80gb", tp=1, prefix_caching=True,
                       chunked_prefill=True)
    spec = PlanSpec(slo_ttft_s=SLO_TTFT_S, slo_tpot_s=SLO_TPOT_S, attainment=ATTAINMENT,
                    routers=(router,), max_replicas=n)
    delays = (0.0, *DELAYS_S)
    started = time.perf_counter()
    with Executor(args.workers) as executor:
        results = executor.map(probe, [(jittered, config, _delayed(spec, router, n, d))
                                       for d in delays])
    out["jittered_delay_runs"] = {
        "slot_s": slot, "jitter": "uniform [0, slot) per request, seed 0",
        "wall_s": time.perf_counter() - started, "load_average_after": os.getloadavg(),
        "runs": [{"router": router, "replicas": n, "signal_delay_s": d} | r
                 for d, r in zip(delays, results, strict=True)]}
    record("cluster_routing", out)
    print(f"wrote {path}")


def _delayed(spec: PlanSpec, router: str, count: int, delay: float):
    from dataclasses import replace

    return replace(spec.cluster(router, count), signal_delay_s=delay)


if __name__ == "__main__":
    main()
