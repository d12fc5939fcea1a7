"""Simulator speed with KV-cache groups (issue 20's target: a hybrid model's full Azure
conversation run costs <= 1.5x the single-group run of a dense model of the same size).

Gemma-2-27B on one H100-80GB, the whole Azure conversation trace (19,366 requests), paged,
chunked prefill: with groups (full + 4,096-token window, the library's
HybridKVCacheManager) and with --no-hybrid (one full-attention group: the plain
KVCacheManager, a dense model of the same size). Each run is one `kvpager simulate ...
--json` process, timed whole (import, load, simulate, write), one after the other.

Usage: python benchmarks/hybrid_sim_speed.py [--no-record]
Writes benchmarks/results/hybrid_sim_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

try:
    from benchmarks._common import record
except ImportError:  # run as a script from benchmarks/
    from _common import record  # type: ignore[no-redef]

TRACE = next((root / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
              for root in REPO.parents if (root / "shared" / "traces").is_dir()),
             REPO.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv")
ARGS = ["--model", "gemma-2-27b", "--gpu", "h100-80gb", "--cache", "paged",
        "--chunked-prefill"]


def run(flag: str) -> dict:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "kvpager.cli", "simulate", str(TRACE), *ARGS, flag,
               "--out", out, "--json"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    p = json.loads(done.stdout)["strategies"]["paged"]
    return {"flag": flag, "process_wall_s": wall, "simulate_wall_s": p["time"]["wall_s"],
            "finished": p["requests"]["finished"], "simulated_s": p["time"]["simulated_s"],
            "steps": p["time"]["steps"], "throughput_req_s": p["throughput"]["requests_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    hybrid, dense = run("--hybrid"), run("--no-hybrid")
    results = {"trace": TRACE.name, "args": ARGS, "hybrid": hybrid, "single_group": dense,
               "ratio": hybrid["process_wall_s"] / dense["process_wall_s"], "target": 1.5,
               "load_average_1min_after": os.getloadavg()[0],
               "machine_note": "2-core VM whose speed varies between runs: the two runs go "
                               "one after the other, so compare their ratio"}
    print(json.dumps(results, indent=2))
    if not args.no_record:
        print(record("hybrid_sim_speed", results))


if __name__ == "__main__":
    main()
