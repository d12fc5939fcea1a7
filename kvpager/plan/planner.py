"""`kvpager plan`: for each router (and rate scale), the fewest replicas that meet an SLO.

Each router's answer is a `FewestSearch` over replica counts 1..max_replicas whose probes
are full simulations (`probe`); the searches of all routers advance together, one round at
a time, and a round's probes run in parallel on an `Executor` (local processes or Ray), so
a round costs about one simulation's wall time per worker. With more workers than routers
still searching, each search probes several counts a round (k-section instead of
bisection).

The answer carries its evidence: the attainment at N and at N - 1 (probed: bisection ends
with both), and every probe's figures. A target no count up to the maximum meets is an
answer too: `met` False with the best attainment seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kvpager.plan.probe import probe
from kvpager.plan.search import FewestSearch
from kvpager.sim.cluster.config import ClusterConfig, parse_weights
from kvpager.sim.cluster.routers import ROUTERS
from kvpager.sim.config import SimConfig
from kvpager.sim.traces import Trace
from kvpager.sweep.parallel import Executor

KIND = "kvpager-plan"
SCHEMA = 1
DEFAULT_ROUTERS = ("round-robin", "least-requests", "prefix-precise")
DEFAULT_MAX_REPLICAS = 16
DEFAULT_ATTAINMENT = 0.9
WEIGHTED_ROUTERS = ("weighted", "kv-cost")

Progress = Callable[[int, int], None]  # (probes done, probes submitted so far)


@dataclass(frozen=True)
class PlanSpec:
    """What a plan asks. Every bad value raises ValueError naming its option.

    Args:
        slo_ttft_s, slo_tpot_s: the SLO (seconds; at least one, each > 0).
        attainment: the fraction of requests that must meet it, in (0, 1].
        routers: router names (`kvpager.sim.cluster.routers.ROUTERS`), each planned.
        max_replicas: the largest fleet tried (>= 1).
        weights_text: `--router-weights` for the routers that take weights.
        signal_delay_s: `--router-signal-delay` for every router.
    """

    slo_ttft_s: float | None
    slo_tpot_s: float | None
    attainment: float = DEFAULT_ATTAINMENT
    routers: tuple[str, ...] = DEFAULT_ROUTERS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    weights_text: str | None = None
    signal_delay_s: float = 0.0
    weights: dict[str, dict[str, float]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.slo_ttft_s is None and self.slo_tpot_s is None:
            raise ValueError("--slo-ttft / --slo-tpot: give at least one SLO bound (seconds)")
        for option, value in (("--slo-ttft", self.slo_ttft_s), ("--slo-tpot", self.slo_tpot_s)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{option} {value:g}: must be a finite number > 0 (seconds)")
        if not (math.isfinite(self.attainment) and 0 < self.attainment <= 1):
            raise ValueError(f"--attainment {self.attainment:g}: must be in (0, 1] (the "
                             "fraction of requests that meet the SLO)")
        if (isinstance(self.max_replicas, bool) or not isinstance(self.max_replicas, int)
                or self.max_replicas < 1):
            raise ValueError(f"--max-replicas {self.max_replicas}: must be an integer >= 1")
        if not self.routers:
            raise ValueError("--routers: name at least one router")
        for name in self.routers:
            if name not in ROUTERS:
                raise ValueError(f"--routers: unknown router {name!r}; choose from "
                                 f"{', '.join(ROUTERS)}")
        if len(set(self.routers)) != len(self.routers):
            raise ValueError("--routers: a router is named twice")
        if self.weights_text is not None:
            takers = [r for r in self.routers if r in WEIGHTED_ROUTERS]
            if not takers:
                raise ValueError("--router-weights: none of --routers takes weights (only "
                                 "weighted and kv-cost do)")
            for router in takers:
                self.weights[router] = parse_weights(self.weights_text, router)
        self.cluster(self.routers[0], 1)  # the remaining checks (signal delay) now

    def cluster(self, router: str, replicas: int) -> ClusterConfig:
        """The fleet one probe simulates."""
        return ClusterConfig(replicas=replicas, router=router,
                             weights=self.weights.get(router, {}),
                             signal_delay_s=self.signal_delay_s, slo_ttft_s=self.slo_ttft_s,
                             slo_tpot_s=self.slo_tpot_s)

    def met(self, result: dict) -> bool:
        """Whether a probe's attainment reaches the target."""
        att = result.get("attainment")
        return att is not None and att >= self.attainment - 1e-12

    def to_dict(self) -> dict:
        return {"slo_ttft_s": self.slo_ttft_s, "slo_tpot_s": self.slo_tpot_s,
                "attainment": self.attainment, "routers": list(self.routers),
                "max_replicas": self.max_replicas, "weights": dict(self.weights),
                "signal_delay_s": self.signal_delay_s}


