"""The replicas of a cluster run in its report: each replica's KV memory and queues over time,
the load imbalance over time, the hit rate by replica, and a row per replica.

Drawn from the run directory only: `replicas_<strategy>.csv` and `load_<strategy>.csv`
(`kvpager.sim.cluster.files`, written when a run has several replicas) and the per-replica
summaries of `metrics.json` (`strategies.<name>.cluster.replicas`).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvpager.report.downsample import bucket_max, bucket_mean
from kvpager.report.page import Section, table_html
from kvpager.report.rundata import MEMORY_FIELDS, ReplicaColumns, RunData
from kvpager.report.style import FONT, TEMPLATE, plot_text
from kvpager.sim.summary import get_path

# a qualitative cycle (Plotly's D3), one colour per replica, repeating past ten
REPLICA_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_IDLE = (MEMORY_FIELDS.index("free"), MEMORY_FIELDS.index("cached"))


def _color(r: int) -> str:
    return REPLICA_COLORS[r % len(REPLICA_COLORS)]


def replica_over_time_figure(name: str, data: ReplicaColumns, max_points: int = 1000
                             ) -> go.Figure:
    """Per replica: KV in use (neither free nor evictable prefix-cached), running sequences
    and waiting requests over time; and the cluster's load imbalance (max / mean in flight,
    sampled at each arrival)."""
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=["KV cache in use (share of capacity)",
                                        "running sequences", "waiting requests (queue)",
                                        "load imbalance: max / mean requests in flight"])
    per_line = max(10, max_points // max(1, len(data.memory)))
    for r, mem in enumerate(data.memory):
        if mem.time_s.size == 0:
            continue
        used = 1.0 - mem.fractions[:, list(_IDLE)].sum(axis=1)
        t, u = bucket_mean(mem.time_s, used[:, None], per_line)
        tq, q = bucket_max(mem.time_s, np.stack([mem.running, mem.waiting], 1), per_line)
        label = plot_text(f"replica {r}")
        style = {"color": _color(r), "width": 1.2, "shape": "hv"}
        fig.add_trace(go.Scatter(x=t, y=100.0 * u[:, 0], name=label, legendgroup=str(r),
                                 mode="lines", line=style,
                                 hovertemplate=label + " %{y:.1f}%<extra></extra>"),
                      row=1, col=1)
        for row, j in ((2, 0), (3, 1)):
            fig.add_trace(go.Scatter(x=tq, y=q[:, j], name=label, legendgroup=str(r),
                                     showlegend=False, mode="lines", line=style,
                                     hovertemplate=label + " %{y:.0f}<extra></extra>"),
                          row=row, col=1)
    if data.in_flight.shape[0] > 1:
        x = data.in_flight
        mean = x.mean(axis=1)
        busy = mean > 0
        ratio = np.where(busy, x.max(axis=1) / np.where(busy, mean, 1.0), np.nan)
        keep = np.isfinite(ratio)
        if keep.any():
            t, v = bucket_mean(data.load_time_s[keep], ratio[keep][:, None], max_points)
            fig.add_trace(go.Scatter(x=t, y=v[:, 0], name="max / mean", showlegend=False,
                                     mode="lines",
                                     line={"color": "#333", "width": 1.2, "shape": "hv"},
                                     hovertemplate="%{y:.2f}<extra></extra>"), row=4, col=1)
    fig.update_yaxes(range=[0, 100], ticksuffix="%", row=1, col=1)
    fig.update_xaxes(title_text="simulated time (s)", row=4, col=1)
    fig.update_layout(template=TEMPLATE, font=FONT, height=900,
                      title={"text": plot_text(f"{name}: replicas over time"), "x": 0.0,
                             "xanchor": "left"},
                      margin={"l": 70, "r": 30, "t": 110, "b": 50},
                      legend={"orientation": "h", "y": 1.06, "yanchor": "bottom", "x": 1.0,
                              "xanchor": "right"})
    return fig


def hit_rate_figure(run: RunData, names: list[str]) -> go.Figure:
    """The prefix-cache hit rate of each replica at the end of the run (bars), with the
    cluster's (a dashed line), per strategy."""
    fig = go.Figure()
    for name in names:
        m = run.metrics["strategies"][name]
        replicas = _replicas(m)
        rates = [get_path(r, ("prefix_cache", "hit_rate")) for r in replicas]
        arrived = [get_path(r, ("requests", "arrived")) for r in replicas]
        fig.add_trace(go.Bar(
            x=[f"replica {r['replica']}" for r in replicas],
            y=[0.0 if v is None else v for v in rates], name=plot_text(name),
            marker_color=[_color(i) for i in range(len(replicas))],
            customdata=arrived,
            hovertemplate="%{x}: %{y:.1%} of looked-up blocks (%{customdata} requests)"
                          "<extra></extra>"))
        total = get_path(m, ("prefix_cache", "hit_rate"))
        if isinstance(total, (int, float)):
            fig.add_hline(y=total, line_dash="dash", line_color="#333",
                          annotation_text=plot_text(f"{name}: cluster {100 * total:.1f}%"))
    fig.update_yaxes(tickformat=".0%", title_text="hit rate (blocks)", rangemode="tozero")
    fig.update_layout(template=TEMPLATE, font=FONT, height=420, showlegend=len(names) > 1,
                      title={"text": "Prefix-cache hit rate by replica", "x": 0.0,
                             "xanchor": "left"},
                      margin={"l": 70, "r": 30, "t": 90, "b": 50})
    return fig


