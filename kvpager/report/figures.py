"""Plotly figures of one simulation run (a `RunData`), one function per view.

Each function returns a `plotly.graph_objects.Figure` with every string from the run passed
through `plot_text`; the HTML writer embeds them. Time series are thinned by
`kvpager.report.downsample` to `max_points` per strategy and series.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvpager.report.downsample import bin_events, bucket_max, bucket_mean, cdf_points
from kvpager.report.rundata import MEMORY_FIELDS, RunData
from kvpager.report.style import (
    EVENT_SYMBOLS,
    FONT,
    MEMORY_COLORS,
    MEMORY_LABELS,
    TEMPLATE,
    plot_text,
    strategy_colors,
)


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(template=TEMPLATE, font=FONT, height=height,
                      title={"text": plot_text(title), "x": 0.0, "xanchor": "left"},
                      margin={"l": 70, "r": 30, "t": 110, "b": 50},
                      legend={"orientation": "h", "y": 1.0 + 34 / max(height - 140, 100),
                              "yanchor": "bottom",
                              "x": 1.0, "xanchor": "right"})
    return fig


def _empty_note(fig: go.Figure, text: str, row: int = 1) -> None:
    """A grey note in the middle of subplot `row` (or of a single-plot figure).

    Placed in paper coordinates from the subplot's axis domains: a note referenced to an
    empty categorical subplot's own axes is drawn in the wrong place by plotly.js.
    """
    axis = "" if row == 1 else str(row)
    xd = fig.layout[f"xaxis{axis}"].domain or (0.0, 1.0)
    yd = fig.layout[f"yaxis{axis}"].domain or (0.0, 1.0)
    fig.add_annotation(text=plot_text(text), showarrow=False, xref="paper", yref="paper",
                       x=(xd[0] + xd[1]) / 2, y=(yd[0] + yd[1]) / 2, font={"color": "#777"})


def memory_figure(run: RunData, max_points: int = 1000) -> go.Figure:
    """KV memory over time per strategy: stacked shares of capacity (the five kinds)."""
    names = run.strategies
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True,
                        vertical_spacing=min(0.08, 0.3 / max(len(names), 1)),
                        subplot_titles=[plot_text(n) for n in names])
    for i, name in enumerate(names, start=1):
        mem = run.memory[name]
        if mem.time_s.size == 0:
            _empty_note(fig, f"{name}: no memory samples", row=i)
            continue
        t, frac = bucket_mean(mem.time_s, mem.fractions, max_points)
        for k, kind in enumerate(MEMORY_FIELDS):
            fig.add_trace(go.Scatter(
                x=t, y=100.0 * frac[:, k], name=MEMORY_LABELS[kind], legendgroup=kind,
                showlegend=i == 1, stackgroup=f"s{i}", mode="lines",
                line={"width": 0.5, "color": MEMORY_COLORS[kind], "shape": "hv"},
                fillcolor=MEMORY_COLORS[kind],
                hovertemplate=plot_text(f"{name}: {MEMORY_LABELS[kind]}")
                + " %{y:.1f}%<extra></extra>"), row=i, col=1)
        fig.update_yaxes(range=[0, 100], ticksuffix="%", row=i, col=1)
    fig.update_xaxes(title_text="simulated time (s)", row=len(names), col=1)
    return _layout(fig, "KV cache memory over time (share of GPU KV capacity)",
                   120 + 200 * len(names))


def waste_figure(run: RunData) -> go.Figure:
    """Time-averaged memory by kind, one stacked bar per strategy (the vLLM paper's
    Figure 2 view: how much of the KV cache holds token states)."""
    names = list(run.strategies)
    fig = go.Figure()
    for kind in MEMORY_FIELDS:
        values = [100.0 * float(run.metrics["strategies"][n].get("memory", {}).get(kind)
                                or 0.0) for n in names]
        fig.add_trace(go.Bar(
            x=[plot_text(n) for n in names], y=values, name=MEMORY_LABELS[kind],
            marker_color=MEMORY_COLORS[kind],
            text=[f"{v:.1f}%" if v >= 3 else "" for v in values], textposition="inside",
            hovertemplate="%{x}: " + MEMORY_LABELS[kind] + " %{y:.2f}%<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(range=[0, 100], ticksuffix="%", title_text="share of KV capacity")
    return _layout(fig, "Where the KV cache goes (time-averaged)", 460)


def batch_figure(run: RunData, max_points: int = 1000) -> go.Figure:
    """Running batch, waiting queue and swapped groups over time per strategy, with
    preemptions and swaps as events on their own row."""
    names = run.strategies
    colors = strategy_colors(names)
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[0.3, 0.3, 0.2, 0.2],
                        subplot_titles=["running sequences", "waiting requests (queue)",
                                        "swapped-out groups", "preemption and swap events"])
    for name in names:
        mem = run.memory[name]
        if mem.time_s.size == 0:
            continue
        t, q = bucket_max(mem.time_s, np.stack([mem.running, mem.waiting, mem.swapped], 1),
                          max_points)
        for row in range(3):
            fig.add_trace(go.Scatter(
                x=t, y=q[:, row], name=plot_text(name), legendgroup=name, showlegend=row == 0,
                mode="lines", line={"color": colors[name], "width": 1.5, "shape": "hv"},
                hovertemplate=plot_text(name) + " %{y:.0f}<extra></extra>"),
                row=row + 1, col=1)
    any_event = False
    for name in names:
        ev = run.events[name]
        if ev.time_s.size == 0:
            continue
        any_event = True
        t, kind, count, merged = bin_events(ev.time_s, ev.kind, ev.count, max_points)
        for k in EVENT_SYMBOLS:
            sel = kind == k
            if not sel.any():
                continue
            fig.add_trace(go.Scatter(
                x=t[sel], y=[plot_text(name)] * int(sel.sum()), mode="markers",
                name=k, legendgroup=f"event-{k}", showlegend=False,
                marker={"symbol": EVENT_SYMBOLS[k], "color": colors[name],
                        "size": np.clip(6 + 3 * np.log2(count[sel] + 1), 6, 20)},
                customdata=np.stack([count[sel], merged[sel]], axis=1),
                hovertemplate=plot_text(f"{name}: {k}")
                + " x%{customdata[0]:.0f} (%{customdata[1]} event(s)) at %{x:.1f} s"
                  "<extra></extra>"), row=4, col=1)
    for k in EVENT_SYMBOLS:  # one neutral legend entry per event kind shown
        if any((run.events[n].kind == k).any() for n in names):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=k,
                                     legendgroup=f"event-{k}",
                                     marker={"symbol": EVENT_SYMBOLS[k], "color": "#555",
                                             "size": 9}), row=4, col=1)
    if not any_event:
        exact = all(run.events[n].exact for n in names)
        _empty_note(fig, "no preemptions or swaps" if exact else
                    "no swaps (recompute preemptions are not time-stamped: see the summary)",
                    row=4)
    fig.update_yaxes(type="category", row=4, col=1, showticklabels=any_event,
                     showgrid=any_event)
    fig.update_xaxes(title_text="simulated time (s)", row=4, col=1)
    return _layout(fig, "Batch, queues and preemptions over time", 820)


def events_note(run: RunData) -> str:
    """What the events row can and cannot show for this run (plain text, for the intro)."""
    if all(ev.exact for ev in run.events.values()):
        return "Events are time-stamped by the simulator."
    recompute = sum(int(run.metrics["strategies"][n].get("preemptions", {})
                        .get("recompute", 0) or 0) for n in run.strategies)
    return ("Swap events are changes of the sampled swapped-out queue between samples (a "
            "lower bound at sample resolution); recompute preemptions are not time-stamped "
            f"in this run directory (total {recompute}, see the summary).")


def latency_figure(run: RunData, max_points: int = 800) -> go.Figure:
    """CDFs of TTFT, TPOT and normalized latency per strategy (finished requests)."""
    names = run.strategies
    colors = strategy_colors(names)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07,
                        subplot_titles=["time to first token (s)", "time per output token (s)",
                                        "normalized latency (s / token)"])
    for name in names:
        req = run.requests[name]
        series = (req.ttft_s[req.finished], req.tpot(), req.normalized_latency())
        for col, values in enumerate(series, start=1):
            x, y = cdf_points(values, max_points)
            if x.size == 0:
                continue
            fig.add_trace(go.Scatter(
                x=x, y=y, name=plot_text(name), legendgroup=name, showlegend=col == 1,
                mode="lines", line={"color": colors[name], "width": 2, "shape": "hv"},
                hovertemplate=plot_text(name) + " %{x:.4g} s: %{y:.1%}<extra></extra>"),
                row=1, col=col)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="requests", col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", col=2)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", col=3)
    fig.update_xaxes(type="log", col=1)
    fig.update_xaxes(type="log", col=3)
    return _layout(fig, "Latency distributions (finished requests)", 440)


def prefix_figure(run: RunData, max_points: int = 1000) -> go.Figure:
    """Cumulative prefix-cache hit rate over time, per strategy that has a prefix cache."""
    names = [n for n in run.strategies
             if run.memory[n].prefix_hit_rate.size
             and (n == "paged" or float(np.nanmax(run.memory[n].prefix_hit_rate)) > 0)]
    colors = strategy_colors(run.strategies)
    fig = go.Figure()
    for name in names:
        mem = run.memory[name]
        t, rate = bucket_mean(mem.time_s, mem.prefix_hit_rate[:, None], max_points)
        fig.add_trace(go.Scatter(
            x=t, y=rate[:, 0], name=plot_text(name), mode="lines",
            line={"color": colors[name], "width": 2},
            hovertemplate=plot_text(name) + " %{y:.1%} at %{x:.0f} s<extra></extra>"))
    if not names:
        _empty_note(fig, "no strategy recorded prefix-cache lookups")
    fig.update_yaxes(range=[0, 1.0], tickformat=".0%", title_text="hit rate (blocks)")
    fig.update_xaxes(title_text="simulated time (s)")
    return _layout(fig, "Prefix-cache hit rate over time (cumulative)", 400)
