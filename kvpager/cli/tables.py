"""What `kvpager simulate` prints: strategies side by side, then what a planner needs to read
them (the offered load, the KV capacity, what each strategy means, why requests were
rejected, which files were written and what to run next)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import SupportsFloat

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kvpager.sim.config import DESCRIPTIONS
from kvpager.sim.rejections import describe
from kvpager.sim.summary import (
    BRIEF,
    BRIEF_GROUPS,
    BRIEF_PREFIX,
    BRIEF_TIER,
    SUMMARY_ROWS,
    get_path,
)

GiB = 1 << 30


def comparison_table(metrics: dict) -> Table:
    """One column per strategy, one row per headline metric of `metrics.json` (plus the
    prefix-cache hit rate when the run used prefix caching, and the CPU prefix tier's rows
    when it had one)."""
    table = Table()
    table.add_column("metric")
    strategies = metrics["strategies"]
    for name in strategies:
        table.add_column(name, justify="right")
    shown = BRIEF + (BRIEF_PREFIX if get_path(metrics, ("config", "prefix_caching")) else ())
    if get_path(metrics, ("config", "cpu_prefix_cache_gib")) not in (None, 0, 0.0):
        shown += BRIEF_TIER
    if any("kv_by_group" in m for m in strategies.values()):
        shown += BRIEF_GROUPS
    for label, path, fmt in SUMMARY_ROWS:
        if label in shown:
            table.add_row(label, *(fmt(get_path(strategies[n], path)) for n in strategies))
    return table


#: Per-replica columns of the cluster table: (header, path into a replica's summary, format).
REPLICA_COLUMNS = [(label, path, fmt) for label, path, fmt in SUMMARY_ROWS if label in (
    "finished", "rejected", "throughput (req/s)", "TTFT p50 (s)", "TTFT p99 (s)",
    "TPOT p50 (s)", "KV: free", "prefix-cache hit rate")]
MAX_REPLICA_ROWS = 16


def replica_tables(metrics: dict) -> list[Table]:
    """Per strategy, a row per replica (when there are at most 16) and the cluster's totals,
    with the router, load imbalance and SLO attainment."""
    tables = []
    cluster = metrics.get("cluster") or {}
    for name, m in metrics["strategies"].items():
        section = m.get("cluster") or {}
        replicas = section.get("replicas") or []
        imbalance = get_path(section, ("imbalance", "max_over_mean"))
        settings = {**(cluster.get("router_settings") or {}),
                    **({"weights": cluster["weights"]} if cluster.get("weights") else {})}
        shown = ", ".join(f"{k} {v}" for k, v in settings.items())
        table = Table(title=f"{name}: {len(replicas)} replicas, router "
                            f"{cluster.get('router', '-')}"
                            + (f" ({shown})" if shown else "")
                            + f", load imbalance (max/mean in flight) "
                            f"{'-' if imbalance is None else f'{imbalance:.2f}'}")
        table.add_column("replica")
        for label, _, _ in REPLICA_COLUMNS:
            table.add_column(label, justify="right")
        table.add_column("SLO attainment", justify="right")
        rows = [(f"{r['replica']} {r.get('role', '')}".strip(), r) for r in replicas] \
            if len(replicas) <= \
            MAX_REPLICA_ROWS else []
        for label, r in [*rows, ("cluster", m)]:
            att = get_path(r, ("slo", "attainment"))
            table.add_row(label, *(fmt(get_path(r, path)) for _, path, fmt in REPLICA_COLUMNS),
                          "-" if not isinstance(att, SupportsFloat) else f"{100 * float(att):.1f}%")
        tables.append(table)
    return tables


def load_lines(metrics: dict) -> list[str]:
    """The offered load and, per saturated strategy, when it fell behind."""
    trace = metrics.get("trace", {})
    rate = trace.get("rate_per_s")
    duration = trace.get("duration_s") or 0.0
    span = f"{duration:,.1f}" if duration < 1e12 else f"{duration:.3g}"
    lines = [f"offered load: {trace.get('requests', 0):,} requests over {span} s"
             + ("" if rate is None else f" = {rate:.3g} req/s")]
    for name, m in metrics["strategies"].items():
        load = m.get("load") or {}
        if load.get("saturated"):
            served = load.get("served_rate_per_s")
            lines.append(
                f"SATURATED: {name} fell behind at {load['behind_since_s']:.1f} s: its queue "
                f"never emptied again and held {load['queued_at_last_arrival']:,} waiting "
                "requests at the last arrival"
                + ("" if served is None else f"; it served {served:.3f} req/s"))
    return lines


def capacity_line(metrics: dict) -> str:
    """The KV cache every strategy shares: GiB, blocks and tokens per GPU."""
    cap, cfg = metrics.get("capacity", {}), metrics.get("config", {})
    gib, blocks = cap.get("kv_capacity_gib"), cap.get("gpu_blocks")
    tokens, size = cap.get("kv_tokens"), cap.get("block_size")
    if gib is None or blocks is None or tokens is None:
        return "KV capacity: not recorded"
    limit = cfg.get("max_model_len")
    tail = "" if limit is None else f"; max_model_len {limit:,} tokens per request"
    page = cap.get("page_bytes")
    if page is not None:  # several KV-cache groups share pages of the largest group's block
        kinds = ", ".join(f"{g['type']} x{g['layers']}" for g in cap.get("kv_groups", []))
        return (f"KV capacity: {gib:,.1f} GiB per GPU = {blocks:,} pages of {size} tokens "
                f"({page / 2**20:.2f} MiB) shared by the KV-cache groups {kinds}; "
                f"{tokens:,} tokens without groups" + tail)
    return (f"KV capacity: {gib:,.1f} GiB per GPU = {blocks:,} blocks of {size} tokens = "
            f"{tokens:,} tokens" + tail)


def cost_model_line(metrics: dict) -> str:
    """Which step-time model ran, from what, and why."""
    cm = metrics.get("cost_model") or {}
    if "kind" not in cm:
        return "cost model: not recorded"
    return f"cost model: {cm['kind']}, {cm.get('source', '')}: {cm.get('why', '')}"


def strategy_lines(metrics: dict) -> list[str]:
    """One line per strategy of the run saying what it does."""
    names = list(metrics["strategies"])
    width = max(map(len, names))
    return [f"  {n:<{width}}  {DESCRIPTIONS.get(n, '')}" for n in names]


def rejection_lines(metrics: dict) -> list[str]:
    """Rejected requests per strategy, by kind, with the limit each kind hit and the longest
    request of that kind (each request's exact reason is in requests_<strategy>.csv)."""
    by_strategy = {name: _kinds(m) for name, m in metrics["strategies"].items()}
    distinct = {json.dumps(r, sort_keys=True) for r in by_strategy.values()}
    if len(by_strategy) > 1 and len(distinct) == 1:  # the same requests, before any memory
        by_strategy = {"every strategy": next(iter(by_strategy.values()))}
    return [f"  {name}: {describe(kind, entry)}" for name, kinds in by_strategy.items()
            for kind, entry in kinds.items()]


def _kinds(strategy_metrics: dict) -> dict[str, dict]:
    """`requests.rejected_kinds`, or counts alone from an older metrics.json."""
    kinds = get_path(strategy_metrics, ("requests", "rejected_kinds"))
    if isinstance(kinds, dict):
        return kinds
    counts = get_path(strategy_metrics, ("requests", "rejected_reasons")) or {}
    if not isinstance(counts, dict):
        raise ValueError(f"requests.rejected_reasons: expected an object, got "
                         f"{type(counts).__name__}")
    return {reason: {"count": count} for reason, count in counts.items()}


def prefix_line(metrics: dict) -> str | None:
    """The prefix-cache hit rate of each strategy that had a prefix cache, or None."""
    if not get_path(metrics, ("config", "prefix_caching")):
        return None
    rates, without = [], []
    for name, m in metrics["strategies"].items():
        hit = get_path(m, ("prefix_cache", "hit_rate"))
        if not isinstance(hit, SupportsFloat):  # None: no prefix cache
            without.append(name)
        else:
            rates.append(f"{name} {100 * float(hit):.1f}% of queried prompt blocks")
    line = "prefix-cache hit rate: " + (", ".join(rates) or "none")
    if without:
        line += (f"; {', '.join(without)}: no prefix cache (one contiguous region per "
                 "sequence cannot share blocks)")
    return line


def files_lines(metrics: dict, run_dir: Path, report: Path | None) -> list[str]:
    """The files the run wrote, and the next command to run."""
    names = list(metrics["strategies"])
    kinds = ", ".join(f"{kind}_{{{','.join(names)}}}.csv" if len(names) > 1
                      else f"{kind}_{names[0]}.csv" for kind in ("requests", "memory", "events"))
    if (metrics.get("cluster") or {}).get("replicas", 1) > 1:
        kinds += ", " + ", ".join(f"{kind}_{n}.csv" for kind in ("replicas", "load")
                                  for n in names)
    lines = [f"run directory: {run_dir} (metrics.json, {kinds})"]
    if report is not None:
        lines.append(f"report: {report} (self-contained HTML: open it in a browser)")
    else:
        lines.append(f"next: kvpager report {run_dir} -o report.html   (memory over time, "
                     "waste, queues, latency CDFs)")
    return lines


def print_caveats(console: Console, metrics: dict) -> None:
    """Each caveat of the run (`kvpager.sim.caveats`) as a bold WARNING line."""
    for caveat in metrics.get("caveats") or ():
        console.print(Text(f"WARNING: {caveat['message']}", style="bold red"))


def run_summary(metrics: dict, run_dir: Path, report: Path | None) -> list[str]:
    """Everything printed under the table, in reading order."""
    lines = load_lines(metrics) + [capacity_line(metrics), cost_model_line(metrics)]
    prefix = prefix_line(metrics)
    if prefix is not None:
        lines.append(prefix)
    lines += ["strategies:", *strategy_lines(metrics)]
    rejected = rejection_lines(metrics)
    if rejected:
        lines += ["rejected requests (reason, per strategy; each one in requests_*.csv):",
                  *rejected]
    return lines + files_lines(metrics, run_dir, report)
