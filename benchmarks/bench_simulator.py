"""Time the simulator on full real traces, as whole processes (import, load, simulate, write).

Scenarios:
- azure-conv-paged: the Azure conversation trace (19,366 requests, about an hour), paged
  strategy, defaults (Llama-2-7B on one A100-80GB). Target: under 18 s (200x real time) with
  peak memory under 500 MB.
- azure-conv-70b-tp2: the same trace with Llama-2-70B, tensor parallel 2, A100-80GB, batch cap
  128, block size 16, 4,096 tokens per request at most. Reference point from the issue: an
  established Python simulator needs about 60 s for this loop on this machine.
- linearity: the first 25%, 50% and 100% of the Azure trace; wall seconds per simulated step
  should stay flat.
- `--calibration-only`: azure-conv-paged with the roofline and with the shipped A100 GPU
  fit (`--calibration kvpager/sim/cost_model/calibrations/a100-80gb.json`), recorded as
  `simulator_calibration.json`: what the calibrated cost model costs in speed.

- `--steploop [--against OLD_CHECKOUT]`: the step loop in-process, side by side: the full
  Azure conversation trace, Llama-2-70B TP2 on A100-80GB, recompute preemption, no chunked
  prefill, no prefix caching, 4,096 batched tokens, 128 sequences, utilization 0.9
  (`benchmarks/_steploop.py`), in this checkout and in OLD_CHECKOUT (e.g. a worktree of
  160aba0), alternating, best of `--repeats`. Recorded as `simulator_steploop.json`.

Wall time is what a user waits; process CPU time (user + system) is reported beside it
because it is far less sensitive to other work on a shared machine.

Usage: python benchmarks/bench_simulator.py [--traces DIR] [--repeats 3] [--no-record]
       [--calibration-only] [--steploop [--against OLD_CHECKOUT]]
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

try:
    from benchmarks._common import record
except ImportError:  # run as a script from benchmarks/
    from _common import record  # type: ignore[no-redef]

AZURE = "azure2023/AzureLLMInferenceTrace_conv.csv"


def run(args: list[str]) -> dict:
    """Run `kvpager simulate ... --json` in a fresh process; wall seconds, peak RSS, metrics."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "kvpager.cli", "simulate", *args, "--out", out, "--json"]
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        before, peak_kb = usage.ru_maxrss, after.ru_maxrss
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
        metrics = json.loads(done.stdout)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": max(peak_kb, before) / 1024,
            "metrics": metrics,
            "command": " ".join(["kvpager", "simulate", *args])}


