"""One simulated server: a scheduler, its memory manager and cost model, and its step loop.

A replica owns everything one server has: the deployment (`kvpager.sim.strategies`), the
beam model, the memory time series, the step log, time-stamped events and the figures its
summary needs. It does not own the clock, the arrivals or the request log: the run does
(`kvpager.sim.engine.Simulation`), and hands requests to replicas through one dispatch
point, so that several replicas behind a router are a change to the run alone.

The loop: `schedule()` -> wait for the step's duration -> `complete_step()`. Between
events, decode steps repeat with nothing new to decide, so the replica asks for a window of
k decode steps at once (multi-step decoding, as vLLM's multi-step scheduler does) and times
the k steps with the cost model. A window never crosses the next arrival, never lets a
sequence run past its last token, and falls back to one step when the k-step allocation would
not fit (so preemption happens exactly when single steps would trigger it). With the
roofline cost model, whose step time is affine in the decode context, the window's time is
exact: k times the time of its middle step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Protocol, cast

import simpy

from kvpager.core.memory.event_sink import KVEventSink
from kvpager.core.sched.output import StepResult
from kvpager.core.sched.request import Request, SequenceGroup
from kvpager.core.sched.scheduler import SchedulerOutput
from kvpager.sim import queries
from kvpager.sim.beams import BeamModel
from kvpager.sim.config import PAGED, SimConfig
from kvpager.sim.cost_model import CostModel
from kvpager.sim.hybrid_manager import HybridSimManager, group_series
from kvpager.sim.metrics import FINISHED, REJECTED, MemorySeries, RequestLog, StepLog
from kvpager.sim.strategies import Deployment, build
from kvpager.sim.tier import hit_blocks_by_tier, tier_metrics, tier_step_seconds


class RunView(Protocol):
    """What a replica needs of the run that feeds it."""

    requests: RequestLog

    def all_arrived(self) -> bool:
        """Whether every request of the trace has been dispatched."""
        ...

    def next_arrival(self) -> float | None:
        """Arrival time of the next request not dispatched yet (None: none left)."""
        ...

    def request_done(self) -> None:
        """A request finished or was rejected (for progress reports)."""
        ...


class Replica:
    """One server under one strategy. `serve(env)` is its SimPy process.

    Args:
        config: the run's resolved configuration.
        strategy: a name of `kvpager.sim.config.STRATEGIES`.
        cost: the step-time and capacity model.
        tier_blocks: blocks of the paged manager's CPU prefix tier (0: none).
        run: the run that dispatches requests to it and keeps the request log.
        has_beams: whether any request of the trace uses beam search (windows stay 1 step).
    """

    def __init__(self, config: SimConfig, strategy: str, cost: CostModel, tier_blocks: int,
                 run: RunView, has_beams: bool, sample_interval: float,
                 events: KVEventSink | None = None) -> None:
        self.config, self.cost, self.run = config, cost, run
        self.tier_blocks = tier_blocks
        self.deploy: Deployment = build(strategy, config, cost, tier_blocks, events)
        self.scheduler = self.deploy.scheduler
        self.manager = self.deploy.manager
        self.memory = MemorySeries(self.deploy.capacity_slots)
        self.group_memory = group_series(self.manager)  # None: one group
        self.steps = StepLog()
        self.beams = BeamModel(config.beam_replace_prob, config.seed)
        self.has_beams = has_beams
        self.events: list[tuple[float, str, int]] = []  # (time, kind, count)
        self.sample_interval = sample_interval
        self.fork_copied_slots = 0  # slots copied by forks (contiguous caches)
        self._pending_copy_s = 0.0
        self._prefill_tokens = 0  # computed by prefill chunks (for the prefix-tier section)
        self._tier_link_s = 0.0  # spent on the tier's offloads and loads
        self._tier_stall_s = 0.0  # steps outlasted their compute waiting on offloads
        self._next_sample = 0.0
        self._wake: simpy.Event | None = None
        self._replay = config.prefix_caching and strategy == PAGED
        self.on_step: Callable[[float], None] | None = None  # a router's load board listens
        # A prefill replica of a disaggregated run hands a computed prompt on, given the
        # step's (start, end) (returns True: the first token is timed where it arrives).
        self.on_first_token: Callable[[SequenceGroup, float, float], bool] | None = None

    # ---- requests -----------------------------------------------------------------------
    def add(self, request: Request, output_token_ids: list[int] | None = None) -> SequenceGroup:
        """Queue a request (its group comes back FINISHED when the scheduler refuses it).
        `output_token_ids`: the trace's answer, replayed as if sampled, so that generated
        blocks are prefix-cached as a real engine's would be (needs prompt token ids)."""
        group = self.scheduler.add_request(request)
        if output_token_ids is not None and group.seqs[0].token_ids is not None:
            group.seqs[0].token_ids += output_token_ids  # the executor's whole stream
        return group

    def wake(self) -> None:
        """A request arrived: resume a loop waiting for work."""
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # ---- the loop -----------------------------------------------------------------------
    def serve(self, env: simpy.Environment) -> Generator[simpy.Event, None, None]:
        sched, run = self.scheduler, self.run
        while True:
            if not sched.has_unfinished():
                if run.all_arrived():
                    return
                self._wake = env.event()
                yield self._wake
                continue
            start = env.now
            out = sched.schedule(self._window(env.now))
            if out.is_empty:  # nothing can move until a request arrives
                if run.all_arrived():
                    raise RuntimeError("the scheduler made no progress with no arrivals left")
                self._wake = env.event()
                yield self._wake
                continue
            seconds = self._step_seconds(out)
            if seconds > 0:
                yield env.timeout(seconds)
            result = sched.complete_step(out)
            self._record(out, result, start, env.now, seconds)
            if self.has_beams:
                self.beams.step(sched)
            self._collect_fork_copies()
            if self.on_step is not None:
                self.on_step(env.now)
            if env.now >= self._next_sample:
                self.sample(env.now)

    def _window(self, now: float) -> int:
        """Decode steps to take at once (see the module docstring)."""
        sched, cfg = self.scheduler, self.config
        if self.has_beams or sched.swapped or cfg.max_window_steps <= 1:
            return 1
        rows = queries.decode_rows(sched)
        if not rows.size:
            return 1
        lens = self.manager.seq_lens(rows)  # once: headroom and the window's step time
        k = min(cfg.max_window_steps, int((sched.running.targets(rows) - lens).min()))
        if k <= 1:
            return 1
        if cfg.chunked_prefill and (sched.waiting or queries.has_prefill_work(sched)):
            return 1
        arrival = self.run.next_arrival()
        if arrival is not None:
            one = self.cost.step_time(0, 0.0, rows.size,
                                      self.cost.decode_context(lens + 1))
            k = min(k, max(1, int((arrival - now) / one))) if one > 0 else k
        return k  # the scheduler shrinks a window whose blocks do not fit to one step

    def _step_seconds(self, out: SchedulerOutput) -> float:
        cost, k = self.cost, out.num_decode_steps
        prefill = completes = 0
        attn = 0.0
        for chunk in out.prefills:
            prefill += chunk.count
            attn += cost.prefill_work(chunk.count, chunk.start)
            completes += chunk.completes
        self._prefill_tokens += prefill
        batch = int(out.decode_rows.size)
        context = 0.0
        if batch:
            # lengths after the window's appends; the middle step attends (k + 1) / 2 fewer
            context = cost.decode_context(out.decode_seq_lens, k)
        seconds, self._pending_copy_s = self._pending_copy_s, 0.0
        if prefill or batch:
            seconds = k * cost.step_time(prefill, max(attn, float(prefill)), batch,
                                         max(context, batch), completes)
        moved = out.swap_in.shape[0] + out.swap_out.shape[0]
        if self.tier_blocks and (out.offload.shape[0] or out.load.shape[0]):
            seconds = self._with_tier_transfers(out, seconds)
        if moved:
            seconds += cost.swap_time(moved, self.deploy.slots_per_block)
        if out.copies.shape[0]:
            seconds += cost.copy_time(out.copies.shape[0], self.deploy.slots_per_block)
        return seconds

    def _with_tier_transfers(self, out: SchedulerOutput, compute_s: float) -> float:
        """The step's seconds with the prefix tier's loads and offloads (`tier_step_seconds`
        says how they overlap), counting the link's busy and stalled time."""
        bs = self.deploy.slots_per_block
        load = self.cost.swap_time(int(out.load.shape[0]), bs) if out.load.shape[0] else 0.0
        offload = (self.cost.swap_time(int(out.offload.shape[0]), bs)
                   if out.offload.shape[0] else 0.0)
        seconds, stall = tier_step_seconds(compute_s, load, offload)
        self._tier_link_s += load + offload
        self._tier_stall_s += stall
        return seconds

    def _collect_fork_copies(self) -> None:
        """A contiguous cache copies a prompt into each new sample's or beam's own region
        when it forks (paging shares it): count the slots, and time the copy before the next
        step."""
        copies = self.manager.take_copies()
        if len(copies):
            self.fork_copied_slots += len(copies)
            self._pending_copy_s += self.cost.copy_time(len(copies), 1)

    # ---- records ------------------------------------------------------------------------
    def _record(self, out: SchedulerOutput, result: StepResult, start: float, end: float,
                seconds: float) -> None:
        req = self.run.requests
        for group in out.admitted:
            i = cast(int, group.request_id)  # the simulator's request ids are trace rows
            if math.isnan(req.admitted[i]):
                req.admitted[i] = start
        for group in out.rejected:
            self.reject(cast(int, group.request_id), group.finish_reason or "rejected",
                        group.num_preemptions)
        if out.preempted or out.swap_out.size or out.swap_in.size:
            self._events(out, start)
        for group in result.first_token:
            if self.on_first_token is None or not self.on_first_token(group, start, end):
                req.first_token[cast(int, group.request_id)] = end
        for group in result.finished:
            self._finish(group, end)
        batch = int(out.decode_rows.size) + len(out.prefills)
        self.steps.add(batch, out.num_decode_steps, seconds)

    def _events(self, out: SchedulerOutput, start: float) -> None:
        """Time-stamped preemptions (groups) and swaps (blocks) for reports."""
        modes: dict[str, int] = {}
        for _group, mode in out.preempted:
            modes[mode] = modes.get(mode, 0) + 1
        for mode, count in modes.items():
            self.events.append((start, f"preempt-{mode}", count))
        if out.swap_out.size:
            self.events.append((start, "swap-out", int(out.swap_out.shape[0])))
        if out.swap_in.size:
            self.events.append((start, "swap-in", int(out.swap_in.shape[0])))

    def _finish(self, group: SequenceGroup, end: float) -> None:
        i = cast(int, group.request_id)  # the simulator's request ids are trace rows
        req = self.run.requests
        req.finish[i] = end
        req.status[i] = FINISHED
        req.preemptions[i] = group.num_preemptions
        req.output_tokens[i] = self.scheduler.final_tokens(group.request) - \
            group.request.prompt_tokens
        self.run.request_done()

    def reject(self, i: int, reason: str, preemptions: int) -> None:
        """Record request i as rejected (once)."""
        req = self.run.requests
        if req.status[i] == REJECTED:
            return
        req.status[i] = REJECTED
        req.reasons[i] = reason
        req.preemptions[i] = preemptions
        self.run.request_done()

    def sample(self, now: float) -> None:
        """One point of the memory time series."""
        sched = self.scheduler
        rows, final = queries.resident(sched)
        head = queries.next_waiting(sched)
        slots = self.manager.memory_breakdown(
            rows, final, None if head is None else head[1],
            next_num_tokens=None if head is None else head[0])
        hit = gpu_hit = cpu_hit = 0.0
        prefix = self.manager.prefix_cache
        if prefix is not None:
            hit = prefix.hit_rate
            if prefix.queried_blocks:
                gpu, cpu = hit_blocks_by_tier(prefix, self.tier_blocks > 0)
                gpu_hit, cpu_hit = gpu / prefix.queried_blocks, cpu / prefix.queried_blocks
        self.memory.add(now, slots, sched.num_running_seqs, len(sched.waiting),
                        len(sched.swapped), hit, (gpu_hit, cpu_hit))
        if self.group_memory is not None and isinstance(self.manager, HybridSimManager):
            self.group_memory.add(now, self.manager.group_pages(rows))
        self._next_sample = now + self.sample_interval

    def counters(self) -> dict:
        """The replica's totals for the summary: the scheduler's and manager's own counters
        (units: the manager's), and what only the simulator knows (fork copies, beams)."""
        s, m = self.scheduler, self.manager
        prefix = m.prefix_cache
        return {
            "preemptions": dict(s.num_preempted),
            "swapped_out_blocks": m.num_blocks_swapped_out,
            "swapped_in_blocks": m.num_blocks_swapped_in,
            "recomputed_tokens": s.num_recomputed_tokens,
            "cow_copies": m.num_cow_copies,
            "fork_copied_slots": self.fork_copied_slots,
            "prefix_cache": None if prefix is None else {
                "hit_rate": prefix.hit_rate, "hit_blocks": prefix.hit_blocks,
                "queried_blocks": prefix.queried_blocks},
            "prefix_tier": None if prefix is None else tier_metrics(
                prefix, self.config, self.cost, tiered=self.tier_blocks > 0,
                prefill_tokens=self._prefill_tokens, link_seconds=self._tier_link_s,
                stall_seconds=self._tier_stall_s),
            "beams_replaced": self.beams.replaced,
        }


Dispatch = Callable[[Request], Replica]  # the run's routing point: which replica serves it
__all__ = ["Dispatch", "Replica", "RunView"]
