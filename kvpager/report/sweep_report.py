"""The HTML report of a sweep: latency against request rate per strategy (the vLLM paper's
Figure 12 view), the rate each strategy sustains under the bound, throughput and batch.

    from kvpager.report import write_sweep_report
    write_sweep_report("runs/sweep", "sweep.html")   # the directory holding sweep.json
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from kvpager.report.page import Section, render_page, table_html
from kvpager.report.run_report import check_output
from kvpager.report.style import FONT, TEMPLATE, plot_text, strategy_colors
from kvpager.report.tables import get_path, key_value_html


def _series(doc: dict, strategy: str) -> list[dict]:
    return sorted((p for p in doc["points"] if p["strategy"] == strategy),
                  key=lambda p: p["value"])


def _strategies(doc: dict) -> list[str]:
    names: list[str] = []
    for p in doc["points"]:
        if p["strategy"] not in names:
            names.append(str(p["strategy"]))
    return names


def _x(p: dict) -> float:
    """The x of a point: its request rate, or the swept value when no rate is known."""
    rate = p.get("rate_per_s")
    return float(rate) if isinstance(rate, (int, float)) else float(p["value"])


def latency_vs_rate_figure(doc: dict):
    """The chosen latency metric against request rate, one line per strategy, with the
    bound; filled markers meet it, open ones miss it."""
    import plotly.graph_objects as go

    from kvpager.sweep.analysis import meets, metric_value
    from kvpager.sweep.spec import metric_label

    spec = doc["spec"]
    metric, bound = spec["metric"], float(spec["latency_bound"])
    names = _strategies(doc)
    colors = strategy_colors(names)
    fig = go.Figure()
    top = bound
    for name in names:
        pts = _series(doc, name)
        xs = [_x(p) for p in pts]
        ys = [metric_value(p["metrics"], metric) for p in pts]
        ok = [meets(y, bound) for y in ys]
        top = max([top, *(y for y in ys if y is not None)])
        fig.add_trace(go.Scatter(
            x=xs, y=ys, name=plot_text(name), mode="lines+markers",
            line={"color": colors[name], "width": 2},
            marker={"size": 9, "color": [colors[name] if o else "white" for o in ok],
                    "line": {"color": colors[name], "width": 2}},
            hovertemplate=plot_text(name) + " %{x:.3g} req/s: %{y:.4g}<extra></extra>"))
    fig.add_hline(y=bound, line={"dash": "dash", "color": "#444", "width": 1},
                  annotation_text=plot_text(f"bound {bound:g}"),
                  annotation_position="top left")
    linear_top = min(top * 1.05, 4 * bound)
    fig.update_layout(
        template=TEMPLATE, font=FONT, height=520,
        title={"text": plot_text(f"{metric_label(metric)} vs request rate"), "x": 0.0},
        margin={"l": 70, "r": 30, "t": 90, "b": 60},
        xaxis={"title": {"text": "request rate (req/s)"}},
        yaxis={"title": {"text": plot_text(metric_label(metric))},
               "range": [0, linear_top]},
        updatemenus=[{"type": "buttons", "direction": "left", "x": 1.0, "xanchor": "right",
                      "y": 1.02, "yanchor": "bottom", "buttons": [
                          {"label": "linear (clipped)", "method": "relayout",
                           "args": [{"yaxis.type": "linear",
                                     "yaxis.range": [0, linear_top]}]},
                          {"label": "log", "method": "relayout",
                           "args": [{"yaxis.type": "log", "yaxis.autorange": True}]}]}],
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0.0})
    return fig


def throughput_figure(doc: dict):
    """Finished requests per second and mean batch against the offered rate."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = _strategies(doc)
    colors = strategy_colors(names)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["throughput (finished req/s)",
                                        "mean running batch (sequences)"])
    for name in names:
        pts = _series(doc, name)
        xs = [_x(p) for p in pts]
        for col, path in ((1, ("throughput", "requests_per_s")),
                          (2, ("batch", "mean_running"))):
            ys = [get_path(p["metrics"], path) for p in pts]
            fig.add_trace(go.Scatter(
                x=xs, y=ys, name=plot_text(name), legendgroup=name, showlegend=col == 1,
                mode="lines+markers", line={"color": colors[name], "width": 2},
                hovertemplate=plot_text(name) + " %{x:.3g} req/s: %{y:.4g}<extra></extra>"),
                row=1, col=col)
    fig.update_xaxes(title_text="offered request rate (req/s)")
    fig.update_layout(template=TEMPLATE, font=FONT, height=420,
                      title={"text": "Throughput and batch vs request rate", "x": 0.0},
                      margin={"l": 70, "r": 30, "t": 90, "b": 60},
                      legend={"orientation": "h", "y": 1.1, "yanchor": "bottom", "x": 1.0,
                              "xanchor": "right"})
    return fig