def best_of(args: list[str], repeats: int) -> dict:
    runs = [run(args) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["wall_s"])
    (name, strat), = best["metrics"]["strategies"].items()
    return {
        "command": best["command"],
        "wall_s_best": round(best["wall_s"], 2),
        "wall_s_all": [round(r["wall_s"], 2) for r in runs],
        "cpu_s_best": round(min(r["cpu_s"] for r in runs), 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "strategy": name,
        "simulated_s": round(strat["time"]["simulated_s"], 1),
        "speedup_vs_real_time": round(strat["time"]["simulated_s"] / best["wall_s"], 1),
        "steps": strat["time"]["steps"],
        "simulation_wall_s": round(strat["time"]["wall_s"], 2),
        "us_per_step": round(strat["time"]["wall_s"] / strat["time"]["steps"] * 1e6, 1),
        "requests": strat["requests"],
        "preemptions": strat["preemptions"],
    }


def steploop(trace: Path, checkouts: dict[str, Path], repeats: int) -> dict:
    """Best (by process CPU time) of `repeats` in-process runs per checkout, alternating
    checkouts so that machine load hits both alike."""
    script = Path(__file__).resolve().parent / "_steploop.py"
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    for _ in range(repeats):
        for name, root in checkouts.items():
            done = subprocess.run([sys.executable, str(script), str(trace.resolve())],
                                  cwd=root, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{root}: step loop failed:\n{done.stderr}")
            runs[name].append(json.loads(done.stdout))
    out = {}
    for name, rs in runs.items():
        # Process CPU time is what a loaded machine distorts least (wall time waits for
        # the other processes); the best run by CPU time is kept, every run's figures beside.
        best = min(rs, key=lambda r: r.get("cpu_s", r["simulation_wall_s"]))
        commit = subprocess.run(["git", "-C", str(checkouts[name]), "rev-parse", "--short",
                                 "HEAD"], capture_output=True, text=True).stdout.strip()
        out[name] = best | {"commit": commit,
                            "simulation_wall_s_all": [r["simulation_wall_s"] for r in rs],
                            "cpu_s_all": [r.get("cpu_s") for r in rs],
                            "us_cpu_per_step": round(best.get("cpu_s", 0.0) / best["steps"] * 1e6,
                                                     1)}
    return out


def _merge_into_simulator_json(key: str, results: dict) -> Path:
    """Add one scenario to `results/simulator.json`, keeping the other scenarios' records;
    the scenario carries its own command, date and environment."""
    from datetime import datetime, timezone

    try:
        from benchmarks._common import RESULTS, environment
    except ImportError:
        from _common import RESULTS, environment  # type: ignore[no-redef]
    path = RESULTS / "simulator.json"
    data = json.loads(path.read_text())
    data["results"][key] = {"command": "python " + " ".join(sys.argv),
                            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "environment": environment()} | results
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default=os.environ.get("KVPAGER_TRACES_DIR",
                                                            "../shared/traces"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--calibration-only", action="store_true")
    parser.add_argument("--steploop", action="store_true")
    parser.add_argument("--against", type=Path, default=None,
                        help="an old checkout to time beside this one (--steploop)")
    args = parser.parse_args()
    azure = Path(args.traces) / AZURE
    if not azure.exists():
        raise SystemExit(f"{azure}: not found (pass --traces DIR)")
    if args.steploop:
        here = Path(__file__).resolve().parents[1]
        checkouts = {"this": here} | ({} if args.against is None else {"against": args.against})
        results = steploop(azure, checkouts, args.repeats) | {
            "load_average_1min_after": os.getloadavg()[0]}
        print(json.dumps(results, indent=2))
        if not args.no_record:
            print("recorded", _merge_into_simulator_json("azure-conv-70b-tp2-steploop",
                                                         results))
        return
    if args.calibration_only:
        shipped = Path(__file__).resolve().parents[1] / "kvpager/sim/cost_model/calibrations"
        results = {
            "azure-conv-paged": best_of([str(azure), "--cache", "paged"], args.repeats),
            "azure-conv-paged-calibrated": best_of(
                [str(azure), "--cache", "paged", "--calibration",
                 str(shipped / "a100-80gb.json")], args.repeats),
            "load_average_1min_after": os.getloadavg()[0],
        }
        print(json.dumps(results, indent=2))
        if not args.no_record:
            print("recorded", record("simulator_calibration", results))
        return
    results = {
        "azure-conv-paged": best_of([str(azure), "--cache", "paged"], args.repeats),
        "azure-conv-70b-tp2": best_of(
            [str(azure), "--cache", "paged", "--model", "llama-2-70b", "--tp", "2",
             "--gpu", "a100-80gb", "--max-num-seqs", "128", "--block-size", "16",
             "--max-model-len", "4096"], args.repeats),
    }
    linear = {}
    for share in (0.25, 0.5, 1.0):
        limit = int(19_366 * share)
        r = best_of([str(azure), "--cache", "paged", "--limit", str(limit)], 1)
        linear[f"{int(share * 100)}%"] = {k: r[k] for k in ("steps", "simulation_wall_s",
                                                             "us_per_step")}
    results["linearity"] = linear
    print(json.dumps(results, indent=2))
    if not args.no_record:
        print("recorded", record("simulator", results))


if __name__ == "__main__":
    main()
