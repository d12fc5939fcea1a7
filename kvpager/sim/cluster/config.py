"""The cluster's settings, checked once: every bad value raises ValueError naming its option."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Scorers of the `weighted` router (llm-d style), by option name.
SCORERS = ("prefix", "queue", "kv", "requests")


@dataclass(frozen=True)
class ClusterConfig:
    """Args:
        replicas: servers behind the router (>= 1).
        router: a name of `kvpager.sim.cluster.routers.ROUTERS`.
        weights: scorer name -> weight for `weighted` (`SCORERS`); for `kv-cost`, the
            overlap weight under the key "overlap".
        signal_delay_s: the router sees replica load this many seconds late (>= 0).
        slo_ttft_s, slo_tpot_s: SLO bounds for attainment and goodput (None: no bound).
    """

    replicas: int = 1
    router: str = "round-robin"
    weights: dict[str, float] = field(default_factory=dict)
    signal_delay_s: float = 0.0
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None

    def __post_init__(self) -> None:
        from kvpager.sim.cluster.routers import ROUTERS

        if self.replicas < 1:
            raise ValueError(f"--replicas {self.replicas}: needs at least 1 replica")
        if self.router not in ROUTERS:
            raise ValueError(f"--router {self.router!r}: unknown router; choose one of "
                             f"{', '.join(ROUTERS)}")
        _non_negative("--router-signal-delay", self.signal_delay_s)
        for name, value in (("--slo-ttft", self.slo_ttft_s), ("--slo-tpot", self.slo_tpot_s)):
            if value is not None:
                _non_negative(name, value)

    def to_dict(self) -> dict:
        return {"replicas": self.replicas, "router": self.router,
                "weights": dict(self.weights), "signal_delay_s": self.signal_delay_s,
                "slo_ttft_s": self.slo_ttft_s, "slo_tpot_s": self.slo_tpot_s}


def _non_negative(option: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{option} {value:g}: must be a finite number >= 0 (seconds)")


def parse_weights(text: str | None, router: str) -> dict[str, float]:
    """`--router-weights prefix=3,queue=2,kv=2` (for `weighted`) or `overlap=1.5` (for
    `kv-cost`) as a dict; ValueError naming the option for a malformed entry, an unknown
    scorer, a negative or non-finite weight, or weights given to a router that takes none."""
    if text is None:
        return {}
    allowed = SCORERS if router == "weighted" else ("overlap",) if router == "kv-cost" else ()
    if not allowed:
        raise ValueError(f"--router-weights: router {router!r} takes no weights (only "
                         "weighted and kv-cost do)")
    weights: dict[str, float] = {}
    for entry in text.split(","):
        name, sep, value = entry.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"--router-weights {text!r}: entry {entry!r} is not NAME=WEIGHT")
        if name not in allowed:
            raise ValueError(f"--router-weights: unknown scorer {name!r} for {router}; "
                             f"choose from {', '.join(allowed)}")
        if name in weights:
            raise ValueError(f"--router-weights: scorer {name!r} is given twice")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"--router-weights: weight {value.strip()!r} of {name!r} is not "
                             "a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"--router-weights: weight of {name!r} must be finite and >= 0")
        weights[name] = weight
    if router == "weighted" and not any(weights.values()):
        raise ValueError("--router-weights: at least one weight must be positive")
    return weights
