"""Continuous (iteration-level) batching with preemption by swap or recompute.

The scheduler decides, step by step, which sequences compute which tokens; it asks the
`KVCacheManager` for blocks and passes on the manager's plans. It runs no model and reads no
clock: a real engine and the simulator drive the *same* scheduler, which is what makes the
simulator's memory figures the library's own.

A step, in priority order (FCFS by admission):

1. Running sequences that decode get `num_decode_steps` new slots each, in one batched call.
   When blocks run short, the lowest-priority running group is preempted, by swapping it to
   the CPU or by freeing it for recomputation later, until the rest fit.
2. Without chunked prefill (vLLM's classic policy), a step that can admit new prompts is a
   prefill-only step and runs before any decode; with chunked prefill, prompt chunks fill the
   token budget left after the decodes, in the same step.
3. Swapped groups come back (FCFS) when no one was preempted this step; new requests are
   admitted only when nothing waits in swap, so preempted work finishes first.

The executor carries out a `SchedulerOutput` in this order: `swap_out`, `swap_in`, `copies`,
then the forward pass (writes at `decode_slots` and the prefill slots), then reports back with
`complete_step`, naming sequences that stopped for their own reasons (end of sequence).
Length limits (`max_output_tokens`, `max_model_len`) are enforced here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import numpy as np

from kvpager.completion import CompletionMixin
from kvpager.config import PREEMPTION_MODES, AllocStatus, SchedulerConfig
from kvpager.errors import OutOfBlocksError
from kvpager.protocol import KVManager
from kvpager.request import GroupStatus, Request, SequenceGroup, SequenceState
from kvpager.step import PrefillChunk, SchedulerOutput, StepResult


class Scheduler(CompletionMixin):
    """FCFS continuous batching over one memory manager (`KVCacheManager` or any
    `kvpager.protocol.KVManager`).

    Construct with a `SchedulerConfig` or its fields as keywords.
    """

    def __init__(
        self, manager: KVManager, config: SchedulerConfig | None = None, **fields: object
    ) -> None:
        if config is None:
            config = SchedulerConfig(**fields)  # type: ignore[arg-type]
        elif fields:
            raise ValueError("pass either a SchedulerConfig or its fields, not both")
        self.manager = manager
        self.config = config
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[SequenceGroup] = []
        self.swapped: list[SequenceGroup] = []
        self._groups: dict[Hashable, SequenceGroup] = {}
        self._target = np.zeros(64, dtype=np.int64)  # manager row -> token count to stop at
        self._batch: tuple[np.ndarray, list[SequenceState]] | None = None
        self._seq_budget = 0  # sum of request.width over running groups
        self.num_preempted = {"swap": 0, "recompute": 0}
        self.num_rejected = 0

    # ---- requests -----------------------------------------------------------------------
    def add_request(self, request: Request) -> SequenceGroup:
        """Queue a request. Returns its group, already FINISHED (with `finish_reason`) when
        the request can never run: too long for `max_model_len`, for the token budget of a
        non-chunked step, for `max_num_seqs`, or for the whole KV cache."""
        if request.request_id in self._groups:
            raise ValueError(f"request {request.request_id!r} is already queued")
        group = SequenceGroup(request)
        first = SequenceState((request.request_id, 0), group, request.prompt_tokens,
                              token_ids=None if request.prompt_token_ids is None
                              else list(request.prompt_token_ids))
        group.seqs.append(first)
        reason = self._never_fits(request)
        if reason is not None:
            self._reject(group, reason)
            return group
        self._groups[request.request_id] = group
        self.waiting.append(group)
        return group

    def _never_fits(self, request: Request) -> str | None:
        cfg, p = self.config, request.prompt_tokens
        if cfg.max_model_len is not None and p >= cfg.max_model_len:
            return f"prompt of {p} tokens reaches max_model_len={cfg.max_model_len}"
        if not cfg.chunked_prefill and p > cfg.max_num_batched_tokens:
            return (f"prompt of {p} tokens exceeds max_num_batched_tokens="
                    f"{cfg.max_num_batched_tokens} (enable chunked prefill)")
        if request.width > cfg.max_num_seqs:
            return f"{request.width} sequences exceed max_num_seqs={cfg.max_num_seqs}"
        return None

    def _reject(self, group: SequenceGroup, reason: str) -> None:
        group.status = GroupStatus.FINISHED
        group.finish_reason = f"rejected: {reason}"
        self.num_rejected += 1

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    @property
    def num_running_seqs(self) -> int:
        return sum(len(g.seqs) for g in self.running)

    def group(self, request_id: Hashable) -> SequenceGroup:
        try:
            return self._groups[request_id]
        except KeyError:
            raise ValueError(f"unknown or finished request {request_id!r}") from None

    # ---- scheduling ---------------------------------------------------------------------
    def schedule(self, num_decode_steps: int = 1) -> SchedulerOutput:
        """Decide the next step. `num_decode_steps` > 1 gives every decoding sequence that
        many tokens at once (multi-step decoding); the caller must not let a sequence pass
        its length limit inside the window. A window whose blocks do not fit becomes a single
        step (check `out.num_decode_steps`): preemption is never caused by the window."""
        if num_decode_steps < 1:
            raise ValueError(f"num_decode_steps must be >= 1, got {num_decode_steps}")
        out = SchedulerOutput(num_decode_steps=num_decode_steps)
        if not self.config.chunked_prefill:
            if not self.swapped and self.waiting and self._may_admit():
                self._admit(out)
                if out.prefills:
                    out.num_decode_steps = 1
                    return out
            self._schedule_decodes(out)
            if not out.preempted:
                self._swap_in(out)
            return out
        self._schedule_decodes(out)
        self._continue_prefills(out)
        if not out.preempted:
            self._swap_in(out)
            if not self.swapped and self._may_admit():
                self._admit(out)
        return out

    def _may_admit(self) -> bool:
        """Static batching admits a new batch only once the running one has finished."""
        return self.config.batching == "continuous" or not self.running

    def _schedule_decodes(self, out: SchedulerOutput) -> None:
        m, k, extra = self.manager, out.num_decode_steps, self.config.num_lookahead_slots
        rows, seqs = self._decode_batch()
        while rows.size:
            try:  # plans once in the common case; raises before changing anything
                got = m.append_slots_batch(rows, k, extra)
                break
            except OutOfBlocksError as exc:
                need = exc.needed
            if k > 1:  # a multi-step window that does not fit shrinks to one step first:
                k = out.num_decode_steps = 1  # preemption happens when single steps need it
                continue
            victim = self.running[-1]
            if len(self.running) == 1:
                # Only running groups hold GPU blocks: one that cannot grow in an otherwise
                # empty cache never will, and preempting it would loop forever.
                self._drop(victim, out, f"outgrew the KV cache: needs {need} more blocks, "
                                        f"{m.num_free_blocks()} are free with nothing else running")
            else:
                self._preempt(victim, out)
            rows, seqs = self._decode_batch()
        if not rows.size:
            return
        out.decode_rows, out.decode_seqs, out.decode_slots = rows, seqs, got.slots
        out.copies = got.copies

    def _decode_batch(self) -> tuple[np.ndarray, list[SequenceState]]:
        """Rows and states of every decoding sequence of running groups, in priority order;
        rebuilt only after the running set changes."""
        if self._batch is None:
            seqs = [s for g in self.running for s in g.seqs if s.decoding]
            rows = self.manager.rows_of([s.seq_id for s in seqs])
            self._batch = (rows, seqs)
        return self._batch

    def _continue_prefills(self, out: SchedulerOutput) -> None:
        budget = self.config.max_num_batched_tokens - out.num_batched_tokens
        for group in self.running:
            for seq in group.seqs:
                if budget <= 0:
                    return
                if not seq.decoding and seq.num_computed < seq.num_tokens:
                    count = min(seq.num_tokens - seq.num_computed, budget)
                    out.prefills.append(PrefillChunk(seq, seq.num_computed, count))
                    budget -= count

    def _admit(self, out: SchedulerOutput) -> None:
        cfg, m = self.config, self.manager
        budget = cfg.max_num_batched_tokens - out.num_batched_tokens
        while self.waiting and budget > 0:
            group = self.waiting[0]
            if self._seq_budget + group.request.width > cfg.max_num_seqs:
                return
            status = self._can_allocate(group)
            if status is AllocStatus.NEVER:
                self.waiting.popleft()
                del self._groups[group.request_id]
                why = "needs more KV blocks than the cache has"
                if group.num_preemptions:
                    why += (" once recomputed without sharing between its sequences "
                            "(give it swap space)")
                self._reject(group, why)
                out.rejected.append(group)
                continue
            if status is AllocStatus.LATER:
                return
            tokens = sum(s.num_tokens for s in group.seqs)
            # A recomputation may have outgrown the budget its prompt fitted: it runs alone in
            # its step rather than never again.
            alone = group.num_preemptions > 0 and not out.prefills
            if not cfg.chunked_prefill and tokens > budget and not alone:
                return
            self.waiting.popleft()
            for seq in group.seqs:
                got = m.allocate(seq.seq_id, seq.num_tokens, **self._alloc_args(group, seq))
                seq.num_computed = got.num_cached_tokens
                count = seq.num_tokens - seq.num_computed
                if cfg.chunked_prefill:
                    count = min(count, budget)
                if count > 0:
                    out.prefills.append(PrefillChunk(seq, seq.num_computed, count))
                    budget -= count
            self._start(group)
            out.admitted.append(group)

    def _can_allocate(self, group: SequenceGroup) -> AllocStatus:
        if len(group.seqs) > 1:  # a recomputation: independent sequences
            return self.manager.can_allocate_many([s.num_tokens for s in group.seqs],
                                                  max_tokens=self._final_tokens(group.request))
        seq = group.seqs[0]
        return self.manager.can_allocate(seq.num_tokens, **self._alloc_args(group, seq))

    def _alloc_args(self, group: SequenceGroup, seq: SequenceState) -> dict:
        request = group.request
        return {
            "token_ids": seq.token_ids,
            "block_hashes": None if seq.token_ids is not None else request.block_hashes,
            "max_tokens": self._final_tokens(request),
            "num_seqs": 1 if group.expanded else request.width,
        }

    def _final_tokens(self, request: Request) -> int:
        """Tokens a sequence of the request holds at most: prompt + output, capped."""
        total = request.prompt_tokens + request.max_output_tokens
        limit = self.config.max_model_len
        return total if limit is None else min(total, limit)

    def _swap_in(self, out: SchedulerOutput) -> None:
        pairs = []
        while self.swapped:
            group = self.swapped[0]
            ids = [s.seq_id for s in group.seqs]
            if self._seq_budget + group.request.width > self.config.max_num_seqs:
                break
            if self.manager.can_swap_in(ids) is not AllocStatus.OK:
                break
            pairs.append(self.manager.swap_in(ids))
            self.swapped.pop(0)
            self._start(group)
            out.swapped_in.append(group)
        if pairs:
            out.swap_in = np.concatenate(pairs)

    def decode_headroom(self) -> int:
        """Decode steps every decoding sequence can take before one reaches its length limit
        (0 when none decodes): the longest multi-step window that finishes no one early."""
        rows, _ = self._decode_batch()
        if not rows.size:
            return 0
        return int((self._target[rows] - self.manager.seq_lens(rows)).min())

    def has_prefill_work(self) -> bool:
        """Whether a running sequence still has prompt (or recomputation) tokens to compute."""
        return any(not s.decoding for g in self.running for s in g.seqs)

    def decode_rows(self) -> np.ndarray:
        """Manager rows of the sequences the next decode step would extend, in order."""
        return self._decode_batch()[0]

    def resident(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, final slots) of every sequence holding GPU memory: the slots each will
        occupy at the end, for memory breakdowns (`KVCacheManager.memory_breakdown`)."""
        seqs = [s for g in self.running for s in g.seqs]
        rows = self.manager.rows_of([s.seq_id for s in seqs])
        final = np.fromiter((self._final_tokens(s.group.request) - 1 for s in seqs),
                            dtype=np.int64, count=len(seqs))
        return rows, final

    def next_waiting(self) -> tuple[int, int] | None:
        """(tokens now, tokens at most) of the head of the waiting queue, or None: what a
        contiguous cache would have to reserve for it next (for fragmentation metrics)."""
        if not self.waiting:
            return None
        group = self.waiting[0]
        return group.seqs[0].num_tokens, self._final_tokens(group.request)

    # ---- the running set ----------------------------------------------------------------
    def _start(self, group: SequenceGroup) -> None:
        group.status = GroupStatus.RUNNING
        self.running.append(group)
        self._seq_budget += group.request.width
        self._batch = None

    def _stop(self, group: SequenceGroup) -> None:
        self.running.remove(group)
        self._seq_budget -= group.request.width
        self._batch = None

    # ---- preemption ---------------------------------------------------------------------
    def _preempt(self, group: SequenceGroup, out: SchedulerOutput) -> None:
        m = self.manager
        ids = [s.seq_id for s in group.seqs]
        mode = self.config.preemption
        if mode == "auto":
            mode = "swap" if len(group.seqs) > 1 else "recompute"
        if mode == "swap" and (not m.has_swap_space or not m.can_swap_out(ids)):
            mode = "recompute"  # no room to swap: reported as a recompute in `out.preempted`
        self._stop(group)
        if mode == "swap":
            out.swap_out = np.concatenate([out.swap_out, m.swap_out(ids)])
            group.status = GroupStatus.SWAPPED
            self._insert_by_arrival(self.swapped, group)
        else:
            for seq in group.seqs:
                if seq.decoding:
                    seq.num_tokens = m.num_tokens(seq.seq_id) + 1
                group.num_recomputed_tokens += (
                    m.num_tokens(seq.seq_id) if seq.decoding else seq.num_computed)
                seq.decoding = False
                seq.num_computed = 0
            m.free_many(ids)
            group.status = GroupStatus.WAITING
            self.waiting.appendleft(group)
        group.num_preemptions += 1
        self.num_preempted[mode] += 1
        out.preempted.append((group, mode))

    def _drop(self, group: SequenceGroup, out: SchedulerOutput, reason: str) -> None:
        """End a running group that can never finish, freeing its blocks."""
        self.manager.free_many([s.seq_id for s in group.seqs])
        self._stop(group)
        del self._groups[group.request_id]
        self._reject(group, reason)
        out.rejected.append(group)

    @staticmethod
    def _insert_by_arrival(queue: list[SequenceGroup], group: SequenceGroup) -> None:
        t = group.request.arrival_time
        i = len(queue)
        while i > 0 and queue[i - 1].request.arrival_time > t:
            i -= 1
        queue.insert(i, group)


__all__ = [
    "PREEMPTION_MODES",
    "PrefillChunk",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "StepResult",
]
