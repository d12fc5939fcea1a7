"""The SimPy engine: a trace's requests arrive, the real scheduler batches them, and the cost
model says how long each step takes.

Two SimPy processes share one clock: arrivals, which hand each request to the scheduler at
its arrival time, and the server, which loops `schedule()` -> wait for the step's duration ->
`complete_step()`. Only the executor is simulated; every decision about memory is made by
the library's own `Scheduler` and manager, so what the simulator reports about memory is
what the library does.

Speed: between events, decode steps repeat with nothing new to decide, so the server asks the
scheduler for a window of k decode steps at once (multi-step decoding, as vLLM's multi-step
scheduler does) and times the k steps with the cost model. A window never crosses the next
arrival, never lets a sequence run past its last token, and falls back to one step when the
k-step allocation would not fit (so preemption happens exactly when single steps would
trigger it). With the roofline cost model, whose step time is affine in the decode context,
the window's time is exact: k times the time of its middle step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import simpy

from kvpager.core.sched.request import GroupStatus, Request, SequenceGroup
from kvpager.core.sched.scheduler import SchedulerOutput
from kvpager.sim.beams import BeamModel
from kvpager.sim.config import PAGED, SimConfig
from kvpager.sim.cost_model import CostModel, prefill_attention_work
from kvpager.sim.metrics import (
    FINISHED,
    REJECTED,
    MemorySeries,
    RequestLog,
    StepLog,
    summarize,
)
from kvpager.sim.saturation import assess
from kvpager.sim.strategies import Deployment, build
from kvpager.sim.tier import hit_blocks_by_tier, tier_blocks, tier_metrics
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
    ) -> None:
        """`config` must be resolved (`SimConfig.resolved`): limits are numbers, not None."""
        self.trace, self.config, self.cost = trace, config, cost
        tiered = strategy == PAGED and config.has_prefix_tier
        self.tier_blocks = tier_blocks(config, cost, trace) if tiered else 0
        self.deploy: Deployment = build(strategy, config, cost, self.tier_blocks)
        self.scheduler = self.deploy.scheduler
        self.manager = self.deploy.manager
        self.progress = progress
        self.requests = RequestLog(np.asarray(trace.arrival, dtype=np.float64),
                                   np.array(trace.prompt_tokens, dtype=np.int64))  # own copy:
        # a truncated prompt is recorded at its served length
        self.memory = MemorySeries(self.deploy.capacity_slots)
        self.steps = StepLog()
        self.beams = BeamModel(config.beam_replace_prob, config.seed)
        self.has_beams = bool((np.asarray(trace.beam_width) > 1).any())
        self.counters = {"preemptions": {"swap": 0, "recompute": 0}, "swapped_out_blocks": 0,
                         "swapped_in_blocks": 0, "recomputed_tokens": 0, "cow_copies": 0,
                         "fork_copied_slots": 0, "truncated_prompts": 0}
        self._pending_copy_s = 0.0
        self._prefill_tokens = 0  # computed by prefill chunks (for the prefix-tier section)
        self._tier_link_s = 0.0  # spent on the tier's offloads and loads
        self.events: list[tuple[float, str, int]] = []  # (time, kind, count)
        self._done = 0
        self._next_sample = 0.0
        self.sample_interval = config.sample_interval_s or max(0.25, trace.duration / 2000)
        self._arrived = 0
        self._wake: simpy.Event | None = None

    # ---- processes ----------------------------------------------------------------------
    def run(self) -> dict:
        wall = time.perf_counter()
        env = simpy.Environment()
        env.process(self._arrivals(env))
        env.process(self._server(env))
        env.run()
        result = summarize(self.requests, self.memory, self.steps, self._final_counters())
        req = self.requests
        result["load"] = assess(req.arrival, req.admitted, req.status == REJECTED,
                                result["requests"]["finished"], result["time"]["simulated_s"])
        result["time"]["wall_s"] = time.perf_counter() - wall
        return result

    def _arrivals(self, env: simpy.Environment):
        trace = self.trace
        arrival = self.requests.arrival
        for i in range(len(trace)):
            if arrival[i] > env.now:
                yield env.timeout(arrival[i] - env.now)
            self._arrived += 1
            too_long = self._too_long(i)
            if too_long is not None:
                self._reject_reason(i, too_long, 0)
            else:
                group = self.scheduler.add_request(self._request(i))
                if group.status is GroupStatus.FINISHED:
                    self._reject(i, group)
            if self._wake is not None and not self._wake.triggered:
                self._wake.succeed()

    def _too_long(self, i: int) -> str | None:
        """Why request i can never be served whole, or None. A serving engine refuses a
        request whose prompt plus requested output exceeds max_model_len (vLLM answers 400)
        instead of cutting it short; the trace's output length is the output requested.
        With `long_prompts="truncate"` such a request is cut to fit instead (`_request`)."""
        t, limit = self.trace, self.config.max_model_len
        prompt, output = int(t.prompt_tokens[i]), int(t.output_tokens[i])
        if limit is None or prompt + output <= limit or self.config.long_prompts == "truncate":
            return None
        return (f"rejected: prompt of {prompt} + output of {output} tokens exceeds "
                f"max_model_len={limit}")

    def _request(self, i: int) -> Request:
        t = self.trace
        hashes = prompt_ids = output_ids = None
        if self.config.prefix_caching and self.deploy.strategy == PAGED:
            output_ids = t.output_token_ids(i)
            if output_ids is not None:  # real tokens, prompt and answer: hash them both
                prompt_ids = t.prompt_token_ids(i)
            if prompt_ids is None:
                output_ids = None
                hashes = t.block_keys(i, self.config.block_size).tolist() or None
        prompt = int(t.prompt_tokens[i])
        limit = self.config.max_model_len
        if self.config.long_prompts == "truncate" and prompt + int(t.output_tokens[i]) > limit:
            # Cut to fit, as simulators that truncate do: the prompt to leave room for one
            # output token, the output (by the scheduler) at max_model_len.
            self.counters["truncated_prompts"] += 1
        if self.config.long_prompts == "truncate" and prompt >= limit:
            prompt = limit - 1  # room for one output token
            self.requests.prompt_tokens[i] = prompt
            if hashes is not None:  # keys of the full blocks that remain
                hashes = hashes[:prompt // self.config.block_size] or None
            if prompt_ids is not None:
                prompt_ids, output_ids = prompt_ids[:prompt], None
        return Request(i, prompt, int(t.output_tokens[i]),
                       arrival_time=float(t.arrival[i]), n=int(t.n[i]),
                       beam_width=int(t.beam_width[i]), block_hashes=hashes,
                       prompt_token_ids=None if prompt_ids is None else prompt_ids.tolist(),
                       output_token_ids=None if output_ids is None else output_ids.tolist())

    def _server(self, env: simpy.Environment):
        sched, total = self.scheduler, len(self.trace)
        while True:
            if not sched.has_unfinished():
                if self._arrived == total:
                    return
                self._wake = env.event()
                yield self._wake
                continue
            start = env.now
            out = sched.schedule(self._window(env.now))
            if out.is_empty:  # nothing can move until a request arrives
                if self._arrived == total:
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
            if env.now >= self._next_sample:
                self._sample(env.now)

    # ---- one step -----------------------------------------------------------------------
    def _window(self, now: float) -> int:
        """Decode steps to take at once (see the module docstring)."""
        sched, cfg = self.scheduler, self.config
        k = min(cfg.max_window_steps, sched.decode_headroom())
        if k <= 1 or self.has_beams or sched.swapped:
            return 1
        if cfg.chunked_prefill and (sched.waiting or sched.has_prefill_work()):
            return 1
        rows = sched.decode_rows()
        if self._arrived < len(self.trace):
            lens = self.manager.seq_lens(rows)
            one = self.cost.step_time(0, 0.0, rows.size, int(lens.sum()) + rows.size)
            gap = self.requests.arrival[self._arrived] - now
            k = min(k, max(1, int(gap / one))) if one > 0 else k
        return k  # the scheduler shrinks a window whose blocks do not fit to one step

    def _step_seconds(self, out: SchedulerOutput) -> float:
        cost, k = self.cost, out.num_decode_steps
        prefill = attn = completes = 0
        for chunk in out.prefills:
            prefill += chunk.count
            self._prefill_tokens += chunk.count
            attn += prefill_attention_work(chunk.count, chunk.start)
            completes += chunk.completes
        batch = int(out.decode_rows.size)
        context = 0
        if batch:
            # lengths after the window's appends; the middle step attends (k + 1) / 2 fewer
            after = int(out.decode_seq_lens.sum())
            context = after - batch * (k - 1) / 2
        seconds, self._pending_copy_s = self._pending_copy_s, 0.0
        if prefill or batch:
            seconds = k * cost.step_time(prefill, max(attn, float(prefill)), batch,
                                         max(context, batch), completes)
        moved = out.swap_in.shape[0] + out.swap_out.shape[0]
        if self.tier_blocks:  # offloads (first) and loads (before the forward pass)
            tier_moved = out.offload.shape[0] + out.load.shape[0]
            if tier_moved:
                link = cost.swap_time(tier_moved, self.deploy.slots_per_block)
                self._tier_link_s += link
                seconds += link
        if moved:
            seconds += cost.swap_time(moved, self.deploy.slots_per_block)
        if out.copies.shape[0]:
            seconds += cost.copy_time(out.copies.shape[0], self.deploy.slots_per_block)
        return seconds

    def _collect_fork_copies(self) -> None:
        """A contiguous cache copies a prompt into each new sample's or beam's own region
        when it forks (paging shares it): count the slots, and time the copy before the next
        step."""
        take = getattr(self.manager, "take_copies", None)
        if take is None:
            return
        copies = take()
        if len(copies):
            self.counters["fork_copied_slots"] += len(copies)
            self._pending_copy_s += self.cost.copy_time(len(copies), 1)

    def _record(self, out: SchedulerOutput, result, start: float, end: float,
                seconds: float) -> None:
        req = self.requests
        for group in out.admitted:
            i = group.request_id
            if math.isnan(req.admitted[i]):
                req.admitted[i] = start
        for group in out.rejected:
            self._reject(group.request_id, group)
        for _group, mode in out.preempted:
            self.counters["preemptions"][mode] += 1
        if out.preempted or out.swap_out.size or out.swap_in.size:
            self._events(out, start)
        for group in result.first_token:
            req.first_token[group.request_id] = end
        for group in result.finished:
            self._finish(group, end)
        self.counters["swapped_out_blocks"] += int(out.swap_out.shape[0])
        self.counters["swapped_in_blocks"] += int(out.swap_in.shape[0])
        self.counters["cow_copies"] += int(out.copies.shape[0])
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
        i = group.request_id
        req = self.requests
        req.finish[i] = end
        req.status[i] = FINISHED
        req.preemptions[i] = group.num_preemptions
        req.output_tokens[i] = self._output_tokens(group.request)
        self.counters["recomputed_tokens"] += group.num_recomputed_tokens
        self._tick()

    def _output_tokens(self, request: Request) -> int:
        limit = self.scheduler.config.max_model_len
        out = request.max_output_tokens
        return out if limit is None else min(out, limit - request.prompt_tokens)

    def _reject(self, i: int, group: SequenceGroup) -> None:
        self._reject_reason(i, group.finish_reason or "rejected", group.num_preemptions)

    def _reject_reason(self, i: int, reason: str, preemptions: int) -> None:
        req = self.requests
        if req.status[i] == REJECTED:
            return
        req.status[i] = REJECTED
        req.reasons[i] = reason
        req.preemptions[i] = preemptions
        self._tick()

    def _tick(self) -> None:
        self._done += 1
        if self.progress is not None:
            self.progress(self._done, len(self.trace))

    def _sample(self, now: float) -> None:
        sched = self.scheduler
        rows, final = sched.resident()
        head = sched.next_waiting()
        slots = self.manager.memory_breakdown(
            rows, final, None if head is None else head[1],
            next_num_tokens=None if head is None else head[0])
        hit = gpu_hit = cpu_hit = 0.0
        prefix = getattr(self.manager, "prefix_cache", None)
        if prefix is not None:
            hit = prefix.hit_rate
            if prefix.queried_blocks:
                gpu, cpu = hit_blocks_by_tier(prefix, self.tier_blocks > 0)
                gpu_hit, cpu_hit = gpu / prefix.queried_blocks, cpu / prefix.queried_blocks
        self.memory.add(now, slots, sched.num_running_seqs, len(sched.waiting),
                        len(sched.swapped), hit, (gpu_hit, cpu_hit))
        self._next_sample = now + self.sample_interval

    def _final_counters(self) -> dict:
        counters = dict(self.counters)
        prefix = getattr(self.manager, "prefix_cache", None)
        counters["prefix_cache"] = None if prefix is None else {
            "hit_rate": prefix.hit_rate, "hit_blocks": prefix.hit_blocks,
            "queried_blocks": prefix.queried_blocks}
        counters["prefix_tier"] = None if prefix is None else tier_metrics(
            prefix, self.config, self.cost, tiered=self.tier_blocks > 0,
            prefill_tokens=self._prefill_tokens, link_seconds=self._tier_link_s)
        counters["beams_replaced"] = self.beams.replaced
        return counters
