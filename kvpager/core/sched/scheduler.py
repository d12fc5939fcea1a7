"""Continuous (iteration-level) batching with preemption by swap or recompute.

The scheduler decides, step by step, which sequences compute which tokens; it asks the
memory manager for blocks and passes on the manager's plans. It runs no model and reads no
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

The step comes out as a `SchedulerOutput` holding everything the executor needs (see
`kvpager.core.sched.output`); the executor reports back with `complete_step`, naming
sequences that stopped for their own reasons (end of sequence). Length limits
(`max_output_tokens`, `max_model_len`) are enforced here. `docs/architecture.md` draws the
whole flow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

import numpy as np

from kvpager.core.config import PREEMPTION_MODES, SchedulerConfig
from kvpager.core.errors import OutOfBlocksError
from kvpager.core.plans import AllocStatus
from kvpager.core.protocol import GroupedKVManager, KVManager, PagedKVManager
from kvpager.core.sched.output import PrefillChunk, SchedulerOutput, StepResult
from kvpager.core.sched.request import GroupStatus, Request, SequenceGroup, SequenceState
from kvpager.core.sched.running import RunningSet


class Scheduler:
    """FCFS continuous batching over one memory manager (`KVCacheManager` or any
    `kvpager.core.protocol.KVManager`).

    Construct with a `SchedulerConfig` or its fields as keywords. `kernel_inputs`: whether
    `SchedulerOutput` carries the prefill slot mappings and the block tables; by default
    whenever the manager is a `PagedKVManager`. An executor that runs no kernel (the
    simulator) passes False.

    `max_model_len` has one owner, the manager (`CacheConfig.max_model_len`): the scheduler
    takes it from there. `SchedulerConfig.max_model_len` may repeat it, or set it for a
    manager without one; a value different from the manager's raises ValueError.
    """

    def __init__(self, manager: KVManager, config: SchedulerConfig | None = None, *,
                 kernel_inputs: bool | None = None, **fields: object) -> None:
        if config is None:
            config = SchedulerConfig(**fields)  # type: ignore[arg-type]
        elif fields:
            raise ValueError("pass either a SchedulerConfig or its fields, not both")
        self.manager = manager
        self.config = config
        self.max_model_len = _one_limit(manager, config)
        paged = isinstance(manager, PagedKVManager)
        if kernel_inputs and not paged:
            raise ValueError(f"kernel_inputs needs a PagedKVManager; "
                             f"{type(manager).__name__} has no slot mappings or block tables")
        self.kernel_inputs = paged if kernel_inputs is None else kernel_inputs
        # The same manager, typed for what kernel inputs need (None: no kernel inputs).
        self._kernel_manager: PagedKVManager | None = (
            manager if self.kernel_inputs and isinstance(manager, PagedKVManager) else None)
        self._grouped: GroupedKVManager | None = (
            manager if self._kernel_manager is not None
            and isinstance(manager, GroupedKVManager)
            and (manager.num_groups > 1 or manager.num_state_groups > 0) else None)
        self.waiting: deque[SequenceGroup] = deque()
        self.running = RunningSet(manager.rows_of, manager.rows)
        self.swapped: list[SequenceGroup] = []
        # Requests whose prompt KV is being received from another server (`add_remote`).
        self.receiving: dict[Hashable, SequenceGroup] = {}
        self._groups: dict[Hashable, SequenceGroup] = {}
        # Public counters (executors and the simulator read them instead of re-counting).
        self.num_preempted = {"swap": 0, "recompute": 0}  # groups, by mode
        self.num_rejected = 0
        self.num_recomputed_tokens = 0  # tokens whose KV preemption by recompute dropped

    # ---- requests -----------------------------------------------------------------------
    def add_request(self, request: Request) -> SequenceGroup:
        """Queue a request. Returns its group, already FINISHED (with a "rejected: ..."
        `finish_reason`) when the request can never run: a prompt that reaches
        `max_model_len` (or, with `reject_over_length`, prompt + output past it), a prompt
        over the token budget of a non-chunked step, or more sequences than `max_num_seqs`.
        A request too large for the whole KV cache is queued and rejected by the `schedule()`
        that would admit it (`SchedulerOutput.rejected`): that needs the manager's check."""
        if request.request_id in self._groups:
            raise ValueError(f"request {request.request_id!r} is already queued")
        group = self._new_group(request)
        reason = self._never_fits(request)
        if reason is not None:
            self._reject(group, reason)
            return group
        self._groups[request.request_id] = group
        self.waiting.append(group)
        return group

    def _new_group(self, request: Request) -> SequenceGroup:
        """The group of a request just queued, with its first sequence holding the prompt."""
        group = SequenceGroup(request, self.final_tokens(request))
        group.seqs.append(SequenceState((request.request_id, 0), group, request.prompt_tokens,
                                        token_ids=None if request.prompt_token_ids is None
                                        else list(request.prompt_token_ids)))
        return group

    def _never_fits(self, request: Request) -> str | None:
        cfg, p, limit = self.config, request.prompt_tokens, self.max_model_len
        if (limit is not None and cfg.reject_over_length
                and p + request.max_output_tokens > limit):
            return (f"prompt of {p} + output of {request.max_output_tokens} tokens exceeds "
                    f"max_model_len={limit}")
        if limit is not None and p >= limit:
            return f"prompt of {p} tokens reaches max_model_len={limit}"
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
        return bool(self.waiting or self.running or self.swapped or self.receiving)

    # ---- requests whose prompt KV is computed elsewhere (disaggregated prefill) ---------
    def add_remote(self, request: Request) -> tuple[SequenceGroup, AllocStatus, int]:
        """Reserve blocks for a request whose prompt KV another server computed and will
        send (prefill / decode disaggregation: this server decodes).

        Returns `(group, status, cached_tokens)`. OK: the prompt's blocks are allocated now
        (prefix hits shared; `cached_tokens` of the prompt are already here and need not be
        sent) and the group waits in `receiving` until `complete_remote`. LATER: no room now
        (blocks, or `max_num_seqs` counting the groups still receiving); nothing changed, call
        again later. NEVER: the group comes back FINISHED and rejected, as `add_request` and
        `schedule()` reject (too long, or more blocks than the cache has). Only requests of
        one sequence with at least 2 output tokens (the first is sampled where the prompt was
        computed) come here; others raise ValueError.
        """
        if request.request_id in self._groups:
            raise ValueError(f"request {request.request_id!r} is already queued")
        if request.width != 1 or request.max_output_tokens < 2:
            raise ValueError(f"request {request.request_id!r}: a remote prefill needs one "
                             "sequence and at least 2 output tokens")
        group = self._new_group(request)
        seq = group.seqs[0]
        reason = self._never_fits(request)
        if reason is not None:
            self._reject(group, reason)
            return group, AllocStatus.NEVER, 0
        if self.running.num_seq_slots + len(self.receiving) + 1 > self.config.max_num_seqs:
            return group, AllocStatus.LATER, 0
        status = self._can_allocate(group)
        if status is AllocStatus.NEVER:
            self._reject(group, "needs more KV blocks than the cache has")
            return group, status, 0
        if status is AllocStatus.LATER:
            return group, status, 0
        got = self.manager.allocate(seq.seq_id, request.prompt_tokens,
                                    **self._alloc_args(group, seq))
        seq.advance_prefill(got.num_cached_tokens)
        self._groups[request.request_id] = group
        self.receiving[request.request_id] = group
        return group, AllocStatus.OK, got.num_cached_tokens

    def complete_remote(self, request_id: Hashable) -> SequenceGroup:
        """The prompt KV of a `receiving` request has arrived: its blocks count as computed
        (and are registered for prefix caching), and it joins the running set decoding, its
        first token already sampled by the server that computed the prompt."""
        group = self.receiving.pop(request_id, None)
        if group is None:
            raise ValueError(f"request {request_id!r} is not receiving its KV")
        seq = group.seqs[0]
        known, computed = seq.prefill_counts
        seq.advance_prefill(known - computed)
        self.manager.mark_computed(seq.seq_id, known)
        seq.start_decoding()
        group.expanded = True
        self._start(group)
        self.running.changed()
        self._set_targets(self.manager.rows_of([seq.seq_id]), [seq])
        return group

    @property
    def num_running_seqs(self) -> int:
        return self.running.num_seqs

    def group(self, request_id: Hashable) -> SequenceGroup:
        """The group of a request still waiting, running or swapped.

        Finished requests leave the scheduler, so that a server running for days holds only
        its live requests: keep the group `add_request` returned (it is the same object, and
        keeps its `status` and `finish_reason`), or read it from `StepResult.finished` /
        `SchedulerOutput.rejected` of the step that ended it."""
        try:
            return self._groups[request_id]
        except KeyError:
            raise ValueError(f"request {request_id!r} is not waiting, running or swapped: "
                             "finished requests leave the scheduler (keep the group "
                             "add_request returned, or read StepResult.finished)") from None

    def num_tokens(self, seq: SequenceState) -> int:
        """Tokens the sequence knows, in any phase (see `SequenceState`)."""
        if seq.decoding:
            return self.manager.num_tokens(seq.seq_id) + 1
        return seq.num_tokens  # type: ignore[return-value]

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
            admitted = False
            if not self.swapped and self.waiting and self._may_admit():
                self._admit(out)
                if out.prefills:
                    out.num_decode_steps = 1
                    admitted = True
            if not admitted:
                self._schedule_decodes(out)
                if not out.preempted:
                    self._swap_in(out)
        else:
            self._schedule_decodes(out)
            self._continue_prefills(out)
            if not out.preempted:
                self._swap_in(out)
                if not self.swapped and self._may_admit():
                    self._admit(out)
        # Copies to and from the host prefix tier that this step's allocations caused.
        out.offload, out.load = self.manager.take_host_transfers()
        return out

    def _may_admit(self) -> bool:
        """Static batching admits a new batch only once the running one has finished."""
        return self.config.batching == "continuous" or not self.running

    def _schedule_decodes(self, out: SchedulerOutput) -> None:
        m, k, extra = self.manager, out.num_decode_steps, self.config.num_lookahead_slots
        rows, seqs = self.running.decode_batch()
        while rows.size:
            try:  # plans once in the common case; raises before changing anything
                got = m.append_slots_batch(rows, k, extra,
                                           token_ids=self._decode_tokens(rows, seqs, k))
                break
            except OutOfBlocksError as exc:
                need = exc.needed
            if k > 1:  # a multi-step window that does not fit shrinks to one step first:
                k = out.num_decode_steps = 1  # preemption happens when single steps need it
                continue
            victim = self.running.last
            if len(self.running) == 1 and not self.receiving:
                # Only running groups (and ones receiving remote KV, which will run) hold
                # GPU blocks: one that cannot grow in an otherwise empty cache never will,
                # and preempting it would loop forever.
                self._drop(victim, out, f"outgrew the KV cache: needs {need} more blocks, "
                                        f"{m.num_free_blocks()} are free with nothing else running")
            else:
                self._preempt(victim, out)
            rows, seqs = self.running.decode_batch()
        if not rows.size:
            return
        out.decode_rows, out.decode_seqs, out.decode_slots = rows, seqs, got.slots
        out.decode_seq_lens = m.seq_lens(rows)
        if self._kernel_manager is not None:
            out.decode_block_tables = self._kernel_manager.block_tables_array(rows)
            if self._grouped is not None:
                out.decode_group_block_tables = self._grouped.group_block_tables(rows)
                out.decode_group_slots = got.group_slots or ()
                out.decode_state_pages = self._grouped.state_pages(rows)
        out.copies = got.copies

    def _decode_tokens(self, rows: np.ndarray, seqs: list[SequenceState],
                       k: int) -> np.ndarray | None:
        """int64 `[B, k]` ids of the tokens the step computes (-1 where unknown), for prefix
        caching of generated blocks; None when no running sequence carries token ids."""
        if not self.running.tracks_tokens:
            return None
        held = self.manager.seq_lens(rows).tolist()
        out = np.full((len(seqs), k), -1, dtype=np.int64)
        for i, (seq, start) in enumerate(zip(seqs, held, strict=True)):
            ids = seq.token_ids
            if ids is None:
                continue
            part = ids[start : start + k]  # what the executor appended (sampled or known)
            out[i, : len(part)] = part
        return out

    def _continue_prefills(self, out: SchedulerOutput) -> None:
        budget = self.config.max_num_batched_tokens - out.num_batched_tokens
        for group in self.running:
            for seq in group.seqs:
                if budget <= 0:
                    return
                if seq.decoding:
                    continue
                known, computed = seq.prefill_counts
                if computed < known:
                    count = min(known - computed, budget)
                    out.prefills.append(self._chunk(seq, computed, count))
                    budget -= count

    def _chunk(self, seq: SequenceState, start: int, count: int) -> PrefillChunk:
        chunk = PrefillChunk(seq, start, count, start + count == seq.prefill_counts[0])
        km = self._kernel_manager
        if km is not None:
            chunk.slots = km.slot_mapping(seq.seq_id, start, start + count)
            chunk.block_table = km.block_ids(seq.seq_id)
            if self._grouped is not None:  # a hybrid manager: each group's slots too
                chunk.group_slots = tuple(
                    self._grouped.group_slot_mapping(g, seq.seq_id, start, start + count)
                    for g in range(self._grouped.num_groups))
                rows = km.rows_of([seq.seq_id])
                chunk.group_block_tables = tuple(
                    table[0] for table in self._grouped.group_block_tables(rows))
                chunk.state_pages = tuple(p[0] for p in self._grouped.state_pages(rows))
        return chunk

    def _admit(self, out: SchedulerOutput) -> None:
        cfg, m = self.config, self.manager
        budget = cfg.max_num_batched_tokens - out.num_batched_tokens
        while self.waiting and budget > 0:
            group = self.waiting[0]
            if self.running.num_seq_slots + group.request.width > cfg.max_num_seqs:
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
            tokens = sum(s.prefill_counts[0] for s in group.seqs)
            # A recomputation may have outgrown the budget its prompt fitted: it runs alone in
            # its step rather than never again.
            alone = group.num_preemptions > 0 and not out.prefills
            if not cfg.chunked_prefill and tokens > budget and not alone:
                return
            self.waiting.popleft()
            for seq in group.seqs:
                got = m.allocate(seq.seq_id, seq.prefill_counts[0],
                                 **self._alloc_args(group, seq))
                seq.advance_prefill(got.num_cached_tokens)
                known, computed = seq.prefill_counts
                count = known - computed
                if cfg.chunked_prefill:
                    count = min(count, budget)
                if count > 0:
                    out.prefills.append(self._chunk(seq, computed, count))
                    budget -= count
            self._start(group)
            out.admitted.append(group)

    def _can_allocate(self, group: SequenceGroup) -> AllocStatus:
        if len(group.seqs) > 1:  # a recomputation: independent sequences
            return self.manager.can_allocate_many([s.prefill_counts[0] for s in group.seqs],
                                                  max_tokens=group.final_tokens)
        seq = group.seqs[0]
        return self.manager.can_allocate(seq.prefill_counts[0],
                                         **self._alloc_args(group, seq))

    def _alloc_args(self, group: SequenceGroup, seq: SequenceState) -> dict:
        request = group.request
        token_ids = _known_tokens(seq, seq.prefill_counts[0])
        return {
            "token_ids": token_ids,
            # Keys made once at arrival apply to the prompt alone.
            "block_hashes": request.block_hashes
            if token_ids is None or seq.num_tokens == request.prompt_tokens else None,
            "max_tokens": group.final_tokens,
            "num_seqs": 1 if group.expanded else request.width,
        }

    def final_tokens(self, request: Request) -> int:
        """Tokens a sequence of the request holds at most: prompt + output, capped at
        `max_model_len`."""
        total = request.prompt_tokens + request.max_output_tokens
        limit = self.max_model_len
        return total if limit is None else min(total, limit)

    def _swap_in(self, out: SchedulerOutput) -> None:
        pairs = []
        while self.swapped:
            group = self.swapped[0]
            ids = [s.seq_id for s in group.seqs]
            if self.running.num_seq_slots + group.request.width > self.config.max_num_seqs:
                break
            if self.manager.can_swap_in(ids) is not AllocStatus.OK:
                break
            pairs.append(self.manager.swap_in(ids))
            self.swapped.pop(0)
            self._start(group)
            out.swapped_in.append(group)
        if pairs:
            out.swap_in = np.concatenate(pairs)

    # ---- recording a step ---------------------------------------------------------------
    def complete_step(
        self, out: SchedulerOutput, finished_seq_ids: Iterable[Hashable] = ()
    ) -> StepResult:
        """Record that `out` ran: its KV is computed (the manager may now share its full
        blocks), prompts that completed start decoding (forked into their samples / beams),
        and sequences stop: at their length limit, or when named in `finished_seq_ids`
        (end-of-sequence token)."""
        m = self.manager
        result = StepResult()
        started: list[SequenceState] = []
        for chunk in out.prefills:
            seq = chunk.seq
            seq.advance_prefill(chunk.count)
            known, computed = seq.prefill_counts
            m.mark_computed(seq.seq_id, computed)
            if computed == known:
                seq.start_decoding()
                started.append(seq)
        if out.decode_rows.size:
            m.mark_computed_batch(out.decode_rows)
        children: list[SequenceState] = []
        for seq in started:
            group = seq.group
            if not group.expanded:  # the prompt's first token, not a recomputation
                group.expanded = True
                result.first_token.append(group)
                if group.request.width > 1:
                    children += self._expand(group, seq)
        done: list[SequenceState] = []
        if started:
            self.running.changed()
            started += children
            rows = m.rows_of([s.seq_id for s in started])
            self._set_targets(rows, started)
            hit = np.flatnonzero(m.seq_lens(rows) >= self.running.targets(rows))
            done += [started[i] for i in hit.tolist()]
        if out.decode_rows.size:
            lengths = m.seq_lens(out.decode_rows)
            hit = np.flatnonzero(lengths >= self.running.targets(out.decode_rows))
            done += [out.decode_seqs[i] for i in hit.tolist()]
        for seq_id in finished_seq_ids:
            seq = self._seq(seq_id)
            if all(seq is not d for d in done):
                done.append(seq)
        if done:
            result.finished = self._finish(done)
        return result

    def _expand(self, group: SequenceGroup, seq: SequenceState) -> list[SequenceState]:
        """Fork the computed prompt into the group's samples / beams (sharing its blocks)."""
        children = [SequenceState(group.new_seq_id(), group, decoding=True,
                                  token_ids=None if seq.token_ids is None
                                  else list(seq.token_ids))
                    for _ in range(group.request.width - 1)]
        self.manager.fork_many([seq.seq_id] * len(children), [c.seq_id for c in children])
        group.seqs += children
        return children

    def _set_targets(self, rows: np.ndarray, seqs: list[SequenceState]) -> None:
        # Decoding, the manager holds num_tokens - 1 slots: stop when it reaches total - 1.
        targets = np.fromiter((s.group.final_tokens - 1 for s in seqs),
                              dtype=np.int64, count=len(seqs))
        self.running.set_targets(rows, targets)

    def _finish(self, seqs: list[SequenceState]) -> list[SequenceGroup]:
        self.manager.free_many([s.seq_id for s in seqs])
        finished = []
        for seq in seqs:
            group = seq.group
            group.seqs.remove(seq)
            if not group.seqs:
                group.status = GroupStatus.FINISHED
                group.finish_reason = group.finish_reason or "finished"
                self.running.remove(group)
                del self._groups[group.request_id]
                finished.append(group)
        self.running.changed()
        return finished

    def finish_seqs(self, seq_ids: Iterable[Hashable]) -> list[SequenceGroup]:
        """End running sequences between steps, for stop conditions `complete_step` could not
        be told: a sample or beam forked inside that very step (after the prompt) that drew
        an end-of-sequence token first. Returns the groups this finished.

        Raises ValueError, changing nothing, for an unknown sequence or one whose group is not
        running on the GPU."""
        seqs = [self._seq(seq_id) for seq_id in seq_ids]
        for seq in seqs:
            if seq.group.status is not GroupStatus.RUNNING:
                raise ValueError(f"sequence {seq.seq_id!r} is not running "
                                 f"(its request is {seq.group.status.value})")
        if len({id(s) for s in seqs}) != len(seqs):
            raise ValueError("seq_ids lists a sequence twice")
        return self._finish(seqs) if seqs else []

    def _seq(self, seq_id: Hashable) -> SequenceState:
        request_id = seq_id[0] if isinstance(seq_id, tuple) and seq_id else None
        group = self._groups.get(request_id)
        if group is not None:
            for seq in group.seqs:
                if seq.seq_id == seq_id:
                    return seq
        raise ValueError(f"unknown sequence {seq_id!r}")

    # ---- executor-driven changes (beam search, aborts) ----------------------------------
    def fork_seq(self, parent_seq_id: Hashable) -> SequenceState:
        """A new decoding sequence sharing all of a running sequence's blocks (a new beam)."""
        parent = self._seq(parent_seq_id)
        if parent.group.status is not GroupStatus.RUNNING or not parent.decoding:
            raise ValueError(f"sequence {parent_seq_id!r} is not decoding on the GPU")
        group = parent.group
        child = SequenceState(group.new_seq_id(), group, decoding=True,
                              token_ids=None if parent.token_ids is None
                              else list(parent.token_ids))
        self.manager.fork(parent.seq_id, child.seq_id)
        group.seqs.append(child)
        self._set_targets(self.manager.rows_of([child.seq_id]), [child])
        self.running.changed()
        return child

    def free_seq(self, seq_id: Hashable) -> None:
        """Drop one sequence of a running group (a pruned beam); the group keeps running."""
        seq = self._seq(seq_id)
        if len(seq.group.seqs) == 1:
            raise ValueError(f"sequence {seq_id!r} is its group's last: finish it instead")
        self.manager.free(seq.seq_id)
        seq.group.seqs.remove(seq)
        self.running.changed()

    def abort(self, request_id: Hashable) -> SequenceGroup:
        """Stop a request wherever it is and free its blocks."""
        group = self.group(request_id)
        allocated = [s.seq_id for s in group.seqs if s.seq_id in self.manager]
        if allocated:
            self.manager.free_many(allocated)
        if group in self.running:
            self.running.remove(group)
        if group in self.swapped:
            self.swapped.remove(group)
        if group in self.waiting:
            self.waiting.remove(group)
        self.receiving.pop(request_id, None)
        group.status = GroupStatus.FINISHED
        group.finish_reason = "aborted"
        del self._groups[request_id]
        return group

    # ---- the running set and preemption -------------------------------------------------
    def _start(self, group: SequenceGroup) -> None:
        group.status = GroupStatus.RUNNING
        self.running.add(group)

    def _preempt(self, group: SequenceGroup, out: SchedulerOutput) -> None:
        m = self.manager
        ids = [s.seq_id for s in group.seqs]
        mode = self.config.preemption
        if mode == "auto":
            mode = "swap" if len(group.seqs) > 1 else "recompute"
        if mode == "swap" and (not m.has_swap_space or not m.can_swap_out(ids)):
            mode = "recompute"  # no room to swap: reported as a recompute in `out.preempted`
        self.running.remove(group)
        if mode == "swap":
            out.swap_out = np.concatenate([out.swap_out, m.swap_out(ids)])
            group.status = GroupStatus.SWAPPED
            self._insert_by_arrival(self.swapped, group)
        else:
            for seq in group.seqs:  # the counts come back from the manager before it frees
                if seq.decoding:
                    held = m.num_tokens(seq.seq_id)
                    group.num_recomputed_tokens += held
                    self.num_recomputed_tokens += held
                    seq.restart(held + 1)
                else:
                    known, computed = seq.prefill_counts
                    group.num_recomputed_tokens += computed
                    self.num_recomputed_tokens += computed
                    seq.restart(known)
            m.free_many(ids)
            group.status = GroupStatus.WAITING
            self.waiting.appendleft(group)
        group.num_preemptions += 1
        self.num_preempted[mode] += 1
        out.preempted.append((group, mode))

    def _drop(self, group: SequenceGroup, out: SchedulerOutput, reason: str) -> None:
        """End a running group that can never finish, freeing its blocks."""
        self.manager.free_many([s.seq_id for s in group.seqs])
        self.running.remove(group)
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


def _one_limit(manager: KVManager, config: SchedulerConfig) -> int | None:
    """The one `max_model_len`: the manager's, which `config` may repeat but not contradict
    (the manager would refuse the appends a larger scheduler limit allows)."""
    own, given = manager.max_model_len, config.max_model_len
    if own is not None and given is not None and own != given:
        raise ValueError(f"max_model_len: SchedulerConfig says {given} but the manager "
                         f"({type(manager).__name__}) holds sequences to {own}; set it once, "
                         f"in the manager's configuration (CacheConfig.max_model_len)")
    return own if own is not None else given


def _known_tokens(seq: SequenceState, upto: int) -> list[int] | None:
    """The sequence's first `upto` token ids, when the executor has given that many
    (`SequenceState.token_ids`: appended as sampled, or the whole stream up front)."""
    ids = seq.token_ids
    if ids is None or len(ids) < upto:
        return None
    return ids[:upto] if len(ids) > upto else ids


__all__ = [
    "PREEMPTION_MODES",
    "PrefillChunk",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "StepResult",
]
