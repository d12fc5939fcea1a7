"""Does prefill / decode disaggregation pay, on which trace, and down to which link?

    python benchmarks/disaggregation.py [--gpus 8] [--mooncake-requests 2000]
        [--code-requests 3000] [--out benchmarks/results/disaggregation.json]

For each trace (the Mooncake conversation trace: 12k-token prompts, ~340-token answers; the
Azure code trace: 2k-token prompts, ~28-token answers), Llama-3.1-8B on one H100 per
replica, prefix caching and chunked prefill, the round-robin router... every split of the
GPU budget into P prefill + D decode replicas (decider `always`, NVLink within a node) and
the same GPUs aggregated (`kvpager.sim.cluster.disagg_plan.best_split`); then, for the best
split, the `cost` and `threshold:N` deciders and a sweep of network link rates
(`--kv-link-gbps`) to find the bandwidth below which its goodput per GPU falls under the
aggregated cluster's. Each probe is a whole simulation of a prefix of the trace (the first
N requests, `--*-requests`): the machine is 2 shared cores, so the study samples to stay
under ~20 minutes; the sample is recorded.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import record

from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.disagg_config import DisaggConfig
from kvpager.sim.cluster.disagg_plan import best_split, probe
from kvpager.sim.config import SimConfig
from kvpager.sim.run import resolve
from kvpager.sim.traces import load_trace

TRACES = Path("/work/shared/traces")
GBPS = (400.0, 200.0, 100.0, 50.0, 25.0, 10.0, 5.0)


def study(name: str, path: Path, requests: int, rate_scale: float, slo_ttft: float,
          slo_tpot: float, gpus: int, router: str, threshold: int) -> dict:
    trace = load_trace(path).take(np.arange(requests))
    if rate_scale != 1.0:
        trace = replace(trace, arrival=trace.arrival / rate_scale)
    config = resolve(SimConfig(model="llama-3.1-8b", gpu="h100-80gb", prefix_caching=True,
                               chunked_prefill=True))
    cluster = ClusterConfig(router=router, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot)
    started = time.perf_counter()
    answer = best_split(trace, config, cluster, gpus)
    best, agg = answer.disaggregated, answer.aggregated
    assert best is not None and agg is not None
    deciders = {}
    for text, kind, n in (("cost", "cost", 0), (f"threshold:{threshold}", "threshold",
                                                 threshold)):
        d = DisaggConfig(best.prefill, best.decode, decider=kind, threshold_tokens=n)
        deciders[text] = probe(trace, config, cluster, best.prefill, best.decode, d).to_dict()
    sweep = []
    for gbps in GBPS:
        d = DisaggConfig(best.prefill, best.decode, link_gbps=gbps)
        sweep.append({"gbps": gbps} | probe(trace, config, cluster, best.prefill, best.decode,
                                             d).to_dict())
    paying = [s["gbps"] for s in sweep if s["goodput_per_gpu"] >= agg.goodput_per_gpu]
    near = [s["gbps"] for s in sweep if s["goodput"] >= 0.95 * best.goodput]
    return {
        "trace": name, "path": str(path), "requests": requests,
        "trace_seconds": float(trace.arrival[-1] - trace.arrival[0]),
        "rate_scale": rate_scale, "gpus": gpus, "router": router,
        "model": "llama-3.1-8b", "gpu": "h100-80gb", "slo": {"ttft_s": slo_ttft,
                                                             "tpot_s": slo_tpot},
        "aggregated": agg.to_dict(), "best_disaggregated": best.to_dict(),
        "splits": [p.to_dict() for p in answer.probes],
        "deciders_at_best_split": deciders,
        "link_sweep_at_best_split": sweep,
        "lowest_paying_gbps_tested": min(paying) if paying else None,
        "lowest_gbps_within_5pct_of_nvlink": min(near) if near else None,
        "wall_s": time.perf_counter() - started,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--mooncake-requests", type=int, default=1000)
    ap.add_argument("--code-requests", type=int, default=2000)
    ap.add_argument("--code-rate-scale", type=float, default=12.0)
    ap.add_argument("--router", default="round-robin")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs = [
        study("mooncake-conversation", TRACES / "mooncake_fast25/conversation_trace.jsonl",
              args.mooncake_requests, 1.0, 5.0, 0.02, args.gpus, args.router, 4096),
        study("azure-code", TRACES / "azure2023/AzureLLMInferenceTrace_code.csv",
              args.code_requests, args.code_rate_scale, 1.0, 0.05, args.gpus, args.router,
              1024),
    ]
    print(json.dumps(runs, indent=2))
    record("disaggregation", {"runs": runs, "note": "2-core machine shared with other "
                              "agents' jobs: wall times are loaded; each trace is its first N "
                              "requests (sampled to fit the time budget)"}, args.out)


if __name__ == "__main__":
    main()
