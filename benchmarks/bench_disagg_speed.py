"""Whole-process speed of `kvpager simulate` on a disaggregated cluster (issue 22's target:
the full Mooncake conversation trace on 2 prefill + 6 decode replicas at >= 100x real time).

    python benchmarks/bench_disagg_speed.py [--variants keep,free] [--router round-robin]

Runs the CLI as its own process under `/usr/bin/time -v` (Llama-3.1-8B, one H100 per
replica, prefix caching, chunked prefill) and records the real-time factor (trace duration /
wall time of the whole process), the CPU seconds (user + system: what the run costs on an
idle core, since the machine is shared), peak RSS and the run's headline figures, in
`benchmarks/results/disagg_speed.json`. Variants: `keep` (prefill replicas keep prompts as
prefix cache, the default) and `free` (`--no-prefill-keep-cache`).
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

from _common import RESULTS, record

TRACE = Path("/work/shared/traces/mooncake_fast25/conversation_trace.jsonl")


def one(trace: Path, variant: str, router: str, prefill: int, decode: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "kvpager.cli", "simulate", str(trace), "--cache",
               "paged", "--prefix-caching", "--chunked-prefill", "--model", "llama-3.1-8b",
               "--gpu", "h100-80gb", "--prefill-replicas", str(prefill),
               "--decode-replicas", str(decode), "--router", router, "--out", str(out),
               "--json"]
        if variant == "free":
            cmd.append("--no-prefill-keep-cache")
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                              check=True)
        wall = time.perf_counter() - started
        field = lambda name: re.search(rf"{name}: ([\d.]+)", proc.stderr).group(1)  # noqa: E731
        cpu = float(field(r"User time \(seconds\)")) + float(field(r"System time \(seconds\)"))
        rss_kb = int(field(r"Maximum resident set size \(kbytes\)"))
        metrics = json.loads((out / "metrics.json").read_text())
    paged = metrics["strategies"]["paged"]
    duration = metrics["trace"]["duration_s"]
    d = paged["disaggregation"]
    return {
        "trace": str(trace), "requests": metrics["trace"]["requests"],
        "trace_duration_s": duration, "prefill_replicas": prefill, "decode_replicas": decode,
        "router": router, "variant": variant, "process_wall_s": wall,
        "real_time_factor": duration / wall, "process_cpu_s": cpu,
        "real_time_factor_per_cpu_s": duration / cpu, "peak_rss_mib": rss_kb / 1024,
        "finished": paged["requests"]["finished"], "rejected": paged["requests"]["rejected"],
        "ttft_p50_s": paged["latency_s"]["ttft"]["p50"],
        "kv_moved_gib": d["transfer"]["bytes"] / (1 << 30),
        "command": " ".join(["python", *cmd[1:]]),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="keep,free")
    ap.add_argument("--router", default="round-robin")
    ap.add_argument("--prefill", type=int, default=2)
    ap.add_argument("--decode", type=int, default=6)
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--append", action="store_true",
                    help="keep the runs already in benchmarks/results/disagg_speed.json")
    args = ap.parse_args()
    runs = [one(args.trace, v, args.router, args.prefill, args.decode)
            for v in args.variants.split(",")]
    print(json.dumps(runs, indent=2))
    if args.append:  # add these runs to the recorded ones (another router, say)
        previous = json.loads((RESULTS / "disagg_speed.json").read_text())["results"]["runs"]
        runs = previous + runs
    record("disagg_speed", {"runs": runs, "note": "2-core machine shared with other agents' "
                            "jobs (load average recorded): wall times are loaded; CPU seconds "
                            "are what an idle core would need",
                            "load_average": list(__import__("os").getloadavg())})


if __name__ == "__main__":
    main()
