"""The CPU prefix tier in a run report: hit rate by tier over time, and what the tier saved.

Drawn from the run directory only: the sampled per-tier hit rates of `memory_<strategy>.csv`
and the `prefix_tier` section of each strategy's metrics (`kvpager.sim.tier.tier_metrics`),
whose `gpu_only` / `ttft_saved_s` come from the GPU-only run that `simulate` makes beside a
tiered one.
"""

from __future__ import annotations

import plotly.graph_objects as go

from kvpager.report.downsample import bucket_mean
from kvpager.report.page import Section, table_html
from kvpager.report.rundata import RunData
from kvpager.report.style import FONT, TEMPLATE, plot_text

GPU_COLOR, CPU_COLOR = "#1f77b4", "#ff7f0e"


def tiered_strategies(run: RunData) -> list[str]:
    """Strategies whose run had a CPU prefix tier (a nonzero size in `prefix_tier`)."""
    out = []
    for name in run.strategies:
        section = run.metrics["strategies"][name].get("prefix_tier")
        if isinstance(section, dict) and section.get("size_gib") not in (0, None):
            out.append(name)
    return out


def tier_hit_figure(run: RunData, names: list[str], max_points: int = 1000) -> go.Figure:
    """Cumulative hit rate split by tier over time (stacked: GPU below, CPU tier above, so the
    top edge is the total hit rate), per tiered strategy."""
    fig = go.Figure()
    for name in names:
        mem = run.memory[name]
        if mem.tier_hit_rates is None or mem.time_s.size == 0:
            continue
        t, rates = bucket_mean(mem.time_s, mem.tier_hit_rates, max_points)
        for j, (tier, color) in enumerate((("GPU", GPU_COLOR), ("CPU tier", CPU_COLOR))):
            label = plot_text(f"{name}: {tier}")
            fig.add_trace(go.Scatter(
                x=t, y=rates[:, j], name=label, mode="lines", stackgroup=name,
                line={"color": color, "width": 1.5},
                hovertemplate=label + " %{y:.1%} at %{x:.0f} s<extra></extra>"))
    fig.update_yaxes(range=[0, 1.0], tickformat=".0%", title_text="hit rate (blocks)")
    fig.update_xaxes(title_text="simulated time (s)")
    fig.update_layout(template=TEMPLATE, font=FONT, height=400,
                      title={"text": "Prefix hits by tier over time (cumulative, stacked)",
                             "x": 0.0, "xanchor": "left"},
                      margin={"l": 70, "r": 30, "t": 90, "b": 50})
    return fig


def _pct(v: object) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"


def _sec(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def saved_html(run: RunData, names: list[str]) -> str:
    """Per tiered strategy: hit rate and TTFT with the tier and without it (the GPU-only
    run), and the difference; bytes moved over the host link."""
    rows = []
    for name in names:
        m = run.metrics["strategies"][name]
        section = m["prefix_tier"]
        base = section.get("gpu_only") or {}
        saved = section.get("ttft_saved_s") or {}
        ttft = (m.get("latency_s") or {}).get("ttft") or {}
        base_ttft = base.get("ttft_s") or {}
        rows.append([name, "hit rate", _pct(base.get("hit_rate")), _pct(section.get("hit_rate")),
                     "-"])
        for stat in ("mean", "p50", "p99"):
            rows.append([name, f"TTFT {stat} (s)", _sec(base_ttft.get(stat)),
                         _sec(ttft.get(stat)), _sec(saved.get(stat))])
        gib = 1 << 30
        rows.append([name, "GiB offloaded / loaded", "-",
                     f"{section.get('offloaded_bytes', 0) / gib:.1f} / "
                     f"{section.get('loaded_bytes', 0) / gib:.1f}", "-"])
    note = "" if any(run.metrics["strategies"][n]["prefix_tier"].get("gpu_only")
                      for n in names) else (
        "<p>This run has no GPU-only baseline (simulated with --no-tier-baseline); "
        "<code>kvpager sweep --cpu-prefix-cache 0,...</code> compares tier sizes.</p>")
    return note + table_html(["strategy", "metric", "GPU only", "with the CPU tier",
                              "saved by the tier"], rows, numeric={2, 3, 4})


def tier_section(run: RunData, max_points: int = 1000) -> Section | None:
    """The report section of the CPU prefix tier, or None when no strategy had one."""
    names = tiered_strategies(run)
    if not names:
        return None
    return Section(
        "tier", "CPU prefix tier",
        "Prompt blocks served from the GPU cache and loaded back from the CPU tier, as "
        "shares of looked-up blocks so far; below, TTFT with the tier against the same "
        "deployment without it (positive saved = faster with the tier).",
        figure=tier_hit_figure(run, names, max_points), body_html=saved_html(run, names))
