"""One scheduler step as plain data: what to compute, which blocks to move, what happened."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvpager.config import EMPTY_PAIRS
from kvpager.request import SequenceGroup, SequenceState


@dataclass
class PrefillChunk:
    """Compute tokens `start .. start + count - 1` of a sequence (prompt or recomputation)."""

    seq: SequenceState
    start: int
    count: int

    @property
    def completes(self) -> bool:
        """Whether this chunk computes the sequence's last known token (a token is sampled)."""
        return self.start + self.count == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    """One step's work. Block pairs are int64 `[n, 2]` (src, dst)."""

    prefills: list[PrefillChunk] = field(default_factory=list)
    decode_seqs: list[SequenceState] = field(default_factory=list)
    decode_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    decode_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    num_decode_steps: int = 1
    copies: np.ndarray = field(default_factory=lambda: EMPTY_PAIRS)
    swap_in: np.ndarray = field(default_factory=lambda: EMPTY_PAIRS)
    swap_out: np.ndarray = field(default_factory=lambda: EMPTY_PAIRS)
    admitted: list[SequenceGroup] = field(default_factory=list)
    swapped_in: list[SequenceGroup] = field(default_factory=list)
    preempted: list[tuple[SequenceGroup, str]] = field(default_factory=list)
    rejected: list[SequenceGroup] = field(default_factory=list)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.count for c in self.prefills)

    @property
    def num_decode_tokens(self) -> int:
        return int(self.decode_rows.size) * self.num_decode_steps

    @property
    def num_batched_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def is_empty(self) -> bool:
        """Nothing computed, moved, preempted or rejected: the step changed nothing."""
        return not (self.prefills or self.decode_rows.size or self.swap_in.size
                    or self.swap_out.size or self.preempted or self.rejected)


@dataclass
class StepResult:
    """What `complete_step` observed: groups that got their first token, and finished ones."""

    first_token: list[SequenceGroup] = field(default_factory=list)
    finished: list[SequenceGroup] = field(default_factory=list)
