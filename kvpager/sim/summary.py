"""The headline numbers of a simulation, as (label, path, formatter) rows.

One list for every place that shows a strategy summary: the terminal table of
`kvpager simulate` shows the rows marked `brief`, the HTML report all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import SupportsFloat


def _num(fmt: str) -> Callable[[object], str]:
    def f(v: object) -> str:
        if v is None or isinstance(v, (dict, list, str, bool)):
            return "-"
        try:
            return format(v, fmt)
        except (TypeError, ValueError):  # e.g. 3.0 under "d"
            return format(float(v), ".4g") if isinstance(v, (int, float)) else "-"
    return f


def _gib(v: object) -> str:
    return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else \
        f"{v / (1 << 30):.1f}"


def _pct(v: object) -> str:
    return "-" if not isinstance(v, SupportsFloat) else f"{100 * float(v):.1f}%"


def _by_group(key: str) -> Callable[[object], str]:
    """A hybrid run's `kv_by_group` as "full 1.2 / sliding_window 0.1" (GiB)."""
    def f(v: object) -> str:
        if not isinstance(v, dict):
            return "-"
        return " / ".join(f"{n} {x:.2f}" for n, x in zip(v["groups"], v[key], strict=True))
    return f


def load_verdict(load: object) -> str:
    """'SATURATED since 12.3 s' or 'keeps up' from a strategy's `load` metrics
    (`kvpager.sim.saturation.assess`); '-' for runs written before it existed."""
    if not isinstance(load, dict) or "saturated" not in load:
        return "-"
    if not load["saturated"]:
        return "keeps up"
    since = load.get("behind_since_s")
    return "SATURATED" + ("" if since is None else f" since {since:.1f} s")


# (label, path into one strategy's metrics, formatter)
SUMMARY_ROWS: list[tuple[str, tuple[str, ...], Callable[[object], str]]] = [
    ("requests arrived", ("requests", "arrived"), _num("d")),
    ("finished", ("requests", "finished"), _num("d")),
    ("rejected", ("requests", "rejected"), _num("d")),
    ("offered rate (req/s)", ("load", "offered_rate_per_s"), _num(".3f")),
    ("throughput (req/s)", ("throughput", "requests_per_s"), _num(".3f")),
    ("load", ("load",), load_verdict),
    ("waiting at the last arrival", ("load", "queued_at_last_arrival"), _num("d")),
    ("output tokens/s", ("throughput", "output_tokens_per_s"), _num(".0f")),
    ("normalized latency mean (s/token)", ("latency_s", "normalized", "mean"), _num(".4f")),
    ("normalized latency p99 (s/token)", ("latency_s", "normalized", "p99"), _num(".4f")),
    ("TTFT p50 (s)", ("latency_s", "ttft", "p50"), _num(".3f")),
    ("TTFT p99 (s)", ("latency_s", "ttft", "p99"), _num(".3f")),
    ("TPOT p50 (s)", ("latency_s", "tpot", "p50"), _num(".4f")),
    ("TPOT p99 (s)", ("latency_s", "tpot", "p99"), _num(".4f")),
    ("end-to-end p50 (s)", ("latency_s", "e2e", "p50"), _num(".2f")),
    ("mean batch (seqs)", ("batch", "mean_running"), _num(".1f")),
    ("max batch (seqs)", ("batch", "max_running"), _num("d")),
    ("KV: token states", ("memory", "token"), _pct),
    ("KV: reserved", ("memory", "reserved"), _pct),
    ("KV: internal fragmentation", ("memory", "internal"), _pct),
    ("KV: external fragmentation", ("memory", "external"), _pct),
    ("KV: prefix-cached (evictable)", ("memory", "cached"), _pct),
    ("KV: free", ("memory", "free"), _pct),
    ("preemptions (swap)", ("preemptions", "swap"), _num("d")),
    ("preemptions (recompute)", ("preemptions", "recompute"), _num("d")),
    ("blocks swapped out", ("swapped_out_blocks",), _num("d")),
    ("blocks swapped in", ("swapped_in_blocks",), _num("d")),
    ("recomputed tokens", ("recomputed_tokens",), _num("d")),
    ("copy-on-write copies", ("cow_copies",), _num("d")),
    ("prefix-cache hit rate", ("prefix_cache", "hit_rate"), _pct),
    *[(label, ("prefix_tier", *path), fmt) for label, path, fmt in (
        ("prefix hits from GPU", ("gpu_hit_rate",), _pct),
        ("prefix hits from CPU tier", ("cpu_hit_rate",), _pct),
        ("prompt tokens from GPU", ("prompt_tokens", "from_gpu"), _num("d")),
        ("prompt tokens from CPU tier", ("prompt_tokens", "from_cpu"), _num("d")),
        ("prompt tokens computed", ("prompt_tokens", "computed"), _num("d")),
        ("GiB offloaded to CPU tier", ("offloaded_bytes",), _gib),
        ("GiB loaded from CPU tier", ("loaded_bytes",), _gib),
        ("steps waiting on offloads (s)", ("offload_stall_s",), _num(".2f")),
        ("TTFT p50 without the tier (s)", ("gpu_only", "ttft_s", "p50"), _num(".3f")),
        ("TTFT p99 without the tier (s)", ("gpu_only", "ttft_s", "p99"), _num(".3f")),
        ("TTFT p50 saved by the tier (s)", ("ttft_saved_s", "p50"), _num(".3f")),
        ("TTFT p99 saved by the tier (s)", ("ttft_saved_s", "p99"), _num(".3f")),
    )],
    ("KV by group, mean GiB", ("kv_by_group",), _by_group("mean_gib")),
    ("KV by group, peak GiB", ("kv_by_group",), _by_group("peak_gib")),
    ("simulated time (s)", ("time", "simulated_s"), _num(".1f")),
    ("simulation wall time (s)", ("time", "wall_s"), _num(".2f")),
]


def get_path(metrics: object, path: tuple[str, ...]) -> object:
    """metrics[path[0]][path[1]]...; None where a key is missing."""
    for key in path:
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


#: Labels of the rows the terminal table shows.
BRIEF = (
    "finished", "rejected", "offered rate (req/s)", "throughput (req/s)", "load",
    "output tokens/s",
    "normalized latency mean (s/token)", "TTFT p50 (s)", "TTFT p99 (s)", "TPOT p50 (s)",
    "mean batch (seqs)", "KV: token states", "KV: reserved", "KV: internal fragmentation",
    "KV: external fragmentation", "KV: prefix-cached (evictable)", "KV: free",
    "preemptions (swap)", "preemptions (recompute)", "copy-on-write copies",
    "simulation wall time (s)",
)

#: Rows the terminal table adds when the run used prefix caching.
BRIEF_PREFIX = ("prefix-cache hit rate",)
#: Rows the terminal table adds when the run had several KV-cache groups.
BRIEF_GROUPS = ("KV by group, mean GiB", "KV by group, peak GiB")
#: Rows the terminal table adds when the run had a CPU prefix tier.
BRIEF_TIER = tuple(label for label, path, _ in SUMMARY_ROWS if path[0] == "prefix_tier")
