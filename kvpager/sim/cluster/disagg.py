"""Prefill and decode on different replicas: `kvpager simulate --prefill-replicas P
--decode-replicas D`.

Two pools of `Replica`s, each the library's real scheduler and manager, each with its own
router (the cluster's `--router`, choosing within the pool). At arrival the decode router
picks the decode replica and the decider (`decider.py`) says whether the request prefills
on the prefill pool (disaggregated) or on that decode replica (local, as aggregated):

1. Disaggregated, the request runs on a prefill replica as a request of 2 output tokens:
   when its prompt is computed (the first token sampled), the prefill replica hands it on
   (`Replica.on_first_token`): the prompt's blocks are held by a fork of its sequence
   (`manager.fork`, the library's reference counting) while the request leaves the prefill
   scheduler (`Scheduler.abort`).
2. The decode replica reserves the prompt's blocks (`Scheduler.add_remote`; its prefix hits
   need not be sent). Without room (blocks or `max_num_seqs`), the request waits, FIFO per
   decode replica, holding its blocks on the prefill side, and is retried after each of the
   decode replica's steps (counted: `decode_waits`).
3. The transfer (`transfer.KVLink`, FIFO on the prefill replica's link) moves the tokens the
   decode replica lacks. When it ends the prefill replica drops its hold (the blocks stay
   as prefix cache, or are plain free blocks with `keep_prefill_cache=False`), the decode
   replica's scheduler takes the request as decoding (`Scheduler.complete_remote`), and the
   request's first token counts as delivered (TTFT = arrival to the end of the transfer).

Requests of several sequences (n, beams), of one output token, or too long for the decode
replica's limits are served locally: the decode replica's scheduler serves or rejects them
with its own reason. Every request ends finished or rejected, and after a run no replica
holds a block but its prefix cache (tests check both).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, replace

import numpy as np
import simpy

from kvpager.core.plans import AllocStatus
from kvpager.core.sched.request import GroupStatus, Request, SequenceGroup
from kvpager.sim.cluster import summary as cluster_summary
from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.decider import Decider
from kvpager.sim.cluster.disagg_config import DisaggConfig
from kvpager.sim.cluster.disagg_summary import transfer_summary
from kvpager.sim.cluster.routers import Router, build_router
from kvpager.sim.cluster.signals import LoadBoard
from kvpager.sim.cluster.transfer import KVLink
from kvpager.sim.config import PAGED, SimConfig
from kvpager.sim.cost_model import CostModel
from kvpager.sim.engine import Progress, Simulation, _event_bus
from kvpager.sim.metrics import REJECTED, RequestLog, summarize
from kvpager.sim.replica import Replica
from kvpager.sim.traces import Trace

PREFILL, DECODE = "prefill", "decode"


@dataclass
class _Handoff:
    """A disaggregated request between its prefill and its decode replica."""

    request: Request
    outputs: list[int] | None
    prefill: int  # index in the prefill pool
    decode: int  # index in the decode pool
    ready_s: float = 0.0  # prompt computed
    last_step_s: float = 0.0  # seconds of the prefill's last step
    waited: bool = False  # found no room on the decode replica at first


class _PoolView:
    """What one pool's replicas see of the run (`kvpager.sim.replica.RunView`)."""

    def __init__(self, sim: DisaggSimulation, role: str, index: int) -> None:
        self.sim, self.role, self.index = sim, role, index
        self.requests: RequestLog = sim.requests

    def all_arrived(self) -> bool:
        if self.role == PREFILL:  # blocks it holds for transfers will come free
            return self.sim.all_arrived() and not self.sim.holds[self.index]
        return self.sim.all_arrived() and not self.sim.inbound(self.index)

    def next_arrival(self) -> float | None:
        """The next request that may join this replica: the trace's next arrival (a
        decode replica takes local requests only if the decider can keep any) or, for a
        decode replica, the end of the next transfer to it."""
        nxt = self.sim.next_arrival()
        if self.role == DECODE:
            if self.sim.decider.kind == "always":
                nxt = None
            ends = self.sim.transfer_ends[self.index]
            if ends:
                first = min(ends.values())
                nxt = first if nxt is None else min(nxt, first)
        return nxt

    def request_done(self) -> None:
        self.sim.request_done()


