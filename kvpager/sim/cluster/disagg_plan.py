"""The planner's disaggregated answer: which prefill / decode split of a GPU budget serves a
trace best within an SLO, or the fewest GPUs any split needs, with the aggregated answer
(the same GPUs as plain replicas behind the router) beside it.

Each probe is a full simulation (`kvpager.sim.run.simulate`, the paged strategy) on one
GPU group per replica (`config.tp` GPUs each). A configuration *meets* the SLO when its
attainment (`cluster.summary.slo`: the fraction of requests finishing within both bounds)
reaches `attainment`; among splits of one budget the best is the one with the highest
goodput (requests per second within the SLO), ties to fewer prefill replicas.

`best_split(trace, config, cluster, gpus)`: every P in 1..N-1 for N = gpus // tp replicas.
`fewest_gpus(..., max_gpus)`: the smallest N (from 2) where some split meets the SLO (the
aggregated search likewise, from 1); a search up to `max_gpus` that finds none says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.disagg_config import DisaggConfig
from kvpager.sim.config import PAGED, SimConfig
from kvpager.sim.traces import Trace


@dataclass(frozen=True)
class Probe:
    """One simulated configuration: `prefill` is 0 for an aggregated cluster of `decode`
    replicas."""

    prefill: int
    decode: int
    gpus: int
    attainment: float
    goodput: float  # requests per second meeting the SLO
    ttft_p50_s: float | None
    tpot_p50_s: float | None
    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None
    hit_rate: float | None = None  # prefix cache, over every replica
    transfer_mean_s: float | None = None  # prompt computed -> KV arrived
    transfer_p99_s: float | None = None
    decode_waits: int | None = None  # requests that waited for room on a decode replica

    @property
    def goodput_per_gpu(self) -> float:
        return self.goodput / self.gpus

    @property
    def label(self) -> str:
        return f"{self.decode} aggregated" if not self.prefill else \
            f"{self.prefill}P+{self.decode}D"

    def to_dict(self) -> dict:
        return {"config": self.label, "prefill": self.prefill, "decode": self.decode,
                "gpus": self.gpus, "attainment": self.attainment, "goodput": self.goodput,
                "goodput_per_gpu": self.goodput_per_gpu, "ttft_p50_s": self.ttft_p50_s,
                "tpot_p50_s": self.tpot_p50_s, "ttft_p90_s": self.ttft_p90_s,
                "tpot_p90_s": self.tpot_p90_s, "hit_rate": self.hit_rate,
                "transfer_mean_s": self.transfer_mean_s,
                "transfer_p99_s": self.transfer_p99_s, "decode_waits": self.decode_waits}


@dataclass
class PlanAnswer:
    """The best disaggregated and the aggregated configuration, and every probe run."""

    disaggregated: Probe | None
    aggregated: Probe | None
    probes: list[Probe] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"disaggregated": None if self.disaggregated is None
                else self.disaggregated.to_dict(),
                "aggregated": None if self.aggregated is None else self.aggregated.to_dict(),
                "probes": [p.to_dict() for p in self.probes]}


Runner = Callable[[Trace, SimConfig, ClusterConfig, DisaggConfig | None], dict]


def simulate_paged(trace: Trace, config: SimConfig, cluster: ClusterConfig,
                   disagg: DisaggConfig | None) -> dict:
    """The paged strategy's metrics of one probe."""
    from kvpager.sim.run import simulate

    return simulate(trace, config, [PAGED], cluster=cluster, disagg=disagg)["strategies"][PAGED]


def probe(trace: Trace, config: SimConfig, cluster: ClusterConfig, prefill: int,
          decode: int, disagg: DisaggConfig | None = None,
          run: Runner = simulate_paged) -> Probe:
    """Simulate P prefill + D decode replicas (P = 0: D aggregated replicas). `disagg`
    gives the link and decider settings (its pool sizes are replaced)."""
    if cluster.slo_ttft_s is None and cluster.slo_tpot_s is None:
        raise ValueError("--slo-ttft / --slo-tpot: the planner needs an SLO bound")
    if prefill:
        d = replace(disagg or DisaggConfig(prefill, decode), prefill_replicas=prefill,
                    decode_replicas=decode)
        m = run(trace, config, replace(cluster, replicas=1), d)
    else:
        m = run(trace, config, replace(cluster, replicas=decode), None)
    slo = m.get("slo") or {}
    ttft = (m.get("latency_s") or {}).get("ttft") or {}
    tpot = (m.get("latency_s") or {}).get("tpot") or {}
    dis = m.get("disaggregation") or {}
    moved = (dis.get("transfer") or {}).get("seconds") or {}
    return Probe(prefill, decode, (prefill + decode) * config.tp,
                 float(slo.get("attainment") or 0.0),
                 float(slo.get("goodput_requests_per_s") or 0.0),
                 ttft.get("p50"), tpot.get("p50"), ttft.get("p90"), tpot.get("p90"),
                 (m.get("prefix_cache") or {}).get("hit_rate"), moved.get("mean"),
                 moved.get("p99"), (dis.get("decode_waits") or {}).get("requests"))


def _better(a: Probe, b: Probe | None) -> bool:
    return b is None or (a.goodput, -a.prefill) > (b.goodput, -b.prefill)


def best_split(trace: Trace, config: SimConfig, cluster: ClusterConfig, gpus: int,
               disagg: DisaggConfig | None = None, run: Runner = simulate_paged) -> PlanAnswer:
    """Every split of `gpus` (P + D = gpus // tp replicas, P >= 1, D >= 1) and the same
    replicas aggregated."""
    n = gpus // config.tp
    if n < 2:
        raise ValueError(f"--gpus {gpus}: a disaggregated split needs at least 2 replicas of "
                         f"{config.tp} GPU(s)")
    answer = PlanAnswer(None, probe(trace, config, cluster, 0, n, run=run))
    answer.probes.append(answer.aggregated)  # type: ignore[arg-type]
    for p in range(1, n):
        result = probe(trace, config, cluster, p, n - p, disagg, run)
        answer.probes.append(result)
        if _better(result, answer.disaggregated):
            answer.disaggregated = result
    return answer


def fewest_gpus(trace: Trace, config: SimConfig, cluster: ClusterConfig, attainment: float,
                max_gpus: int, disagg: DisaggConfig | None = None,
                run: Runner = simulate_paged) -> PlanAnswer:
    """The fewest GPUs meeting the SLO at `attainment`, disaggregated (best split of that
    count) and aggregated, each None when no count up to `max_gpus` meets it."""
    if not 0 < attainment <= 1:
        raise ValueError(f"--attainment {attainment!r}: must be in (0, 1]")
    answer = PlanAnswer(None, None)
    for n in range(1, max_gpus // config.tp + 1):
        if answer.aggregated is None:
            agg = probe(trace, config, cluster, 0, n, run=run)
            answer.probes.append(agg)
            if agg.attainment >= attainment:
                answer.aggregated = agg
        if answer.disaggregated is None and n >= 2:
            best = None
            for p in range(1, n):
                result = probe(trace, config, cluster, p, n - p, disagg, run)
                answer.probes.append(result)
                if result.attainment >= attainment and _better(result, best):
                    best = result
            answer.disaggregated = best
        if answer.aggregated is not None and answer.disaggregated is not None:
            break
    return answer
