"""Recording what a scheduled step did: computed tokens, first tokens, finished sequences,
and the changes an executor makes between steps (beam search's forks and prunings, aborts).

A mixin of `Scheduler` (kept apart because deciding a step and recording it are separate
concerns); it uses the scheduler's manager, queues and per-row length targets.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np

from kvpager.request import GroupStatus, SequenceGroup, SequenceState
from kvpager.step import SchedulerOutput, StepResult


class CompletionMixin:
    """`complete_step`, `finish_seqs`, `fork_seq`, `free_seq` and `abort` of `Scheduler`."""

    def complete_step(
        self, out: SchedulerOutput, finished_seq_ids: Iterable[Hashable] = ()
    ) -> StepResult:
        """Record that `out` ran. `finished_seq_ids`: sequences that stopped on their own
        (end-of-sequence token); sequences reaching their length limit stop here."""
        result = StepResult()
        started: list[SequenceState] = []
        for chunk in out.prefills:
            seq = chunk.seq
            seq.num_computed += chunk.count
            self.manager.mark_computed(seq.seq_id, seq.num_computed)
            if seq.num_computed == seq.num_tokens:
                seq.decoding = True
                started.append(seq)
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
            self._batch = None
            started += children
            rows = self.manager.rows_of([s.seq_id for s in started])
            self._set_targets(rows, started)
            hit = np.flatnonzero(self.manager.seq_lens(rows) >= self._target[rows])
            done += [started[i] for i in hit.tolist()]
        if out.decode_rows.size:
            lengths = self.manager.seq_lens(out.decode_rows)
            hit = np.flatnonzero(lengths >= self._target[out.decode_rows])
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
        children = [SequenceState(group.new_seq_id(), group, seq.num_tokens, seq.num_computed,
                                  decoding=True,
                                  token_ids=None if seq.token_ids is None
                                  else list(seq.token_ids))
                    for _ in range(group.request.width - 1)]
        self.manager.fork_many([seq.seq_id] * len(children), [c.seq_id for c in children])
        group.seqs += children
        return children

    def _set_targets(self, rows: np.ndarray, seqs: list[SequenceState]) -> None:
        if rows.size and int(rows.max()) >= self._target.size:
            grown = np.zeros(max(2 * self._target.size, int(rows.max()) + 1), dtype=np.int64)
            grown[: self._target.size] = self._target
            self._target = grown
        for row, seq in zip(rows.tolist(), seqs, strict=True):
            # Decoding, the manager holds num_tokens - 1 slots: stop when it reaches total - 1.
            self._target[row] = self._final_tokens(seq.group.request) - 1

    def _finish(self, seqs: list[SequenceState]) -> list[SequenceGroup]:
        self.manager.free_many([s.seq_id for s in seqs])
        finished = []
        for seq in seqs:
            group = seq.group
            group.seqs.remove(seq)
            if not group.seqs:
                group.status = GroupStatus.FINISHED
                group.finish_reason = group.finish_reason or "finished"
                self._stop(group)
                del self._groups[group.request_id]
                finished.append(group)
        self._batch = None
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

    # ---- executor-driven changes (beam search) ------------------------------------------
    def fork_seq(self, parent_seq_id: Hashable) -> SequenceState:
        """A new decoding sequence sharing all of a running sequence's blocks (a new beam)."""
        parent = self._seq(parent_seq_id)
        if parent.group.status is not GroupStatus.RUNNING or not parent.decoding:
            raise ValueError(f"sequence {parent_seq_id!r} is not decoding on the GPU")
        group = parent.group
        child = SequenceState(group.new_seq_id(), group, parent.num_tokens, parent.num_computed,
                              decoding=True, token_ids=None if parent.token_ids is None
                              else list(parent.token_ids))
        self.manager.fork(parent.seq_id, child.seq_id)
        group.seqs.append(child)
        self._set_targets(self.manager.rows_of([child.seq_id]), [child])
        self._batch = None
        return child

    def free_seq(self, seq_id: Hashable) -> None:
        """Drop one sequence of a running group (a pruned beam); the group keeps running."""
        seq = self._seq(seq_id)
        if len(seq.group.seqs) == 1:
            raise ValueError(f"sequence {seq_id!r} is its group's last: finish it instead")
        self.manager.free(seq.seq_id)
        seq.group.seqs.remove(seq)
        self._batch = None

    def abort(self, request_id: Hashable) -> SequenceGroup:
        """Stop a request wherever it is and free its blocks."""
        group = self.group(request_id)
        allocated = [s.seq_id for s in group.seqs if s.seq_id in self.manager]
        if allocated:
            self.manager.free_many(allocated)
        if group in self.running:
            self._stop(group)
        if group in self.swapped:
            self.swapped.remove(group)
        if group in self.waiting:
            self.waiting.remove(group)
        group.status = GroupStatus.FINISHED
        group.finish_reason = "aborted"
        del self._groups[request_id]
        self._batch = None
        return group
