"""prefix-precise: a router whose prefix index is fed by each replica's own KV events.

llm-d's precise prefix scorer and Dynamo's KV router index what every engine reports it
holds (vLLM's `BlockStored` / `BlockRemoved` / `AllBlocksCleared`), rather than guessing
from where they routed (prefix-approx). Here each paged replica's manager publishes on a
`kvpager.events.KVEventBus`; the router subscribes to every bus and applies the GPU-medium
events to a `PrefixIndex`, `delay` seconds late (`--router-signal-delay`: a router that
scrapes every 50 ms sees what the engines held 50 ms ago). So the index is exactly what the
replicas' prefix caches hold, up to the delay (a test checks the equality after a run).

The choice itself is prefix-approx's (longest match, falling back to load on a short match
or an overloaded best replica): the routers differ only in what their index knows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from functools import partial

import numpy as np

from kvpager.events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBus
from kvpager.events.types import MEDIUM_GPU, KVEvent
from kvpager.sim.cluster.prefix_index import PrefixIndex
from kvpager.sim.cluster.signals import LoadBoard


class PrecisePrefixRouter:
    """Routes by the longest prefix each replica reports holding (see the module docstring).

    Args:
        board: the replicas' load, as routers see it.
        buses: one event bus per replica (None for a replica without a prefix cache).
        delay_s: seconds between an event and the router seeing it.
        clock: the simulation's current time (stamps each event as it arrives).
        choose: the prefix rule shared with prefix-approx: (matched [N], keys, in-flight
            [N]) -> replica.
    """

    name = "prefix-precise"

    def __init__(self, board: LoadBoard, buses: Sequence[KVEventBus | None], delay_s: float,
                 clock: Callable[[], float],
                 choose: Callable[[np.ndarray, Sequence[Hashable], np.ndarray], int]) -> None:
        self.board, self.delay_s, self.clock, self.choose = board, delay_s, clock, choose
        self.index = PrefixIndex(len(buses))
        self._pending: deque[tuple[float, int, KVEvent]] = deque()
        for replica, bus in enumerate(buses):
            if bus is not None:
                bus.subscribe(partial(self._on_event, replica))

    def settings(self) -> dict:
        return {"index": "KV events (GPU medium)", "delay_s": self.delay_s}

    def _on_event(self, replica: int, event: KVEvent) -> None:
        if self.delay_s > 0:
            self._pending.append((self.clock(), replica, event))
        else:
            self._apply(replica, event)

    def _apply(self, replica: int, event: KVEvent) -> None:
        if isinstance(event, BlockStored) and event.medium == MEDIUM_GPU:
            self.index.stored(replica, event.block_hashes)
        elif isinstance(event, BlockRemoved) and event.medium == MEDIUM_GPU:
            self.index.removed(replica, event.block_hashes)
        elif isinstance(event, AllBlocksCleared):
            self.index.cleared(replica)

    def catch_up(self, now: float) -> None:
        """Apply every event at least `delay_s` old."""
        horizon = now - self.delay_s
        pending = self._pending
        while pending and pending[0][0] <= horizon:
            _, replica, event = pending.popleft()
            self._apply(replica, event)

    def route(self, keys: Sequence[Hashable], now: float) -> int:
        self.catch_up(now)
        matched = self.index.match(keys).astype(np.float64)
        in_flight, _, _ = self.board.arrays(now)
        return self.choose(matched, keys, in_flight)