def plan_fleet(traces: Mapping[float, Trace], config: SimConfig, spec: PlanSpec,
               executor: Executor, progress: Progress | None = None) -> dict:
    """Plan every (router, rate scale): `traces` maps each rate scale to its (already
    scaled) trace. Returns the plan document (what `plan.json` holds): {"kind", "schema",
    "spec", "answers": [per router and scale: {"router", "rate_scale", "met", "replicas",
    "attainment", "previous" (N - 1's probe or None), "best" (highest attainment probed),
    "probes": [every probe, by count]}], "executor", "rounds", "wall_s"}."""
    started = time.perf_counter()
    searches = {(r, s): FewestSearch(spec.max_replicas) for r in spec.routers for s in traces}
    probes: dict[tuple[str, float], dict[int, dict]] = {key: {} for key in searches}
    submitted = finished = rounds = 0
    while True:
        active = [key for key, search in searches.items() if not search.done]
        if not active:
            break
        k = max(1, executor.workers // len(active))
        batch = [(key, n) for key in active for n in searches[key].next_counts(k)]
        submitted += len(batch)
        base = finished

        def report(done: int, _total: int, base: int = base, total: int = submitted) -> None:
            if progress is not None:
                progress(base + done, total)

        results = executor.map(probe, [(traces[s], config, spec.cluster(r, n))
                                       for (r, s), n in batch], report)
        finished += len(batch)
        rounds += 1
        for (key, n), result in zip(batch, results, strict=True):
            probes[key][n] = result
            searches[key].record(n, spec.met(result))
    answers = [_answer(router, scale, searches[(router, scale)], probes[(router, scale)])
               for router in spec.routers for scale in traces]
    return {"kind": KIND, "schema": SCHEMA, "spec": spec.to_dict(), "answers": answers,
            "executor": executor.describe(), "rounds": rounds, "probes": finished,
            "wall_s": time.perf_counter() - started}


def _answer(router: str, scale: float, search: FewestSearch, probes: dict[int, dict]) -> dict:
    n = search.answer
    ordered = [probes[c] for c in sorted(probes)]
    best = max(ordered, key=lambda p: (p["attainment"] or 0.0, -p["replicas"]))
    return {"router": router, "rate_scale": scale, "met": n is not None, "replicas": n,
            "attainment": None if n is None else probes[n]["attainment"],
            "at": None if n is None else probes[n],
            "previous": None if n is None or n - 1 not in probes else probes[n - 1],
            "best": {"replicas": best["replicas"], "attainment": best["attainment"]},
            "max_replicas": search.max_count, "probes": ordered}


def describe_answer(answer: dict) -> str:
    """One line: "4 replicas (92.1% at 4, 85.0% at 3)" or "not met up to 16 (best 71.2% at
    16)"."""
    if not answer["met"]:
        best = answer["best"]
        return (f"not met up to {answer['max_replicas']} (best {_pct(best['attainment'])} "
                f"at {best['replicas']})")
    n, prev = answer["replicas"], answer["previous"]
    text = f"{n} replica{'s' if n != 1 else ''} ({_pct(answer['attainment'])} at {n}"
    return text + (f", {_pct(prev['attainment'])} at {n - 1})" if prev is not None else ")")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def parse_routers(text: str | None) -> tuple[str, ...]:
    """`--routers a,b` as a tuple (the default set when None)."""
    if text is None:
        return DEFAULT_ROUTERS
    names = tuple(t.strip() for t in text.split(","))
    if not all(names):
        raise ValueError(f"--routers: empty item in {text!r}")
    return names


__all__: Sequence[str] = ["DEFAULT_ROUTERS", "PlanSpec", "describe_answer", "parse_routers",
                          "plan_fleet"]
