"""What a sweep runs: one trace at several request rates, through several cache strategies.

Two ways to set the load, as capacity planners ask two questions:
- `rates`: "at R requests per second?": every point re-times the trace's requests (in their
  order, lengths kept) with a generated arrival process of mean rate R, Poisson by default
  or Gamma with `arrival_cv` (the vLLM paper's method for its Figure 12);
- `rate_scales`: "if this exact traffic grew s-fold?": the trace's own arrival times
  divided by s, so its burstiness is kept.

A third question, "how much host memory buys how much?", sweeps the size of the CPU prefix
tier (`cpu_prefix_caches`, GiB per GPU, `math.inf` = unlimited) at one load: one rate, or
one rate scale (default: the trace's own arrivals). Its axis is "cpu_prefix_cache" and it
has no sustained rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from kvpager.sim.config import (
    DEFAULT_STRATEGIES,
    PAGED,
    UNLIMITED,
    SimConfig,
    check_strategies,
    tier_label,
)

TIER_AXIS = "cpu_prefix_cache"

LATENCY_KINDS = ("normalized", "ttft", "tpot", "e2e")
LATENCY_STATS = ("mean", "p50", "p90", "p99")
METRICS = tuple(f"{k}-{s}" for k in LATENCY_KINDS for s in LATENCY_STATS)
DEFAULT_METRIC = "normalized-mean"
# s/token: a few times the unloaded normalized latency of a 7B-13B model on one A100/H100
# (TPOT of 20-70 ms), so a point under it is not queueing without bound.
DEFAULT_NORMALIZED_BOUND = 0.2
METRIC_UNITS = {"normalized": "s/token", "ttft": "s", "tpot": "s/token", "e2e": "s"}
METRIC_LABELS = {"normalized": "normalized latency", "ttft": "time to first token",
                 "tpot": "time per output token", "e2e": "end-to-end latency"}


def parse_values(text: str, name: str) -> tuple[float, ...]:
    """"0.5,1,2" -> (0.5, 1.0, 2.0): positive finite numbers, sorted, without repeats.

    Raises ValueError naming `name` and the bad item.
    """
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise ValueError(f"{name}: expected comma-separated positive numbers, got {text!r}")
    values = []
    for item in items:
        if not item:
            raise ValueError(f"{name}: empty item in {text!r}")
        try:
            v = float(item)
        except ValueError:
            raise ValueError(f"{name}: {item!r} is not a number") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: {item!r} must be a positive finite number")
        values.append(v)
    return tuple(sorted(set(values)))


def metric_path(metric: str) -> tuple[str, str, str]:
    """"ttft-p99" -> ("latency_s", "ttft", "p99"): where it lives in a strategy's metrics."""
    if metric not in METRICS:
        raise ValueError(f"metric: unknown {metric!r}; choose from {', '.join(METRICS)}")
    kind, stat = metric.split("-")
    return ("latency_s", kind, stat)


def metric_label(metric: str) -> str:
    kind, stat = metric_path(metric)[1:]
    return f"{METRIC_LABELS[kind]} ({stat}, {METRIC_UNITS[kind]})"


