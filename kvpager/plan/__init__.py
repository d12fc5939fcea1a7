"""Capacity planning: the fewest replicas per router that meet an SLO on a trace.

    from kvpager.plan import FewestSearch, PlanSpec, plan_fleet, probe
    from kvpager.sweep.parallel import Executor
    spec = PlanSpec(slo_ttft_s=2.0, slo_tpot_s=0.1, routers=("round-robin", "prefix-precise"))
    with Executor(workers=2) as ex:
        doc = plan_fleet({1.0: trace}, config, spec, ex)

`search.FewestSearch` (bisection over counts) and `probe.probe` (one simulation reduced to
its SLO attainment) are the reusable parts; `planner.plan_fleet` runs them per router.
"""

from kvpager.plan.planner import DEFAULT_ROUTERS, PlanSpec, describe_answer, plan_fleet
from kvpager.plan.probe import probe
from kvpager.plan.search import FewestSearch

__all__ = ["DEFAULT_ROUTERS", "FewestSearch", "PlanSpec", "describe_answer", "plan_fleet",
           "probe"]
