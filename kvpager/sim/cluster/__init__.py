"""Several replicas behind a router: what `kvpager simulate --replicas N --router R` runs.

`ClusterConfig` names the replica count, the router and its settings; `routers.build` makes
the router; `signals.LoadBoard` is what a router may read of the replicas (live, or
`signal_delay_s` late); `prefix_index.PrefixIndex` is the per-replica block-key index the
prefix routers score with (a precise router fed by KV events would update the same index
from `BlockStored` / `BlockRemoved`); `summary` turns a cluster run into metrics.
"""

from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.routers import ROUTERS, Router, build_router

__all__ = ["ROUTERS", "ClusterConfig", "Router", "build_router"]
