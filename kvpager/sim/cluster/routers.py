"""The routers: which replica serves a request, from what a router can see.

Each router answers `route(keys, now)` with a replica index. `keys` are the request's
chained prompt-block keys (what the replicas' prefix caches and vLLM's KV events name);
load comes from the `LoadBoard`, `delay` seconds late.

- round-robin, random: blind.
- least-requests: fewest in flight (waiting + running + swapped).
- least-queued: fewest waiting (Vidur's "least outstanding requests" counts the queue only).
- least-kv: lowest KV utilization.
- prefix-approx: longest prefix in the router's own LRU of the blocks it routed to each
  replica, sized to a replica's KV blocks, with no feedback from the replicas (llm-d's
  approximate prefix scorer). Pure longest-match sends every request that shares a system
  prompt to one replica, so, as SGLang's cache-aware router does, it falls back to the
  fewest in flight when the best match covers under `CACHE_THRESHOLD` of the prompt or the
  best replica has more than `BALANCE_ABS` requests in flight above the least loaded one.
- kv-cost: Dynamo's KV router cost, lowest of `overlap * prefill_blocks + active_blocks`
  (blocks the request would prefill there, blocks the replica's running requests hold);
  the overlap comes from the same routed-block LRU until a KV-event index replaces it.
- weighted: llm-d's sum of weighted scorers, each in [0, 1]: prefix (matched fraction),
  queue and requests (min-max normalised, fewer is better), kv (free fraction).

- prefix-precise (`precise.py`): prefix-approx's rule over an index fed by each replica's
  own KV events (`BlockStored` / `BlockRemoved`), `--router-signal-delay` late.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.prefix_index import PrefixIndex, RoutedLRU
from kvpager.sim.cluster.signals import LoadBoard

if TYPE_CHECKING:
    from kvpager.events import KVEventBus

ROUTERS = ("round-robin", "random", "least-requests", "least-queued", "least-kv",
           "prefix-approx", "prefix-precise", "kv-cost", "weighted")
DEFAULT_WEIGHTS = {"prefix": 3.0, "queue": 2.0, "kv": 2.0}  # llm-d's documented example
DEFAULT_OVERLAP = 1.0  # Dynamo's default overlap score weight
CACHE_THRESHOLD = 0.5  # prefix-approx: matched fraction below which load decides
BALANCE_ABS = 8  # prefix-approx: in-flight excess over the least loaded that load decides


class Router(Protocol):
    name: str

    def settings(self) -> dict:
        """The router's parameters, for metrics.json."""
        ...

    def route(self, keys: Sequence[Hashable], now: float) -> int:
        """The replica (0-based) that serves a request with these prompt-block keys."""
        ...


def _pick(score: np.ndarray, in_flight: np.ndarray) -> int:
    """Highest score; ties to the fewest in flight, then the lowest index."""
    best = np.flatnonzero(score >= score.max() - 1e-12)
    return int(best[np.argmin(in_flight[best])])


def longest_prefix_or_load(matched: np.ndarray, keys: Sequence[Hashable],
                           in_flight: np.ndarray) -> int:
    """The prefix routers' rule: the longest match (float [N] matched blocks per replica),
    unless it covers under `CACHE_THRESHOLD` of the prompt or that replica has more than
    `BALANCE_ABS` requests in flight above the least loaded: then the fewest in flight."""
    best = _pick(matched, in_flight)
    if (not len(keys) or matched[best] < CACHE_THRESHOLD * len(keys)
            or in_flight[best] - in_flight.min() > BALANCE_ABS):
        return _pick(-in_flight.astype(np.float64), in_flight)
    return best


def _min_max_fewer(x: np.ndarray) -> np.ndarray:
    """1 for the lowest value, 0 for the highest (all 1 when equal): llm-d's queue scorer."""
    lo, hi = x.min(), x.max()
    return np.ones(x.size) if hi == lo else (hi - x) / (hi - lo)


