"""KV memory by KV-cache group in a run report (hybrid models).

Drawn from each strategy's `kv_by_group` in metrics.json (`kvpager.sim.hybrid_manager`):
GiB each attention kind holds over simulated time, one stacked area per kind.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvpager.report.downsample import bucket_mean
from kvpager.report.page import Section
from kvpager.report.rundata import RunData
from kvpager.report.style import FONT, TEMPLATE, plot_text


def group_section(run: RunData, max_points: int = 1000) -> Section | None:
    """The section, or None when no strategy ran several KV-cache groups."""
    fig = go.Figure()
    drawn = False
    for name in run.strategies:
        groups = run.metrics["strategies"][name].get("kv_by_group")
        if not isinstance(groups, dict) or not groups.get("time"):
            continue
        t, gib = bucket_mean(np.asarray(groups["time"], dtype=np.float64),
                             np.asarray(groups["gib"], dtype=np.float64), max_points)
        for j, kind in enumerate(groups["groups"]):
            label = plot_text(f"{name}: {kind}")
            fig.add_trace(go.Scatter(x=t, y=gib[:, j], name=label, mode="lines",
                                     stackgroup=name,
                                     hovertemplate=label + " %{y:.2f} GiB at %{x:.0f} s"
                                     "<extra></extra>"))
            drawn = True
    if not drawn:
        return None
    fig.update_yaxes(title_text="GiB per GPU")
    fig.update_xaxes(title_text="simulated time (s)")
    fig.update_layout(template=TEMPLATE, font=FONT, height=380,
                      title="KV memory by KV-cache group over time")
    return Section("groups", "KV memory by group",
                   "Pages each attention kind holds (full, sliding window, chunked, MLA) "
                   "times the page size: a window group stays near its window while the "
                   "full-attention group grows with the context.", figure=fig)
