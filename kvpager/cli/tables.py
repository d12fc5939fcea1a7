"""Rich tables of simulation results: strategies side by side."""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table


def _num(fmt: str) -> Callable[[object], str]:
    return lambda v: "-" if v is None else format(v, fmt)


def _pct(v: object) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}%"


# (label, path into one strategy's metrics, formatter)
ROWS: list[tuple[str, tuple[str, ...], Callable[[object], str]]] = [
    ("finished", ("requests", "finished"), _num("d")),
    ("rejected", ("requests", "rejected"), _num("d")),
    ("throughput (req/s)", ("throughput", "requests_per_s"), _num(".3f")),
    ("output tokens/s", ("throughput", "output_tokens_per_s"), _num(".0f")),
    ("normalized latency (s/token)", ("latency_s", "normalized", "mean"), _num(".4f")),
    ("TTFT p50 (s)", ("latency_s", "ttft", "p50"), _num(".3f")),
    ("TTFT p99 (s)", ("latency_s", "ttft", "p99"), _num(".3f")),
    ("TPOT p50 (s)", ("latency_s", "tpot", "p50"), _num(".4f")),
    ("mean batch (seqs)", ("batch", "mean_running"), _num(".1f")),
    ("KV: token states", ("memory", "token"), _pct),
    ("KV: reserved", ("memory", "reserved"), _pct),
    ("KV: internal fragmentation", ("memory", "internal"), _pct),
    ("KV: external fragmentation", ("memory", "external"), _pct),
    ("KV: free", ("memory", "free"), _pct),
    ("preemptions (swap)", ("preemptions", "swap"), _num("d")),
    ("preemptions (recompute)", ("preemptions", "recompute"), _num("d")),
    ("copy-on-write copies", ("cow_copies",), _num("d")),
    ("wall time (s)", ("time", "wall_s"), _num(".2f")),
]


def _get(metrics: dict, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


def comparison_table(metrics: dict, title: str = "") -> Table:
    """One column per strategy, one row per headline metric of `metrics.json`."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    strategies = metrics["strategies"]
    for name in strategies:
        table.add_column(name, justify="right")
    for label, path, fmt in ROWS:
        table.add_row(label, *(fmt(_get(strategies[n], path)) for n in strategies))
    return table
