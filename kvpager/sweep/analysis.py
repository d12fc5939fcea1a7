"""From sweep points to answers: a latency per point, and the rate each strategy sustains.

"Sustains" follows the vLLM paper's reading of its Figure 12: the highest request rate at
which the latency stays under a bound. A strategy is credited with a rate only if every
rate it was run at up to that one also met the bound, so a lucky point past the knee of the
curve (latency explodes once the queue grows without limit) cannot count. Rates between
the points are not interpolated: past the knee latency is not linear in the rate, and a
planner should rerun with finer `--rates` around the knee instead.
"""

from __future__ import annotations

import math

from kvpager.sweep.spec import metric_path


def metric_value(strategy_metrics: dict, metric: str) -> float | None:
    """The latency `metric` ("normalized-mean", "ttft-p99", ...) of one strategy's metrics,
    None when no request finished."""
    value: object = strategy_metrics
    for key in metric_path(metric):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def meets(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


def sustained(points: list[dict], strategies: list[str] | tuple[str, ...], metric: str,
              bound: float) -> dict[str, dict]:
    """Per strategy: the highest sustained point, or None values when even the lowest rate
    misses. A point is sustained when its metric meets the bound and the strategy kept up
    (not SATURATED: a queue that never empties again has no steady-state latency, whatever
    the figure of the requests that finished says).

    points: dicts with "strategy", "value" (the swept number), "rate_per_s" and "metrics"
    (that strategy's metrics at that rate).
    Returns {strategy: {"value", "rate_per_s", "latency", "first_miss_rate_per_s",
    "first_miss_reason" ("over the bound", "saturated" or None), "top_tested" (True when
    the highest rate tested was sustained: the sustained rate is then a lower bound)}}.
    """
    out: dict[str, dict] = {}
    for name in strategies:
        mine = sorted((p for p in points if p["strategy"] == name), key=lambda p: p["value"])
        best, miss = None, None
        reason = None
        for p in mine:
            saturated = bool((p["metrics"].get("load") or {}).get("saturated"))
            if meets(metric_value(p["metrics"], metric), bound) and not saturated:
                best = p
            else:
                miss = p
                reason = "saturated" if saturated else "over the bound"
                break
        out[name] = {
            "value": None if best is None else best["value"],
            "rate_per_s": None if best is None else best["rate_per_s"],
            "latency": None if best is None else metric_value(best["metrics"], metric),
            "first_miss_rate_per_s": None if miss is None else miss["rate_per_s"],
            "first_miss_reason": reason,
            "top_tested": best is not None and miss is None,
        }
    return out
