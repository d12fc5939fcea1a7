"""`kvpager plan TRACE --disaggregated`: the best prefill / decode split of a GPU budget
(`--gpus N`), or the fewest GPUs any split needs to meet the SLO (up to `--max-replicas`
replicas), with the aggregated answer beside it (`kvpager.sim.cluster.disagg_plan`)."""

from __future__ import annotations

import time
from pathlib import Path

from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.disagg_config import DisaggConfig, parse_decider
from kvpager.sim.cluster.disagg_plan import PlanAnswer, Probe, best_split, fewest_gpus
from kvpager.sim.config import SimConfig
from kvpager.sim.traces import Trace


def check_disagg_plan(*, gpus: int | None, tp: int, routers: tuple[str, ...],
                      link_gbps: float | None, decider: str) -> DisaggConfig:
    """The link and decider settings of the probes (ValueError naming a bad option)."""
    if gpus is not None and gpus // tp < 2:
        raise ValueError(f"--gpus {gpus}: a prefill / decode split needs at least 2 replicas "
                         f"of {tp} GPU(s)")
    if len(routers) != 1:
        raise ValueError("--routers: --disaggregated plans one router (the one that chooses "
                         "within each pool); give one")
    kind, threshold = parse_decider(decider)
    return DisaggConfig(1, 1, kind, threshold, link_gbps)


def plan_disaggregated(trace: Trace, config: SimConfig, cluster: ClusterConfig,
                       disagg: DisaggConfig, gpus: int | None, attainment: float,
                       max_replicas: int) -> dict:
    """The plan document: the answer, its mode and every probe."""
    started = time.perf_counter()
    if gpus is not None:
        answer: PlanAnswer = best_split(trace, config, cluster, gpus, disagg)
        mode = {"mode": "budget", "gpus": gpus}
    else:
        answer = fewest_gpus(trace, config, cluster, attainment, max_replicas * config.tp,
                             disagg)
        mode = {"mode": "fewest", "max_gpus": max_replicas * config.tp}
    return mode | answer.to_dict() | {
        "spec": {"slo_ttft_s": cluster.slo_ttft_s, "slo_tpot_s": cluster.slo_tpot_s,
                 "attainment": attainment, "router": cluster.router,
                 "decider": disagg.decider_name,
                 "link_gbps": disagg.link_gbps},
        "wall_s": time.perf_counter() - started}


def print_plan(doc: dict, trace_name: str, path: Path) -> None:
    from rich.table import Table

    from kvpager.cli.console import make_console

    console = make_console()
    spec = doc["spec"]
    goal = (f"the best split of {doc['gpus']} GPUs" if doc["mode"] == "budget"
            else f"the fewest GPUs (up to {doc['max_gpus']})")
    console.print(f"{trace_name}: {goal} with {100 * spec['attainment']:g}% of requests "
                  f"meeting TTFT <= {spec['slo_ttft_s']} s, TPOT <= {spec['slo_tpot_s']} s",
                  markup=False, highlight=False)
    table = Table()
    for label in ("", "config", "GPUs", "attainment", "goodput (req/s)", "per GPU",
                  "TTFT p50 (s)", "TPOT p50 (s)"):
        table.add_column(label, justify="left" if label in ("", "config") else "right")
    for label, key in (("disaggregated", "disaggregated"), ("aggregated", "aggregated")):
        p = doc[key]
        if p is None:
            table.add_row(label, "not met", *["-"] * 6)
        else:
            table.add_row(label, *_cells(p))
    console.print(table)
    console.print(f"{len(doc['probes'])} simulations, {doc['wall_s']:.1f} s; plan: {path}",
                  markup=False, highlight=False)


def _cells(p: dict) -> list[str]:
    num = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    return [p["config"], str(p["gpus"]), f"{100 * p['attainment']:.1f}%",
            num(p["goodput"], ".3f"), num(p["goodput_per_gpu"], ".3f"),
            num(p["ttft_p50_s"], ".3f"), num(p["tpot_p50_s"], ".4f")]


__all__ = ["Probe", "check_disagg_plan", "plan_disaggregated", "print_plan"]
