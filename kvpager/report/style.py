"""Colours, labels and text escaping shared by every figure.

A strategy keeps its colour in every figure of a report (and of a sweep report), so a
reader matches lines across figures without reading legends.
"""

from __future__ import annotations

KNOWN_STRATEGY_COLORS = {
    "paged": "#1f77b4",
    "orca-oracle": "#2ca02c",
    "orca-pow2": "#ff7f0e",
    "orca-max": "#d62728",
    "static": "#9467bd",
}
_FALLBACK = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

# The vLLM paper's Figure 2 categories, in stacking order (bottom first).
MEMORY_LABELS = {
    "token": "token states",
    "reserved": "reserved",
    "internal": "internal fragmentation",
    "external": "external fragmentation",
    "cached": "prefix-cached (evictable)",
    "free": "free",
}
MEMORY_COLORS = {
    "token": "#4c9a2a",
    "reserved": "#f2b701",
    "internal": "#e4572e",
    "external": "#7b4b94",
    "cached": "#6fa8dc",
    "free": "#d9d9d9",
}
EVENT_SYMBOLS = {
    "preempt-swap": "x",
    "preempt-recompute": "diamond",
    "swap-out": "triangle-down",
    "swap-in": "triangle-up",
    "kv-send": "circle-open",
    "kv-receive": "circle",
}

TEMPLATE = "plotly_white"
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13}


def strategy_colors(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """A colour per strategy name: fixed for the known strategies, then a fallback cycle."""
    out: dict[str, str] = {}
    spare = 0
    for name in names:
        if name in KNOWN_STRATEGY_COLORS:
            out[name] = KNOWN_STRATEGY_COLORS[name]
        else:
            out[name] = _FALLBACK[spare % len(_FALLBACK)]
            spare += 1
    return out


def plot_text(value: object) -> str:
    """Text safe to hand to Plotly (trace names, titles, hover text).

    Plotly renders a small HTML subset inside SVG text (<b>, <a href>, <br>) and decodes
    &lt; &gt; &amp; back to characters, so escaping exactly these three shows any string
    literally and never as markup. Quotes are left alone: Plotly does not decode &quot;.
    """
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
