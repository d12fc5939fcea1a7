"""The running set: the groups that hold GPU memory, in priority order, and their batch.

It owns everything that must change together when a group starts or stops running, or a
sequence joins or leaves one: the FCFS-ordered list of groups, how many sequences they may
grow to (`max_num_seqs` counts a group at its full width), the decode batch (rows and states
of every decoding sequence, rebuilt only after the set changes), and each row's stop length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from kvpager.core.rows import RowTable
from kvpager.core.sched.request import SequenceGroup, SequenceState

#: The running set's column of the manager's row table: each decoding row's stop length.
STOP_COLUMN = "stop_target"


class RunningSet:
    """Running groups in priority order, with their cached decode batch.

    Args:
        rows_of: the manager's `rows_of` (sequence ids -> int64 rows).
        rows: the manager's row table (`KVManager.rows`): the stop lengths are its
            `stop_target` column, so a reused row starts at 0 whatever order its previous
            sequence was cleaned up in, and no array here grows on its own.
    """

    def __init__(self, rows_of: Callable[[list], np.ndarray], rows: RowTable) -> None:
        self._rows_of = rows_of
        if not rows.has_column(STOP_COLUMN):  # a second scheduler on one manager shares it
            rows.add_column(STOP_COLUMN, np.int64, 0)
        self._rows = rows
        self.groups: list[SequenceGroup] = []
        self.num_seq_slots = 0  # sum of request.width over the groups
        self._num_with_tokens = 0  # groups whose sequences carry token ids
        self._batch: tuple[np.ndarray, list[SequenceState]] | None = None

    def __iter__(self) -> Iterator[SequenceGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def __contains__(self, group: object) -> bool:
        return any(g is group for g in self.groups)

    @property
    def last(self) -> SequenceGroup:
        """The lowest-priority group: the first to preempt."""
        return self.groups[-1]

    @property
    def tracks_tokens(self) -> bool:
        """Whether any running group carries token ids (worth passing to the manager)."""
        return self._num_with_tokens > 0

    @property
    def num_seqs(self) -> int:
        return sum(len(g.seqs) for g in self.groups)

    def all_seqs(self) -> list[SequenceState]:
        return [s for g in self.groups for s in g.seqs]

    # ---- changes (each drops the cached batch) ------------------------------------------
    def add(self, group: SequenceGroup) -> None:
        self.groups.append(group)
        self.num_seq_slots += group.request.width
        self._num_with_tokens += group.request.prompt_token_ids is not None
        self._batch = None

    def remove(self, group: SequenceGroup) -> None:
        self.groups.remove(group)
        self.num_seq_slots -= group.request.width
        self._num_with_tokens -= group.request.prompt_token_ids is not None
        self._batch = None

    def changed(self) -> None:
        """A sequence of a running group was added, removed or started decoding."""
        self._batch = None

    # ---- the decode batch ---------------------------------------------------------------
    def decode_batch(self) -> tuple[np.ndarray, list[SequenceState]]:
        """Rows and states of every decoding sequence, in priority order."""
        if self._batch is None:
            seqs = [s for g in self.groups for s in g.seqs if s.decoding]
            self._batch = (self._rows_of([s.seq_id for s in seqs]), seqs)
        return self._batch

    def set_targets(self, rows: np.ndarray, targets: np.ndarray) -> None:
        """Stop lengths (int64, in manager slots) of rows."""
        self._rows.stop_target[rows] = targets

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """Stop lengths of rows (int64, a copy)."""
        return self._rows.stop_target[rows]