def replica_table_html(run: RunData, name: str) -> str:
    m = run.metrics["strategies"][name]
    rows: list[list[object]] = []
    for r in [*_replicas(m), m]:
        att = get_path(r, ("slo", "attainment"))
        rows.append([str(r.get("replica", "cluster")),
                     _int(get_path(r, ("requests", "arrived"))),
                     _int(get_path(r, ("requests", "finished"))),
                     _sec(get_path(r, ("latency_s", "ttft", "p50"))),
                     _sec(get_path(r, ("latency_s", "ttft", "p99"))),
                     _sec(get_path(r, ("latency_s", "tpot", "p50"))),
                     _pct(get_path(r, ("prefix_cache", "hit_rate"))),
                     _pct(get_path(r, ("memory", "free"))), _pct(att)])
    return table_html(["replica", "arrived", "finished", "TTFT p50 (s)", "TTFT p99 (s)",
                       "TPOT p50 (s)", "hit rate", "KV free (avg)", "SLO attainment"], rows,
                      numeric=set(range(1, 9)))


def replica_sections(run: RunData, max_points: int = 1000) -> list[Section]:
    """The report's replica sections (none for a single-replica run)."""
    names = [n for n in run.strategies if n in run.replicas]
    if not names:
        return []
    cluster = run.metrics.get("cluster") or {}
    settings = ", ".join(f"{k} {v}" for k, v in (cluster.get("router_settings") or {}).items())
    imbalance = {n: get_path(run.metrics["strategies"][n],
                             ("cluster", "imbalance", "max_over_mean")) for n in names}
    intro = (f"{len(run.replicas[names[0]].memory)} replicas behind the router "
             f"{cluster.get('router', '?')}"
             + (f" ({settings})" if settings else "")
             + (f", signals {cluster['signal_delay_s']:g} s late"
                if cluster.get("signal_delay_s") else "")
             + ". Load imbalance (max / mean requests in flight, time-averaged): "
             + ", ".join(f"{n} {v:.2f}" for n, v in imbalance.items()
                         if isinstance(v, (int, float))) + ".")
    sections = [Section(f"replicas-{i}", f"Replicas: {name}", intro,
                        figure=replica_over_time_figure(name, run.replicas[name], max_points),
                        body_html=replica_table_html(run, name))
                for i, name in enumerate(names)]
    if run.prefix_caching:
        sections.append(Section("replica-hits", "Hit rate by replica",
                                "Share of each replica's looked-up prompt blocks found in "
                                "its prefix cache over the run.",
                                figure=hit_rate_figure(run, names)))
    return sections


def _replicas(strategy_metrics: dict) -> list[dict]:
    found = get_path(strategy_metrics, ("cluster", "replicas"))
    return [r for r in found if isinstance(r, dict)] if isinstance(found, list) else []


def _pct(v: object) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"


def _sec(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def _int(v: object) -> str:
    return f"{v:,}" if isinstance(v, int) else "-"
