"""The CPU prefix tier study (issue 15): hit rate, TTFT and throughput against the tier's
size on the full Mooncake conversation trace, with the trace's reuse ceiling, and the
simulator's speed with the tier on.

Deployment (see docs/prefix_tiers.md for why): Llama-3.1-8B (128k context) on 4 x
H100-80GB (tensor parallel 4), fp16 KV, block size 16, prefix caching, chunked prefill
(8,192 tokens a step), everything else kvpager's defaults. Tier sizes are host memory per
GPU (each GPU holds a quarter of every block's KV). Every point is one whole
`kvpager simulate ... --json` process (import, load, simulate, write), run one after
another; the speed figure is the simulated time over that process's wall time.

Usage: python benchmarks/prefix_tiers.py [--trace FILE] [--sizes 0,32,...,unlimited]
       [--no-record]
Writes benchmarks/results/prefix_tiers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's kvpager, not an installed one

try:
    from benchmarks._common import record
except ImportError:  # run as a script from benchmarks/
    from _common import record  # type: ignore[no-redef]

TRACE = REPO.parent / "shared" / "traces" / "mooncake_fast25" / "conversation_trace.jsonl"
SIZES = "0,16,64,256,1024,unlimited"
TP = 4
DEPLOYMENT = ["--model", "llama-3.1-8b", "--gpu", "h100-80gb", "--cache", "paged",
              "--prefix-caching", "--chunked-prefill", "--block-size", "16"]


def run_point(trace: Path, size: str, rate_scale: float = 1.0, tp: int = TP) -> dict:
    """One `kvpager simulate` process at tier `size` (GiB per GPU or "unlimited"), with the
    trace's arrivals sped up `rate_scale` times, at tensor parallelism `tp`."""
    tier = [] if size == "0" else ["--cpu-prefix-cache", size, "--no-tier-baseline"]
    scale = [] if rate_scale == 1.0 else ["--rate-scale", f"{rate_scale:g}"]
    args = [str(trace), *DEPLOYMENT, "--tp", str(tp), *tier, *scale]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "kvpager.cli", "simulate", *args, "--out", out, "--json"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
        metrics = json.loads(done.stdout)
    m = metrics["strategies"]["paged"]
    tier_section = m["prefix_tier"]
    simulated = m["time"]["simulated_s"]
    return {
        "cpu_prefix_cache_gib": size,
        "rate_scale": rate_scale,
        "tp": tp,
        "command": " ".join(["kvpager", "simulate", *args]),
        "tier_blocks": metrics["capacity"]["cpu_prefix_blocks"],
        "gpu_blocks": metrics["capacity"]["gpu_blocks"],
        "hit_rate": tier_section["hit_rate"],
        "gpu_hit_rate": tier_section["gpu_hit_rate"],
        "cpu_hit_rate": tier_section["cpu_hit_rate"],
        "prompt_tokens": tier_section["prompt_tokens"],
        "offloaded_gib": tier_section["offloaded_bytes"] / (1 << 30),
        "loaded_gib": tier_section["loaded_bytes"] / (1 << 30),
        "tier_blocks_held": tier_section["blocks_held"],
        "host_link_s": tier_section["host_link_s"],
        "ttft_s": m["latency_s"]["ttft"],
        "tpot_s": m["latency_s"]["tpot"],
        "throughput": m["throughput"],
        "load": m.get("load"),
        "requests": m["requests"],
        "preemptions": m["preemptions"],
        "simulated_s": simulated,
        "process_wall_s": round(wall, 2),
        "process_cpu_s": round((after.ru_utime - before.ru_utime)
                               + (after.ru_stime - before.ru_stime), 2),
        # the largest resident set of any child so far (getrusage cannot isolate one)
        "children_peak_rss_mb": round(after.ru_maxrss / 1024, 1),
        "simulation_wall_s": round(m["time"]["wall_s"], 2),
        "speedup_vs_real_time": round(simulated / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--sizes", default=SIZES, help="tier sizes, GiB per GPU")
    parser.add_argument("--headroom", type=float, default=1.3,
                        help="also run --headroom-sizes with arrivals this much faster "
                             "(0: skip): does the tier let the deployment keep up with more?")
    parser.add_argument("--headroom-sizes", default="0,1024")
    parser.add_argument("--sizing", default="1,2",
                        help="also run GPU-only at these tensor-parallel degrees (empty: "
                             "skip): why the study uses 4 GPUs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if not args.trace.is_file():
        raise SystemExit(f"{args.trace}: no such trace file")
    from kvpager.sim.reuse import reuse_ceiling
    from kvpager.sim.traces import load_trace

    ceiling = reuse_ceiling(load_trace(args.trace), 16).to_dict()
    print(f"reuse ceiling: {ceiling['block_rate']:.2%} of queried blocks, "
          f"{ceiling['token_rate']:.2%} of prompt tokens", flush=True)
    points = []
    for size in [s.strip() for s in args.sizes.split(",")]:
        p = run_point(args.trace, size)
        points.append(p)
        print(f"{size:>9}: hit {p['hit_rate']:.2%} (GPU {p['gpu_hit_rate']:.2%}, CPU "
              f"{p['cpu_hit_rate']:.2%}), TTFT p50 {p['ttft_s']['p50']:.3f} s p99 "
              f"{p['ttft_s']['p99']:.2f} s, {p['throughput']['requests_per_s']:.3f} req/s, "
              f"wall {p['process_wall_s']} s ({p['speedup_vs_real_time']}x real time)",
              flush=True)
    headroom = []
    if args.headroom > 0:
        for size in [s.strip() for s in args.headroom_sizes.split(",")]:
            p = run_point(args.trace, size, args.headroom)
            headroom.append(p)
            busy = (p["load"] or {}).get("saturated")
            print(f"x{args.headroom:g} {size:>9}: TTFT p50 {p['ttft_s']['p50']:.3f} s p99 "
                  f"{p['ttft_s']['p99']:.2f} s, {p['throughput']['requests_per_s']:.3f} req/s"
                  f"{', SATURATED' if busy else ''}", flush=True)
    sizing = []
    for tp in [int(t) for t in args.sizing.split(",") if t.strip()]:
        p = run_point(args.trace, "0", tp=tp)
        sizing.append(p)
        busy = (p["load"] or {}).get("saturated")
        print(f"GPU only, tp {tp}: simulated {p['simulated_s']:.0f} s, TTFT p50 "
              f"{p['ttft_s']['p50']:.1f} s, {p['throughput']['requests_per_s']:.3f} req/s"
              f"{', SATURATED' if busy else ''}", flush=True)
    load = os.getloadavg()
    results = {
        "trace": str(args.trace.relative_to(REPO.parent)) if args.trace.is_relative_to(
            REPO.parent) else str(args.trace),
        "deployment": " ".join([*DEPLOYMENT, "--tp", str(TP)]),
        "reuse_ceiling": ceiling,
        "points": points,
        "headroom_points": headroom,
        "sizing_points": sizing,
        "load_average_after": [round(x, 2) for x in load],
        "note": "points run one after another, each a whole process; the machine is shared "
                "with other work (load average above)",
    }
    if not args.no_record:
        path = record("prefix_tiers", results)
        print(f"recorded {path}")


if __name__ == "__main__":
    main()