def _fmt(v: object, fmt: str) -> str:
    return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else format(v, fmt)


def sustained_html(doc: dict) -> str:
    from kvpager.sweep.spec import metric_label

    spec = doc["spec"]
    rows = []
    for name in _strategies(doc):
        s = doc["sustained"].get(name, {})
        rows.append([name, _fmt(s.get("rate_per_s"), ".3g"), _fmt(s.get("value"), "g"),
                     _fmt(s.get("latency"), ".4g"), _fmt(s.get("first_miss_rate_per_s"),
                                                         ".3g")])
    axis = "rate (req/s)" if spec.get("axis") == "rate" else "rate scale"
    return table_html(["strategy", "sustained request rate (req/s)", f"at {axis}",
                       f"{metric_label(spec['metric'])} there",
                       "first rate over the bound (req/s)"], rows, numeric={1, 2, 3, 4})


def points_html(doc: dict) -> str:
    from kvpager.sweep.analysis import metric_value

    metric = doc["spec"]["metric"]
    rows = []
    for name in _strategies(doc):
        for p in _series(doc, name):
            m = p["metrics"]
            rows.append([name, _fmt(p["value"], "g"), _fmt(p.get("rate_per_s"), ".3g"),
                         _fmt(p.get("measured_rate_per_s"), ".3g"),
                         _fmt(metric_value(m, metric), ".4g"),
                         _fmt(get_path(m, ("throughput", "requests_per_s")), ".3f"),
                         _fmt(get_path(m, ("requests", "finished")), "d"),
                         _fmt(get_path(m, ("requests", "rejected")), "d"),
                         _fmt(get_path(m, ("preemptions", "swap")), "d"),
                         _fmt(get_path(m, ("preemptions", "recompute")), "d")])
    return table_html(["strategy", "swept value", "rate (req/s)", "measured rate",
                       metric, "throughput (req/s)", "finished", "rejected",
                       "swap preemptions", "recompute preemptions"], rows,
                      numeric=set(range(1, 10)))


def render_sweep_report(doc: dict) -> str:
    from kvpager import __version__
    from kvpager.sweep.spec import metric_label

    spec = doc["spec"]
    bound = spec["latency_bound"]
    trace = doc.get("trace", {}) if isinstance(doc.get("trace"), dict) else {}
    cfg = doc.get("config", {}) if isinstance(doc.get("config"), dict) else {}
    values = ", ".join(format(v, "g") for v in spec.get("values", []))
    subtitle = [
        f"{Path(str(trace.get('source', spec.get('trace', '')))).name}: "
        f"{trace.get('requests', '?')} requests, "
        + (f"generated arrivals at {values} req/s" if spec.get("axis") == "rate"
           else f"own arrivals scaled by {values}"),
        f"{cfg.get('model', '?')} on {cfg.get('tp', 1)} x {cfg.get('gpu', '?')}; "
        f"bound: {metric_label(spec['metric'])} <= {bound:g}",
    ]
    sections = [
        Section("sustained", "Sustained request rate",
                f"The highest swept rate at which {metric_label(spec['metric'])} stays at "
                f"or under {bound:g}, with every lower swept rate also under it.",
                body_html=sustained_html(doc)),
        Section("latency", "Latency vs request rate",
                "Filled markers meet the bound, open ones miss it. The linear view is "
                "clipped at 4x the bound (past the knee queues grow without limit); switch "
                "to log to see every point.", figure=latency_vs_rate_figure(doc)),
        Section("throughput", "Throughput and batch",
                "Where throughput stops following the offered rate, the strategy is "
                "saturated.", figure=throughput_figure(doc)),
        Section("points", "Every point", body_html=points_html(doc)),
        Section("config", "Configuration",
                body_html="<h3>sweep</h3>" + key_value_html(spec)
                + "<h3>simulation</h3>" + key_value_html(cfg)
                + "<h3>capacity</h3>" + key_value_html(doc.get("capacity") or {})
                + "<h3>executor</h3>" + key_value_html(doc.get("executor") or {})),
    ]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return render_page("kvpager sweep report", subtitle, sections,
                       footer=f"kvpager {__version__}, generated {stamp}")


def write_sweep_report(sweep: str | Path | dict, out: str | Path) -> Path:
    """Write the HTML report of a sweep (a sweep document, `sweep.json` or its directory)."""
    from kvpager.sweep.results import read_sweep

    path = check_output(out)
    doc = sweep if isinstance(sweep, dict) else read_sweep(sweep)
    from kvpager.sweep.spec import TIER_AXIS

    if doc["spec"].get("axis") == TIER_AXIS:
        from kvpager.report.tier_sweep_report import render_tier_sweep_report

        text = render_tier_sweep_report(doc)
    else:
        text = render_sweep_report(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
