"""Whole-process speed and peak memory of `kvpager simulate` on a cluster (issue 21).

    python benchmarks/bench_cluster.py [--replicas 8] [--router prefix-approx]

Runs the CLI as its own process under `/usr/bin/time -v` on the full Mooncake conversation
trace (Llama-3.1-8B, one H100 per replica, prefix caching, chunked prefill) and records the
real-time factor (trace duration / wall time of the whole process) and the peak RSS, with
the run's hit rate, TTFT and load imbalance, in `benchmarks/results/cluster.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import record

TRACE = Path("../shared/traces/mooncake_fast25/conversation_trace.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--routers", default="prefix-precise,prefix-approx,round-robin",
                    help="comma-separated routers, one whole process each")
    ap.add_argument("--trace", type=Path, default=TRACE)
    args = ap.parse_args()
    results = [one(args.trace, args.replicas, router) for router in args.routers.split(",")]
    print(json.dumps(results, indent=2))
    record("cluster", {"runs": results})


def one(trace: Path, replicas: int, router: str) -> dict:
    """One whole `kvpager simulate` process: its speed, peak memory and headline figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "kvpager.cli", "simulate", str(trace), "--cache",
               "paged", "--prefix-caching", "--chunked-prefill", "--model", "llama-3.1-8b",
               "--gpu", "h100-80gb", "--replicas", str(replicas), "--router",
               router, "--out", str(out), "--json"]
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                              check=True)
        wall = time.perf_counter() - started
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",
                               proc.stderr).group(1))
        metrics = json.loads((out / "metrics.json").read_text())
    paged = metrics["strategies"]["paged"]
    duration = metrics["trace"]["duration_s"]
    results = {
        "trace": str(trace), "requests": metrics["trace"]["requests"],
        "trace_duration_s": duration, "replicas": replicas, "router": router,
        "process_wall_s": wall, "real_time_factor": duration / wall,
        "peak_rss_mib": rss_kb / 1024,
        "hit_rate": paged["prefix_cache"]["hit_rate"],
        "ttft_p50_s": paged["latency_s"]["ttft"]["p50"],
        "ttft_p99_s": paged["latency_s"]["ttft"]["p99"],
        "imbalance_max_over_mean": paged["cluster"]["imbalance"]["max_over_mean"],
        "finished": paged["requests"]["finished"],
        "command": " ".join(cmd[1:]),
        "cost_model": metrics["cost_model"]["kind"],
    }
    return results


if __name__ == "__main__":
    main()
