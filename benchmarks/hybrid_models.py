"""The hybrid-models study (issue 20, docs/hybrid_models.md).

Part 1, capacity: for every new preset on a GPU (and tensor-parallel degree) that fits it,
`kvpager.sim.capacity.capacity` with and without hybrid allocation: KV memory per GPU,
requests of max_model_len tokens at once, the waste a manager without groups has at peak (a
window group holding its window plus one 8,192-token prefill chunk) and while decoding
(the window alone, vLLM's RFC figure).

Part 2, the Mooncake conversation trace (12k-token prompts, prefix blocks shared by hash
id): throughput, TTFT and prefix hit rate of hybrid vs --no-hybrid, prefix caching on,
chunked prefill, for gpt-oss-120b on one H200 and Gemma-3-27B on one H200, the hybrid
manager's free order window_first (default) and lru; hybrid without prefix caching beside
them. The first `--limit` requests (the trace's first minutes, at its
own arrival times): the machine is 2 shared cores and a hybrid run of the whole trace takes
many minutes.

Usage: python benchmarks/hybrid_models.py [--limit 1000] [--no-record]
Writes benchmarks/results/hybrid_models.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's kvpager, not an installed one

from kvpager.sim.capacity import capacity  # noqa: E402
from kvpager.sim.config import SimConfig  # noqa: E402
from kvpager.sim.run import simulate  # noqa: E402
from kvpager.sim.traces import load_trace  # noqa: E402

try:
    from benchmarks._common import record
except ImportError:  # run as a script from benchmarks/
    from _common import record  # type: ignore[no-redef]

TRACE = next((root / "shared" / "traces" / "mooncake_fast25" / "conversation_trace.jsonl"
              for root in REPO.parents
              if (root / "shared" / "traces" / "mooncake_fast25").is_dir()),
             REPO.parent / "shared" / "traces" / "mooncake_fast25" / "conversation_trace.jsonl")

#: (preset, GPU, tp, max_model_len): the smallest of our GPUs that holds it, at its context
#: (Gemma 2 at 8,192 as vLLM's RFC; Llama 4 Scout at 131,072, not its 10M).
DEPLOYMENTS = [
    ("gpt-oss-20b", "h100-80gb", 1, 131072),
    ("gpt-oss-120b", "h200", 1, 131072),
    ("gemma-2-27b", "h100-80gb", 1, 8192),
    ("gemma-3-27b", "h100-80gb", 1, 131072),
    ("ministral-8b", "h100-80gb", 1, 131072),
    ("llama-4-scout", "h200", 2, 131072),
    ("qwen3-next-80b-a3b", "h200", 2, 262144),
    ("deepseek-v3", "h200", 8, 163840),
    ("mistral-7b", "h100-80gb", 1, 32768),
    ("gpt-oss-120b", "b200", 1, 131072),
]

#: What vLLM's hybrid-allocator RFC (vllm-project/vllm#11382) says a manager without groups
#: wastes.
PUBLISHED_WASTE = {"gemma-2-27b": 0.25, "ministral-8b": 0.5625}

RUNS = [  # (model, gpu, tp, hybrid, prefix caching, free order)
    ("gpt-oss-120b", "h200", 1, True, True, "window_first"),
    ("gpt-oss-120b", "h200", 1, True, True, "lru"),
    ("gpt-oss-120b", "h200", 1, False, True, "window_first"),
    ("gpt-oss-120b", "h200", 1, True, False, "window_first"),
    ("gemma-3-27b", "h200", 1, True, True, "window_first"),
    ("gemma-3-27b", "h200", 1, True, True, "lru"),
    ("gemma-3-27b", "h200", 1, False, True, "window_first"),
    ("gemma-3-27b", "h200", 1, True, False, "window_first"),
]


def capacity_table() -> list[dict]:
    rows = []
    for model, gpu, tp, length in DEPLOYMENTS:
        plan = capacity(model, gpu, tp=tp, max_model_len=length)
        rows.append({
            "model": plan["model"], "gpu": plan["gpu"], "tp": tp, "max_model_len": length,
            "kv_cache_gib": plan["kv_cache_bytes"] / 2**30,
            "weights_gib_per_gpu": plan["weight_bytes_per_gpu"] / 2**30,
            "groups": [f"{g['type']} x{g['layers']}" for g in plan["groups"]],
            "max_concurrency": plan["max_concurrency"],
            "no_hybrid_max_concurrency": plan["no_hybrid"]["max_concurrency"],
            "hybrid_gain": plan["hybrid_gain"],
            "no_hybrid_waste_peak": plan["no_hybrid_waste"],
            "no_hybrid_waste_decode": plan["decode"]["no_hybrid_waste"],
            "decode_hybrid_gain": plan["decode"]["hybrid_gain"],
            "published_waste": PUBLISHED_WASTE.get(model),
        })
    return rows


def trace_runs(limit: int) -> list[dict]:
    trace = load_trace(TRACE, limit=limit)
    out = []
    for model, gpu, tp, hybrid, prefix, order in RUNS:
        config = SimConfig(model=model, gpu=gpu, tp=tp, chunked_prefill=True,
                           max_model_len=131072, prefix_caching=prefix, hybrid=hybrid,
                           free_order=order)
        start = time.perf_counter()
        m = simulate(trace, replace(config), strategies=("paged",))
        wall = time.perf_counter() - start
        p = m["strategies"]["paged"]
        cache = p["prefix_cache"]
        out.append({
            "model": model, "gpu": gpu, "tp": tp, "hybrid": hybrid, "prefix_caching": prefix,
            "free_order": order if hybrid else None,
            "requests": limit, "gpu_pages": m["capacity"]["gpu_blocks"],
            "kv_capacity_gib": m["capacity"]["kv_capacity_gib"],
            "throughput_req_s": p["throughput"]["requests_per_s"],
            "output_tokens_s": p["throughput"]["output_tokens_per_s"],
            "ttft_p50_s": p["latency_s"]["ttft"]["p50"],
            "ttft_p99_s": p["latency_s"]["ttft"]["p99"],
            "tpot_p50_s": p["latency_s"]["tpot"]["p50"],
            "prefix_hit_rate": None if cache is None else cache["hit_rate"],
            "mean_running": p["batch"]["mean_running"],
            "preemptions": p["preemptions"],
            "kv_by_group_mean_gib": (dict(zip(p["kv_by_group"]["groups"],
                                              p["kv_by_group"]["mean_gib"], strict=True))
                                     if "kv_by_group" in p else None),
            "simulated_s": p["time"]["simulated_s"], "wall_s": wall,
            "cost_model": m["cost_model"]["kind"],
        })
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    results = {"capacity": capacity_table(), "mooncake": trace_runs(args.limit),
               "trace": str(TRACE.name), "limit": args.limit,
               "machine_note": "2 CPU cores shared with about 7 other agents: wall times "
                               "are loaded-machine figures"}
    for row in results["capacity"]:
        print(row)
    if not args.no_record:
        print(record("hybrid_models", results))


if __name__ == "__main__":
    main()
