"""The HTML report of a tier-size sweep (`kvpager sweep --cpu-prefix-cache 0,64,...`): hit
rate by tier, TTFT p50 / p99 and throughput against the CPU prefix tier's size.

Tier sizes are categories on the x axis, in increasing order, so that "unlimited" takes its
place after the largest finite size and the 0 (GPU-only) point sits first.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from kvpager.report.page import Section, render_page, table_html
from kvpager.report.style import FONT, TEMPLATE, plot_text
from kvpager.report.tables import get_path, key_value_html

GPU_COLOR, CPU_COLOR, P50_COLOR, P99_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


def _points(doc: dict) -> list[dict]:
    from kvpager.sweep.spec import value_number

    return sorted(doc["points"], key=lambda p: value_number(p["value"]))


def _label(value: object) -> str:
    return value if isinstance(value, str) else f"{value:g} GiB"


def tier_figure(doc: dict):
    """Three panels against tier size: hit rate (stacked GPU / CPU tier), TTFT p50 and p99,
    throughput (finished requests per second)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pts = _points(doc)
    xs = [_label(p["value"]) for p in pts]
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=["prefix hit rate (blocks)", "TTFT (s)",
                                        "throughput (finished req/s)"])

    def line(path, name, color, col, stack=None, fmt=".4g"):
        ys = [get_path(p["metrics"], path) for p in pts]
        fig.add_trace(go.Scatter(x=xs, y=ys, name=plot_text(name), mode="lines+markers",
                                 stackgroup=stack, line={"color": color, "width": 2},
                                 hovertemplate=plot_text(name) + " %{x}: %{y:" + fmt
                                 + "}<extra></extra>"), row=1, col=col)

    line(("prefix_tier", "gpu_hit_rate"), "hits from GPU", GPU_COLOR, 1, "hits", ".1%")
    line(("prefix_tier", "cpu_hit_rate"), "hits from CPU tier", CPU_COLOR, 1, "hits", ".1%")
    line(("latency_s", "ttft", "p50"), "TTFT p50", P50_COLOR, 2)
    line(("latency_s", "ttft", "p99"), "TTFT p99", P99_COLOR, 2)
    line(("throughput", "requests_per_s"), "throughput", "#444", 3)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_yaxes(rangemode="tozero", row=1, col=3)
    fig.update_xaxes(type="category", title_text="CPU tier per GPU")
    fig.update_layout(template=TEMPLATE, font=FONT, height=440,
                      title={"text": "Hit rate, TTFT and throughput vs CPU prefix tier size",
                             "x": 0.0},
                      margin={"l": 70, "r": 30, "t": 100, "b": 60},
                      legend={"orientation": "h", "y": 1.12, "yanchor": "bottom", "x": 1.0,
                              "xanchor": "right"})
    return fig


def _cell(v: object, fmt: str) -> str:
    return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else format(v, fmt)


def tier_points_html(doc: dict) -> str:
    rows = []
    for p in _points(doc):
        m = p["metrics"]
        t = m.get("prefix_tier") or {}
        rows.append([_label(p["value"]), _cell(t.get("hit_rate"), ".1%"),
                     _cell(t.get("gpu_hit_rate"), ".1%"), _cell(t.get("cpu_hit_rate"), ".1%"),
                     _cell(get_path(m, ("latency_s", "ttft", "p50")), ".3f"),
                     _cell(get_path(m, ("latency_s", "ttft", "p99")), ".3f"),
                     _cell(get_path(m, ("throughput", "requests_per_s")), ".3f"),
                     _cell((t.get("loaded_bytes") or 0) / (1 << 30), ".1f")])
    return table_html(["CPU tier", "hit rate", "from GPU", "from CPU tier", "TTFT p50 (s)",
                       "TTFT p99 (s)", "req/s", "GiB loaded"], rows,
                      numeric=set(range(1, 8)))


def render_tier_sweep_report(doc: dict) -> str:
    from kvpager import __version__

    spec = doc["spec"]
    trace = doc.get("trace", {}) if isinstance(doc.get("trace"), dict) else {}
    cfg = doc.get("config", {}) if isinstance(doc.get("config"), dict) else {}
    load = (f"generated arrivals at {spec['rates'][0]:g} req/s" if spec.get("rates")
            else f"own arrivals scaled by {(spec.get('rate_scales') or [1])[0]:g}")
    subtitle = [
        f"{Path(str(trace.get('source', spec.get('trace', '')))).name}: "
        f"{trace.get('requests', '?')} requests, {load}",
        f"{cfg.get('model', '?')} on {cfg.get('tp', 1)} x {cfg.get('gpu', '?')}, "
        f"block size {cfg.get('block_size', '?')}",
    ]
    sections = [
        Section("tiers", "CPU prefix tier size",
                "Hits from the GPU cache and loaded from the CPU tier (their sum is the hit "
                "rate), time to first token, and throughput, per tier size per GPU; 0 is "
                "the GPU-only deployment.", figure=tier_figure(doc),
                body_html=tier_points_html(doc)),
        Section("config", "Configuration",
                body_html="<h3>sweep</h3>" + key_value_html(spec)
                + "<h3>simulation</h3>" + key_value_html(cfg)
                + "<h3>capacity</h3>" + key_value_html(doc.get("capacity") or {})
                + "<h3>executor</h3>" + key_value_html(doc.get("executor") or {})),
    ]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return render_page("kvpager tier-size sweep report", subtitle, sections,
                       footer=f"kvpager {__version__}, generated {stamp}")
