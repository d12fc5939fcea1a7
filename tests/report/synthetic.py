"""Hand-written run directories: known numbers, any strategy names, hostile strings.

They follow the run-directory format of `kvpager.sim.run.write_run` (metrics.json,
requests_<s>.csv, memory_<s>.csv) so report tests do not depend on a simulation's output
and can check figures against numbers written here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

MEMORY_HEADER = ["time_s", "token", "reserved", "internal", "external", "cached", "free",
                 "running_seqs", "waiting", "swapped", "prefix_hit_rate"]
REQUEST_HEADER = ["index", "id", "arrival_s", "prompt_tokens", "output_tokens", "admitted_s",
                  "first_token_s", "finish_s", "ttft_s", "e2e_s", "preemptions", "status",
                  "reason"]

EVIL_ID = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
EVIL_REASON = "rejected: <b onmouseover=alert(1)>too long</b> & more"
EVIL_SOURCE = "traces/<svg onload=window.__pwned=3>.csv"


def memory_rows(n: int, swapped: list[int] | None = None, hit: bool = False,
                seed: int = 0) -> list[list[float]]:
    """n samples 1 s apart whose six shares sum to 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n):
        shares = rng.dirichlet(np.ones(6))
        rows.append([float(j), *shares.tolist(), int(rng.integers(0, 50)),
                     int(rng.integers(0, 9)), 0 if swapped is None else swapped[j],
                     min(1.0, 0.01 * j) if hit else 0.0])
    return rows


def request_rows(n: int, ids: list[str] | None = None, rejected: dict[int, str] | None = None
                 ) -> list[list[object]]:
    rejected = rejected or {}
    rows = []
    for i in range(n):
        rid = ids[i] if ids is not None else str(i)
        arrival = 0.5 * i
        if i in rejected:
            rows.append([i, rid, arrival, 100 + i, 0, "", "", "", "", "", 0, "rejected",
                         rejected[i]])
            continue
        out = 10 + i
        first = arrival + 0.1 * (i + 1)
        finish = first + 0.02 * (out - 1)
        rows.append([i, rid, arrival, 100 + i, out, arrival, first, finish, first - arrival,
                     finish - arrival, i % 2, "finished", ""])
    return rows


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def strategy_metrics(memory: dict[str, float], finished: int, rejected: int = 0,
                     recompute: int = 0, reasons: dict[str, int] | None = None) -> dict:
    lat = {"mean": 0.05, "p50": 0.04, "p90": 0.08, "p99": 0.1}
    return {
        "requests": {"arrived": finished + rejected, "finished": finished,
                     "rejected": rejected, "rejected_reasons": reasons or {}},
        "throughput": {"requests_per_s": 1.5, "output_tokens_per_s": 300.0},
        "latency_s": {"ttft": lat, "tpot": lat, "e2e": lat, "normalized": lat},
        "memory": memory,
        "batch": {"mean_running": 12.5, "max_running": 40},
        "preemptions": {"swap": 0, "recompute": recompute},
        "swapped_out_blocks": 0, "swapped_in_blocks": 0, "recomputed_tokens": 0,
        "cow_copies": 0, "prefix_cache": None, "beams_replaced": 0,
        "time": {"simulated_s": 10.0, "busy_s": 9.0, "steps": 100, "wall_s": 0.1},
    }


def write_run(root: Path, strategies: dict[str, dict], *, samples: int = 20,
              requests: int = 12, ids: list[str] | None = None,
              rejected: dict[int, str] | None = None, source: str = "trace.csv",
              prefix_caching: bool = False, swapped: list[int] | None = None) -> Path:
    """A run directory with one memory and one request file per strategy.

    strategies: {name: {"memory": {kind: share}, ...extra metrics overrides}}.
    """
    root.mkdir(parents=True, exist_ok=True)
    names = list(strategies)
    metrics = {
        "schema": 1,
        "config": {"model": "llama-2-7b", "gpu": "a100-80gb", "tp": 1, "block_size": 16,
                   "preemption": "auto", "prefix_caching": prefix_caching,
                   "strategies": names},
        "trace": {"source": source, "requests": requests},
        "capacity": {"kv_tokens": 1000, "block_size": 16},
        "strategies": {},
    }
    n_rej = len(rejected or {})
    for k, (name, spec) in enumerate(strategies.items()):
        reasons = {}
        for r in (rejected or {}).values():
            reasons[r] = reasons.get(r, 0) + 1
        metrics["strategies"][name] = strategy_metrics(
            spec["memory"], requests - n_rej, n_rej, spec.get("recompute", 0), reasons)
        write_csv(root / f"memory_{name}.csv", MEMORY_HEADER,
                  memory_rows(samples, swapped, prefix_caching and k == 0, seed=k))
        write_csv(root / f"requests_{name}.csv", REQUEST_HEADER,
                  request_rows(requests, ids, rejected))
    (root / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return root


SHARES_A = {"token": 0.6, "reserved": 0.1, "internal": 0.05, "external": 0.0, "cached": 0.15,
            "free": 0.1}
SHARES_B = {"token": 0.2, "reserved": 0.1, "internal": 0.4, "external": 0.2, "cached": 0.0,
            "free": 0.1}
