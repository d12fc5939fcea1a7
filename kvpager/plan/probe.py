"""One probe of a plan: a full simulation of a trace on a fleet, reduced to what the plan
needs (SLO attainment and the figures that explain it). A module-level function, so that
local worker processes and Ray can run it."""

from __future__ import annotations

from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.config import PAGED, SimConfig
from kvpager.sim.summary import get_path
from kvpager.sim.traces import Trace


def probe(trace: Trace, config: SimConfig, cluster: ClusterConfig) -> dict:
    """Simulate `trace` on `cluster` (the paged strategy, `config`'s deployment per
    replica); return {"replicas", "router", "attainment", "goodput_requests_per_s",
    "ttft_s" {p50, p90, p99}, "tpot_s" {p50, p90, p99}, "hit_rate", "imbalance",
    "saturated", "finished", "rejected", "wall_s"}. `cluster` must set an SLO bound."""
    from kvpager.sim.run import simulate

    if cluster.slo_ttft_s is None and cluster.slo_tpot_s is None:
        raise ValueError("a probe needs an SLO: set slo_ttft_s and/or slo_tpot_s")
    m = simulate(trace, config, [PAGED], tier_baseline=False, cluster=cluster)
    s = m["strategies"][PAGED]
    return {
        "replicas": cluster.replicas, "router": cluster.router,
        "attainment": get_path(s, ("slo", "attainment")),
        "goodput_requests_per_s": get_path(s, ("slo", "goodput_requests_per_s")),
        "ttft_s": {q: get_path(s, ("latency_s", "ttft", q)) for q in ("p50", "p90", "p99")},
        "tpot_s": {q: get_path(s, ("latency_s", "tpot", q)) for q in ("p50", "p90", "p99")},
        "hit_rate": get_path(s, ("prefix_cache", "hit_rate")),
        "imbalance": get_path(s, ("cluster", "imbalance", "max_over_mean")),
        "saturated": bool(get_path(s, ("load", "saturated"))),
        "finished": get_path(s, ("requests", "finished")),
        "rejected": get_path(s, ("requests", "rejected")),
        "wall_s": get_path(s, ("time", "wall_s")),
    }
