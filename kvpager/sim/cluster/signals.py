"""What a router may read of its replicas: in-flight and queued requests and KV utilization,
live or `delay` seconds late.

llm-d's scheduler scrapes each engine's metrics (every 50 ms by default), so its scorers act
on stale load; with `delay > 0` the board keeps, per replica, the history of its load since
`now - delay` (a point each time the replica steps or takes a request) and answers with the
last point at or before `now - delay`. The history is trimmed as the clock moves, so it holds
only the changes of the last `delay` seconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kvpager.sim.replica import Replica


@dataclass(frozen=True)
class Load:
    """One replica's load. in_flight: requests waiting, running or swapped; queued:
    waiting only (Vidur's "outstanding"); kv: fraction of GPU KV blocks in use."""

    in_flight: int
    queued: int
    kv: float


def load_of(replica: Replica) -> Load:
    """A replica's load now, from its scheduler's queues and its manager's free units."""
    s = replica.scheduler
    total = replica.deploy.capacity_slots // replica.deploy.slots_per_block
    free = replica.manager.num_free_blocks()
    return Load(len(s.waiting) + len(s.running) + len(s.swapped), len(s.waiting),
                1.0 - free / total if total else 0.0)


class LoadBoard:
    """Replica load as the router sees it (`delay` seconds late)."""

    def __init__(self, replicas: Sequence[Replica], delay: float) -> None:
        self.replicas = list(replicas)
        self.delay = delay
        self._history: list[deque[tuple[float, Load]]] = [
            deque([(0.0, load_of(r))]) for r in self.replicas]

    def record(self, index: int, now: float) -> None:
        """Replica `index` changed at `now` (a step ended, a request arrived)."""
        if self.delay > 0:
            self._history[index].append((now, load_of(self.replicas[index])))

    def loads(self, now: float) -> list[Load]:
        """Every replica's load as of `now - delay`."""
        if self.delay <= 0:
            return [load_of(r) for r in self.replicas]
        seen = now - self.delay
        out = []
        for history in self._history:
            while len(history) > 1 and history[1][0] <= seen:
                history.popleft()
            out.append(history[0][1])
        return out

    def arrays(self, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(in_flight int64 [N], queued int64 [N], kv float64 [N]) as of `now - delay`."""
        loads = self.loads(now)
        return (np.array([x.in_flight for x in loads], dtype=np.int64),
                np.array([x.queued for x in loads], dtype=np.int64),
                np.array([x.kv for x in loads], dtype=np.float64))