class _PoolRouters:
    """The two pools' routers, as `Simulation.router` for metrics.json."""

    def __init__(self, prefill: Router, decode: Router) -> None:
        self.prefill, self.decode = prefill, decode
        self.name = f"{decode.name} within each pool"

    def route(self, keys, now: float) -> int:
        """The decode pool's choice (the run asks each pool's router itself)."""
        return self.decode.route(keys, now)

    def settings(self) -> dict:
        return {"prefill": self.prefill.settings(), "decode": self.decode.settings()}


class DisaggSimulation(Simulation):
    """One strategy (paged) over one trace on a prefill pool and a decode pool."""

    def __init__(self, trace: Trace, config: SimConfig, strategy: str, cost: CostModel,
                 disagg: DisaggConfig, progress: Progress | None = None,
                 cluster: ClusterConfig | None = None) -> None:
        if strategy != PAGED:
            raise ValueError(f"--cache {strategy}: prefill/decode disaggregation runs the "
                             "paged strategy only (it moves KV blocks)")
        self.disagg = disagg
        self.link = KVLink(cost, disagg)
        self.decider = Decider(disagg, cost, self.link)
        cluster = replace(cluster or ClusterConfig(), replicas=disagg.replicas)
        super().__init__(trace, config, strategy, cost, progress, cluster)
        n = len(trace)
        self.prefilled_on = np.full(n, -1, dtype=np.int64)
        self.disaggregated = np.zeros(n, dtype=bool)
        self.moved_tokens = np.zeros(n, dtype=np.int64)
        self.transfer_s = np.full(n, np.nan)  # prompt computed -> KV arrived
        self.wait_s = np.full(n, np.nan)  # prompt computed -> decode room reserved
        self._handoffs: dict[int, _Handoff] = {}
        self._room: list[deque[int]] = [deque() for _ in range(disagg.decode_replicas)]
        self._inbound: list[set[int]] = [set() for _ in range(disagg.decode_replicas)]
        self.transfer_ends: list[dict[int, float]] = [{} for _ in range(disagg.decode_replicas)]
        self._link_free = [0.0] * disagg.prefill_replicas
        self.holds = [0] * disagg.prefill_replicas  # prompts held for transfer, per replica
        self.decode_waits = 0
        self.link_busy_s = 0.0

    # ---- building the pools -------------------------------------------------------------
    def _build_replicas(self, tier_blocks: int, has_beams: bool, interval: float) -> None:
        d, config, cost = self.disagg, self.config, self.cost
        pool_configs = {PREFILL: config if d.keep_prefill_cache
                        else replace(config, prefix_caching=False), DECODE: config}
        self.prefill_pool: list[Replica] = []
        self.decode_pool: list[Replica] = []
        routers = {}
        for role, count, pool in ((PREFILL, d.prefill_replicas, self.prefill_pool),
                                  (DECODE, d.decode_replicas, self.decode_pool)):
            cfg = pool_configs[role]
            precise = self.cluster.router == "prefix-precise" and cfg.prefix_caching
            buses = [_event_bus() if precise else None for _ in range(count)]
            for index, bus in enumerate(buses):
                pool.append(Replica(cfg, PAGED, cost, tier_blocks, _PoolView(self, role, index),
                                    has_beams, interval, events=bus))
            board = LoadBoard(pool, self.cluster.signal_delay_s)
            routers[role] = build_router(replace(self.cluster, replicas=count), board,
                                         cost.num_gpu_blocks(cfg.block_size), cfg.seed, buses,
                                         clock=self._clock)
            for index, replica in enumerate(pool):
                replica.on_step = self._on_step(role, index, board)
            if role == DECODE:
                self.decode_board = board
            else:
                self.prefill_board = board
        for index, replica in enumerate(self.prefill_pool):
            replica.on_first_token = (
                lambda group, start, end, p=index: self._prefilled(p, group, start, end))
        self.replicas = self.prefill_pool + self.decode_pool
        self.board = self.decode_board
        self.prefill_router, self.decode_router = routers[PREFILL], routers[DECODE]
        self.router = _PoolRouters(self.prefill_router, self.decode_router)

    def _on_step(self, role: str, index: int, board: LoadBoard):
        delayed = self.cluster.signal_delay_s > 0

        def stepped(now: float) -> None:
            if delayed:
                board.record(index, now)
            if role == DECODE and self._room[index]:
                self._try_reserve(index, now)
        return stepped

    # ---- what the pool views ask --------------------------------------------------------
    def inbound(self, decode: int) -> bool:
        """Whether disaggregated requests routed to decode replica `decode` are still on
        their way (prefilling, waiting for room or in transfer)."""
        pending = self._inbound[decode]
        status = self.requests.status
        for i in [i for i in pending if status[i] == REJECTED]:
            pending.discard(i)  # rejected on the prefill side: it will never come
        return bool(pending)

    @property
    def events(self) -> list[tuple[float, str, int]]:
        """Every replica's events, in time order (transfers are `kv-send` on the prefill
        replica at the start, `kv-receive` on the decode replica at the end, in blocks)."""
        merged = [e for r in self.replicas for e in r.events]
        merged.sort(key=lambda e: e[0])
        return merged

    # ---- arrivals -----------------------------------------------------------------------
    def _arrivals(self, env: simpy.Environment) -> Generator[simpy.Event, None, None]:
        arrival, first_decode = self.requests.arrival, self.disagg.prefill_replicas
        for i in range(len(self.trace)):
            if arrival[i] > env.now:
                yield env.timeout(arrival[i] - env.now)
            request, outputs = self._arrive(i, env.now)
            keys = request.block_hashes or ()
            d = self.decode_router.route(keys, env.now)
            self.assigned[i] = first_decode + d
            if self._servable_remotely(request):
                p = self.prefill_router.route(keys, env.now)
                if self._decide(request, keys, p, d):
                    self._start_prefill(i, request, outputs, p, d, env.now)
                    continue
            decode = self.decode_pool[d]
            group = decode.add(request, outputs)
            self.decode_board.record(d, env.now)
            if group.status is GroupStatus.FINISHED:
                decode.reject(i, group.finish_reason or "rejected", group.num_preemptions)
            decode.wake()

    def _servable_remotely(self, request: Request) -> bool:
        """One sequence, a second token to decode, within the decode side's length limit."""
        limit = self.config.max_model_len
        return (request.width == 1 and request.max_output_tokens >= 2
                and (limit is None
                     or request.prompt_tokens + request.max_output_tokens <= limit))

    def _decide(self, request: Request, keys, p: int, d: int) -> bool:
        if self.decider.kind == "always":
            return True
        prompt = request.prompt_tokens
        decode, prefill = self.decode_pool[d], self.prefill_pool[p]
        return self.decider.disaggregate(prompt, _cached(decode, keys, prompt),
                                         _cached(prefill, keys, prompt), _backlog(decode),
                                         _backlog(prefill))

    def _start_prefill(self, i: int, request: Request, outputs: list[int] | None, p: int,
                       d: int, now: float) -> None:
        self.disaggregated[i] = True
        self.prefilled_on[i] = p
        self._inbound[d].add(i)
        self._handoffs[i] = _Handoff(request, outputs, p, d)
        prefill = self.prefill_pool[p]
        group = prefill.add(replace(request, max_output_tokens=2))
        self.prefill_board.record(p, now)
        if group.status is GroupStatus.FINISHED:
            prefill.reject(i, group.finish_reason or "rejected", group.num_preemptions)
            self._inbound[d].discard(i)
            del self._handoffs[i]
        prefill.wake()

    # ---- hand-off, reservation, transfer ------------------------------------------------
    def _prefilled(self, p: int, group: SequenceGroup, start: float, end: float) -> bool:
        """Prefill replica `p` computed a prompt: hold its blocks, queue it for its decode
        replica's room (see the module docstring)."""
        i = int(group.request_id)  # type: ignore[call-overload]
        handoff = self._handoffs[i]
        prefill = self.prefill_pool[p]
        prefill.manager.fork(group.seqs[0].seq_id, _hold(i))
        self.holds[p] += 1
        prefill.scheduler.abort(i)
        handoff.ready_s, handoff.last_step_s = end, end - start
        self._room[handoff.decode].append(i)
        self._try_reserve(handoff.decode, end)
        return True

    def _try_reserve(self, d: int, now: float) -> None:
        """Reserve blocks on decode replica `d` for the requests waiting for room, in order;
        start the transfer of each that gets them."""
        queue, decode = self._room[d], self.decode_pool[d]
        while queue:
            i = queue[0]
            handoff = self._handoffs[i]
            group, status, cached = decode.scheduler.add_remote(handoff.request)
            if status is AllocStatus.LATER:
                if not handoff.waited:
                    handoff.waited = True
                    self.decode_waits += 1
                return
            queue.popleft()
            if status is AllocStatus.NEVER:
                self._release(handoff, i)
                self._inbound[d].discard(i)
                decode.reject(i, group.finish_reason or "rejected", 0)
                continue
            if handoff.outputs is not None and group.seqs[0].token_ids is not None:
                group.seqs[0].token_ids += handoff.outputs  # replayed answer (see Replica.add)
            self.wait_s[i] = now - handoff.ready_s
            self._transfer(i, handoff, handoff.request.prompt_tokens - cached, now)

    def _transfer(self, i: int, handoff: _Handoff, tokens: int, now: float) -> None:
        link = self.link
        data = link.data_seconds(tokens)
        hidden = 0.0 if handoff.waited else link.hidden_seconds(data, handoff.last_step_s)
        start = max(self._link_free[handoff.prefill], now - hidden)
        self._link_free[handoff.prefill] = start + data
        self.link_busy_s += data
        end = max(start + data + link.latency_s, now)
        self.moved_tokens[i] = tokens
        blocks = -(-tokens // self.config.block_size)
        self.prefill_pool[handoff.prefill].events.append((start, "kv-send", blocks))
        self.transfer_ends[handoff.decode][i] = end
        env = self._env
        assert env is not None  # transfers happen only while the run's clock runs
        done = env.timeout(end - now)
        done.callbacks.append(lambda _event: self._arrived_kv(i, blocks))

    def _arrived_kv(self, i: int, blocks: int) -> None:
        handoff = self._handoffs.pop(i)
        now = self._clock()
        decode = self.decode_pool[handoff.decode]
        decode.scheduler.complete_remote(i)
        self.requests.first_token[i] = now
        self.transfer_s[i] = now - handoff.ready_s
        del self.transfer_ends[handoff.decode][i]
        self._inbound[handoff.decode].discard(i)
        decode.events.append((now, "kv-receive", blocks))
        self._release(handoff, i)
        self.decode_board.record(handoff.decode, now)
        decode.wake()

    def _release(self, handoff: _Handoff, i: int) -> None:
        """The prefill replica drops its hold on the prompt's blocks."""
        prefill = self.prefill_pool[handoff.prefill]
        prefill.manager.free(_hold(i))
        self.holds[handoff.prefill] -= 1
        prefill.wake()

    # ---- summary ------------------------------------------------------------------------
    def _summary(self) -> dict:
        result = super()._summary()
        result["disaggregation"] = transfer_summary(
            self.disagg, self.link, self.cost.tp, self.disaggregated, self.moved_tokens,
            self.transfer_s, self.wait_s, self.decode_waits, self.link_busy_s,
            result["time"]["simulated_s"])
        return result

    def _replica_summary(self, index: int) -> dict:
        p = self.disagg.prefill_replicas
        if index >= p:
            return super()._replica_summary(index) | {"role": DECODE}
        replica = self.replicas[index]
        log = cluster_summary.subset(self.requests, self.prefilled_on == index)
        out = summarize(log, replica.memory, replica.steps, replica.counters())
        return {"replica": index, "role": PREFILL} | out


def _hold(i: int) -> tuple[str, int]:
    """The sequence id under which a prefill replica holds request i's blocks."""
    return ("kv-send", i)


def _cached(replica: Replica, keys, prompt: int) -> int:
    """Prompt tokens `replica`'s prefix cache holds for these block keys (at least one
    token is always computed)."""
    prefix = replica.manager.prefix_cache
    if prefix is None or not keys:
        return 0
    size = replica.config.block_size
    hits = len(prefix.match(keys, (prompt - 1) // size))
    return hits * size


def _backlog(replica: Replica) -> int:
    """Prompt tokens waiting in `replica`'s queue."""
    return sum(g.request.prompt_tokens for g in replica.scheduler.waiting)
