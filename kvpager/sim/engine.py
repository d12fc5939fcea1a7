"""The SimPy run: a trace's requests arrive on one clock and are dispatched to replicas.

A `Simulation` is one run of one strategy over one trace. It owns the clock (a SimPy
environment), the arrivals process, the per-request log and the summary. Each server is a
`kvpager.sim.replica.Replica` (scheduler, manager, cost model, step loop, memory series,
counters), running as its own SimPy process. Only the executor is simulated; every decision
about memory is made by the library's own `Scheduler` and manager, so what the simulator
reports about memory is what the library does.

Requests reach replicas through `_dispatch`, the run's one routing point: with a
`ClusterConfig` of N replicas, its router (`kvpager.sim.cluster.routers`) picks one from the
request's prompt-block keys and the replicas' load (`kvpager.sim.cluster.signals`). One
replica (the default) is exactly the single-server run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import numpy as np
import simpy

from kvpager.core.sched.request import GroupStatus, Request
from kvpager.core.sched.scheduler import Scheduler
from kvpager.sim.cluster import summary as cluster_summary
from kvpager.sim.cluster.config import ClusterConfig
from kvpager.sim.cluster.routers import build_router
from kvpager.sim.cluster.signals import LoadBoard, load_of
from kvpager.sim.config import PAGED, SimConfig
from kvpager.sim.cost_model import CostModel
from kvpager.sim.manager_protocol import SimManager
from kvpager.sim.metrics import REJECTED, MemorySeries, RequestLog, summarize
from kvpager.sim.replica import Replica
from kvpager.sim.saturation import assess
from kvpager.sim.strategies import Deployment
from kvpager.sim.tier import tier_blocks
from kvpager.sim.traces import Trace

Progress = Callable[[int, int], None]  # (requests done, requests total)


class Simulation:
    """One strategy over one trace. `run()` returns the strategy's metrics dict."""

    def __init__(
        self,
        trace: Trace,
        config: SimConfig,
        strategy: str,
        cost: CostModel,
        progress: Progress | None = None,
        cluster: ClusterConfig | None = None,
    ) -> None:
        """`config` must be resolved (`SimConfig.resolved`): limits are numbers, not None.
        `cluster`: replicas and router (default: one replica)."""
        self.trace, self.config, self.cost = trace, config, cost
        self.strategy = strategy
        self.progress = progress
        self.requests = RequestLog(np.asarray(trace.arrival, dtype=np.float64),
                                   np.array(trace.prompt_tokens, dtype=np.int64),  # own copy:
                                   requested_output=np.asarray(trace.output_tokens,
                                                               dtype=np.int64))
        # a truncated prompt is recorded at its served length
        self.truncated_prompts = 0
        tiered = strategy == PAGED and config.has_prefix_tier
        blocks = tier_blocks(config, cost, trace) if tiered else 0
        interval = config.sample_interval_s or max(0.25, trace.duration / 2000)
        has_beams = bool((np.asarray(trace.beam_width) > 1).any())
        self.cluster = cluster if cluster is not None else ClusterConfig()
        self._env: simpy.Environment | None = None  # the run's clock, once it runs
        self._build_replicas(blocks, has_beams, interval)
        self.assigned = np.full(len(trace), -1, dtype=np.int64)  # replica of each request
        self._samples_t: list[float] = []  # arrival times, for load imbalance
        self._samples_in_flight: list[list[int]] = []
        self._arrived = 0
        self._done = 0

    def _build_replicas(self, tier_blocks: int, has_beams: bool, interval: float) -> None:
        """`replicas`, their `board` and the `router` (a disaggregated run overrides it)."""
        config, cost = self.config, self.cost
        # prefix-precise reads each paged replica's KV events (no prefix cache: no events)
        precise = (self.cluster.router == "prefix-precise" and self.cluster.replicas > 1
                   and self.strategy == PAGED and config.prefix_caching)
        buses = [_event_bus() if precise else None for _ in range(self.cluster.replicas)]
        self.replicas = [Replica(config, self.strategy, cost, tier_blocks, self, has_beams,
                                 interval, events=bus) for bus in buses]
        self.board = LoadBoard(self.replicas, self.cluster.signal_delay_s)
        for index, replica in enumerate(self.replicas):
            if self.cluster.signal_delay_s > 0:
                replica.on_step = lambda now, i=index: self.board.record(i, now)
        self.router = build_router(self.cluster, self.board,
                                   cost.num_gpu_blocks(config.block_size), config.seed,
                                   buses, clock=self._clock)

    # ---- the single replica's parts (for callers that read them directly) ---------------
    @property
    def replica(self) -> Replica:
        """The run's replica (there is one until a router puts several behind it)."""
        return self.replicas[0]

    @property
    def deploy(self) -> Deployment:
        return self.replica.deploy

    @property
    def scheduler(self) -> Scheduler:
        return self.replica.scheduler

    @property
    def manager(self) -> SimManager:
        return self.replica.manager

    @property
    def memory(self) -> MemorySeries:
        return self.replica.memory

    @property
    def events(self) -> list[tuple[float, str, int]]:
        return self.replica.events

    @property
    def tier_blocks(self) -> int:
        return self.replica.tier_blocks

    def load_samples(self) -> tuple[list[float], np.ndarray]:
        """(arrival times, int64 [arrivals, replicas] requests in flight on each replica
        just before that arrival was dispatched): the load-imbalance samples."""
        return self._samples_t, np.asarray(self._samples_in_flight, dtype=np.int64).reshape(
            len(self._samples_t), len(self.replicas))

    # ---- RunView (what replicas ask of the run) -----------------------------------------
    def all_arrived(self) -> bool:
        return self._arrived == len(self.trace)

    def next_arrival(self) -> float | None:
        if self._arrived == len(self.trace):
            return None
        return float(self.requests.arrival[self._arrived])

    def request_done(self) -> None:
        self._done += 1
        if self.progress is not None:
            self.progress(self._done, len(self.trace))

    def _clock(self) -> float:
        """Simulated seconds now (0 before the run starts)."""
        return 0.0 if self._env is None else float(self._env.now)

    # ---- processes ----------------------------------------------------------------------
    def run(self) -> dict:
        wall = time.perf_counter()
        env = simpy.Environment()
        self._env = env
        env.process(self._arrivals(env))
        for replica in self.replicas:
            env.process(replica.serve(env))
        env.run()
        result = self._summary()
        result["time"]["wall_s"] = time.perf_counter() - wall
        return result

    def _summary(self) -> dict:
        """Today's fields for the whole cluster, then `cluster` (imbalance, each replica's
        own summary) and `slo` when an SLO bound is set."""
        req, cfg = self.requests, self.cluster
        if len(self.replicas) == 1:
            replica = self.replica
            counters = replica.counters() | {"truncated_prompts": self.truncated_prompts}
            result = summarize(req, replica.memory, replica.steps, counters)
        else:
            counters = cluster_summary.merge_counters([r.counters() for r in self.replicas])
            counters["truncated_prompts"] = self.truncated_prompts
            result = summarize(req, self.replica.memory,
                               cluster_summary.merge_steps([r.steps for r in self.replicas]),
                               counters)
            end = result["time"]["simulated_s"] + (float(req.arrival.min())
                                                    if req.arrival.size else 0.0)
            per = [r.memory.time_averaged(end) for r in self.replicas]
            result["memory"] = {k: float(np.mean([m[k] for m in per])) for k in per[0]}
        result["load"] = assess(req.arrival, req.admitted, req.status == REJECTED,
                                result["requests"]["finished"], result["time"]["simulated_s"])
        bounds = (cfg.slo_ttft_s, cfg.slo_tpot_s)
        slo = cluster_summary.slo(req, *bounds, result["time"]["simulated_s"])
        if slo is not None:
            result["slo"] = slo
        result["cluster"] = {
            "imbalance": cluster_summary.imbalance(self._samples_t, self._samples_in_flight),
            "replicas": [self._replica_summary(i) for i in range(len(self.replicas))],
        }
        return result

    def _replica_summary(self, index: int) -> dict:
        replica, cfg = self.replicas[index], self.cluster
        log = cluster_summary.subset(self.requests, self.assigned == index)
        out = summarize(log, replica.memory, replica.steps, replica.counters())
        slo = cluster_summary.slo(log, cfg.slo_ttft_s, cfg.slo_tpot_s,
                                  out["time"]["simulated_s"])
        if slo is not None:
            out["slo"] = slo
        return {"replica": index} | out

    def _arrivals(self, env: simpy.Environment) -> Generator[simpy.Event, None, None]:
        arrival = self.requests.arrival
        for i in range(len(self.trace)):
            if arrival[i] > env.now:
                yield env.timeout(arrival[i] - env.now)
            request, outputs = self._arrive(i, env.now)
            index = self._dispatch(request, env.now)
            self.assigned[i] = index
            replica = self.replicas[index]
            group = replica.add(request, outputs)
            self.board.record(index, env.now)
            if group.status is GroupStatus.FINISHED:
                replica.reject(i, group.finish_reason or "rejected", group.num_preemptions)
            replica.wake()

    def _arrive(self, i: int, now: float) -> tuple[Request, list[int] | None]:
        """Request i of the trace arrives now: count it, sample every replica's load (the
        imbalance series), and build it (`_request`)."""
        self._arrived += 1
        request, outputs = self._request(i)
        self._samples_t.append(now)
        self._samples_in_flight.append([load_of(r).in_flight for r in self.replicas])
        return request, outputs

    def _dispatch(self, request: Request, now: float) -> int:
        """The replica (index) that serves `request`: the routing point of the run. The
        router reads the request's prompt-block keys (none for token-id traces yet: the
        prefix routers then see no overlap)."""
        if len(self.replicas) == 1:
            return 0
        return self.router.route(request.block_hashes or (), now)

    def _request(self, i: int) -> tuple[Request, list[int] | None]:
        """Request i of the trace, and the output token ids to replay (prefix caching of
        generated blocks), if the trace has them. With `long_prompts="truncate"` a request
        longer than max_model_len is cut to fit; with "reject" the scheduler refuses it
        (`SchedulerConfig.reject_over_length`), as a serving engine answers 400."""
        t, cfg = self.trace, self.config
        hashes = prompt_ids = output_ids = None
        if cfg.prefix_caching and self.strategy == PAGED:
            output_ids = t.output_token_ids(i)
            if output_ids is not None:  # real tokens, prompt and answer: hash them both
                prompt_ids = t.prompt_token_ids(i)
            if prompt_ids is None:
                output_ids = None
                hashes = t.block_keys(i, cfg.block_size).tolist() or None
        prompt = int(t.prompt_tokens[i])
        limit = cfg.resolved_limits()[0]
        if cfg.long_prompts == "truncate" and prompt + int(t.output_tokens[i]) > limit:
            # Cut to fit, as simulators that truncate do: the prompt to leave room for one
            # output token, the output (by the scheduler) at max_model_len.
            self.truncated_prompts += 1
        if cfg.long_prompts == "truncate" and prompt >= limit:
            prompt = limit - 1  # room for one output token
            self.requests.prompt_tokens[i] = prompt
            if hashes is not None:  # keys of the full blocks that remain
                hashes = hashes[:prompt // cfg.block_size] or None
            if prompt_ids is not None:
                prompt_ids, output_ids = prompt_ids[:prompt], None
        request = Request(i, prompt, int(t.output_tokens[i]),
                          arrival_time=float(t.arrival[i]), n=int(t.n[i]),
                          beam_width=int(t.beam_width[i]), block_hashes=hashes,
                          prompt_token_ids=None if prompt_ids is None else prompt_ids.tolist())
        return request, None if output_ids is None else output_ids.tolist()


def _event_bus():
    """A KV-event bus for a replica's manager (`kvpager.events`, imported only when used)."""
    from kvpager.events import KVEventBus

    return KVEventBus()