class RoundRobin:
    name = "round-robin"

    def __init__(self, n: int) -> None:
        self.n, self._next = n, 0

    def settings(self) -> dict:
        return {}

    def route(self, keys: Sequence[Hashable], now: float) -> int:
        r, self._next = self._next, (self._next + 1) % self.n
        return r


class RandomRouter:
    name = "random"

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._rng = np.random.default_rng(seed)

    def settings(self) -> dict:
        return {"seed": self.seed}

    def route(self, keys: Sequence[Hashable], now: float) -> int:
        return int(self._rng.integers(self.n))


class LeastLoad:
    """Fewest in flight, fewest queued or lowest KV utilization, by `signal`."""

    def __init__(self, name: str, board: LoadBoard) -> None:
        self.name, self.board = name, board

    def settings(self) -> dict:
        return {}

    def route(self, keys: Sequence[Hashable], now: float) -> int:
        in_flight, queued, kv = self.board.arrays(now)
        signal = {"least-requests": in_flight, "least-queued": queued, "least-kv": kv}[
            self.name]
        return _pick(-signal.astype(np.float64), in_flight)


class PrefixRouter:
    """prefix-approx, kv-cost and weighted: scores over the routed-block LRU and the load."""

    def __init__(self, name: str, board: LoadBoard, capacity_blocks: int,
                 weights: dict[str, float]) -> None:
        self.name, self.board = name, board
        self.capacity_blocks = capacity_blocks
        n = len(board.replicas)
        self.index = PrefixIndex(n)
        self.lru = RoutedLRU(self.index, capacity_blocks)
        if name == "weighted":
            self.weights = dict(weights) or dict(DEFAULT_WEIGHTS)
        elif name == "kv-cost":
            self.weights = {"overlap": weights.get("overlap", DEFAULT_OVERLAP)}
        else:
            self.weights = {}

    def settings(self) -> dict:
        guard = {"cache_threshold": CACHE_THRESHOLD, "balance_abs": BALANCE_ABS} \
            if self.name == "prefix-approx" else {}
        return {"lru_blocks_per_replica": self.capacity_blocks} | guard | (
            {"weights": self.weights} if self.weights else {})

    def route(self, keys: Sequence[Hashable], now: float) -> int:
        matched = self.index.match(keys).astype(np.float64)
        in_flight, queued, kv = self.board.arrays(now)
        if self.name == "prefix-approx":
            r = longest_prefix_or_load(matched, keys, in_flight)
            if keys:
                self.lru.routed(r, keys)
            return r
        if self.name == "kv-cost":
            active = kv * self.capacity_blocks
            score = -(self.weights["overlap"] * (len(keys) - matched) + active)
        else:
            w = self.weights
            frac = matched / len(keys) if len(keys) else np.zeros_like(matched)
            score = (w.get("prefix", 0.0) * frac + w.get("queue", 0.0) * _min_max_fewer(queued)
                     + w.get("requests", 0.0) * _min_max_fewer(in_flight)
                     + w.get("kv", 0.0) * (1.0 - kv))
        r = _pick(score, in_flight)
        if keys:
            self.lru.routed(r, keys)
        return r


def build_router(config: ClusterConfig, board: LoadBoard, capacity_blocks: int,
                 seed: int, buses: Sequence[KVEventBus | None] = (),
                 clock: Callable[[], float] = lambda: 0.0) -> Router:
    """The router `config.router` names, over the replicas on `board`; prefix-precise
    subscribes to `buses` (one per replica) and stamps events with `clock`."""
    n, name = config.replicas, config.router
    if name == "prefix-precise":
        from kvpager.sim.cluster.precise import PrecisePrefixRouter

        return PrecisePrefixRouter(board, buses, config.signal_delay_s, clock,
                                   longest_prefix_or_load)
    if name == "round-robin":
        return RoundRobin(n)
    if name == "random":
        return RandomRouter(n, seed)
    if name in ("least-requests", "least-queued", "least-kv"):
        return LeastLoad(name, board)
    return PrefixRouter(name, board, capacity_blocks, config.weights)