@dataclass(frozen=True)
class SweepSpec:
    """A sweep, validated on construction.

    Args:
        trace: trace file (any format `load_trace` reads).
        config: the deployment every point shares (`SimConfig`).
        strategies: cache strategies to compare.
        rates: request rates (req/s) of generated arrivals; or
        rate_scales: factors applied to the trace's own arrival rate (exactly one of the two).
        arrival_cv: coefficient of variation of generated gaps (None or 1: Poisson).
        seed: seed of the generated arrivals. The same seed at every rate draws the same
            gaps scaled by 1 / rate, so the points differ only in load (common random
            numbers), not in which requests happen to bunch up.
        limit: replay only the first N requests of the trace.
        metric: the latency compared with the bound (`METRICS`).
        latency_bound: the most `metric` may be at a sustained rate; None takes
            `DEFAULT_NORMALIZED_BOUND` for normalized-latency metrics and is an error for
            the others (no single default fits TTFT and TPOT).
    """

    trace: str
    config: SimConfig = field(default_factory=SimConfig)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    rates: tuple[float, ...] | None = None
    rate_scales: tuple[float, ...] | None = None
    arrival_cv: float | None = None
    seed: int = 0
    limit: int | None = None
    metric: str = DEFAULT_METRIC
    latency_bound: float | None = None
    cpu_prefix_caches: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, SimConfig):
            raise ValueError(f"config must be a SimConfig, got {type(self.config).__name__}")
        object.__setattr__(self, "trace", str(Path(self.trace)))
        object.__setattr__(self, "strategies", check_strategies(tuple(self.strategies)))
        if (self.rates is None) == (self.rate_scales is None):
            raise ValueError("give exactly one of rates (req/s of generated arrivals) and "
                             "rate_scales (factors on the trace's own arrival rate)")
        name = "rates" if self.rates is not None else "rate_scales"
        values = self.rates if self.rates is not None else self.rate_scales
        values = parse_values(",".join(str(v) for v in values), name) if values else ()
        if not values:
            raise ValueError(f"{name}: give at least one value")
        object.__setattr__(self, name, values)
        if self.arrival_cv is not None:
            if not (math.isfinite(self.arrival_cv) and self.arrival_cv > 0):
                raise ValueError(f"arrival_cv must be a positive number, got "
                                 f"{self.arrival_cv!r}")
            if self.rates is None:
                raise ValueError("arrival_cv applies to generated arrivals: use it with rates, "
                                 "not rate_scales")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.limit is not None and (isinstance(self.limit, bool)
                                       or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be an integer >= 1, got {self.limit!r}")
        kind = metric_path(self.metric)[1]
        bound = self.latency_bound
        if bound is None:
            if kind != "normalized":
                raise ValueError(f"latency_bound: give a bound for metric {self.metric!r} "
                                 f"(in {METRIC_UNITS[kind]})")
            bound = DEFAULT_NORMALIZED_BOUND
        if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise ValueError(f"latency_bound must be a positive number, got {bound!r}")
        object.__setattr__(self, "latency_bound", float(bound))
        if self.cpu_prefix_caches is not None:
            self._check_tiers()

    def _check_tiers(self) -> None:
        sizes = self.cpu_prefix_caches
        if not isinstance(sizes, tuple) or not sizes:
            raise ValueError("cpu_prefix_caches: give a tuple of at least one size in GiB")
        for v in sizes:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"cpu_prefix_caches: {v!r} must be a number of GiB >= 0 or "
                                 "inf (unlimited)")
        object.__setattr__(self, "cpu_prefix_caches", tuple(sorted({float(v) for v in sizes})))
        if not self.config.prefix_caching and max(sizes) > 0:
            raise ValueError("cpu_prefix_caches: the CPU prefix tier holds prefix-cache "
                             "blocks; it needs prefix caching")
        if self.strategies != (PAGED,):
            raise ValueError("cpu_prefix_caches: the CPU prefix tier needs the paged strategy "
                             "only")
        if len(self.load_values) > 1:
            raise ValueError("cpu_prefix_caches: a tier-size sweep runs at one load; give one "
                             "rate or one rate scale")

    @property
    def load_values(self) -> tuple[float, ...]:
        """The rates or rate scales given."""
        return self.rates if self.rates is not None else self.rate_scales  # type: ignore

    @property
    def bound(self) -> float:
        """`latency_bound` as construction filled it in (its default for the metric)."""
        if self.latency_bound is None:
            raise ValueError("latency_bound: unset (SweepSpec construction fills it in)")
        return self.latency_bound

    @property
    def axis(self) -> str:
        """"rate" (generated arrivals at req/s), "rate_scale", or "cpu_prefix_cache" (tier
        sizes at one load)."""
        if self.cpu_prefix_caches is not None:
            return TIER_AXIS
        return "rate" if self.rates is not None else "rate_scale"

    @property
    def values(self) -> tuple[float, ...]:
        """The swept values: rates, rate scales, or tier sizes in GiB (inf: unlimited)."""
        if self.cpu_prefix_caches is not None:
            return self.cpu_prefix_caches
        return self.load_values

    def config_at(self, value: float) -> SimConfig:
        """The deployment of one sweep value (its tier size on the tier axis)."""
        if self.axis != TIER_AXIS:
            return self.config
        return replace(self.config, cpu_prefix_cache_gib=value)

    def load(self, value: float):
        """The trace of one sweep value (a `Trace`); on the tier axis, of the one load."""
        from kvpager.sim.traces import GammaArrivals, PoissonArrivals, load_trace

        if self.axis == TIER_AXIS:
            value = self.load_values[0]
        if self.rates is not None:
            cv = self.arrival_cv
            process = (PoissonArrivals(value, seed=self.seed) if cv is None or cv == 1.0
                       else GammaArrivals(value, cv, seed=self.seed))
            return load_trace(self.trace, arrivals=process, limit=self.limit)
        return load_trace(self.trace, limit=self.limit, rate_scale=value)

    def to_dict(self) -> dict:
        tiers = self.axis == TIER_AXIS
        return {"trace": self.trace, "config": self.config.to_dict(),
                "strategies": list(self.strategies), "axis": self.axis,
                "values": [value_label(v) if tiers else v for v in self.values],
                "rates": None if self.rates is None else list(self.rates),
                "rate_scales": None if self.rate_scales is None else list(self.rate_scales),
                "arrival_cv": self.arrival_cv,
                "seed": self.seed, "limit": self.limit, "metric": self.metric,
                "latency_bound": self.latency_bound}


def value_label(value: float) -> float | str:
    """A tier size as sweep.json holds it: GiB, or "unlimited"."""
    return UNLIMITED if tier_label(value) == UNLIMITED else value


def value_number(value: float | str) -> float:
    """The inverse of `value_label`: "unlimited" -> inf."""
    return math.inf if value == UNLIMITED else float(value)
