"""One scheduler step as plain data: what to compute, where its K/V goes, which blocks to
move, and what happened. An executor (the engine, the simulator) carries a
`SchedulerOutput` out without asking the manager anything."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvpager.core.plans import EMPTY_PAIRS
from kvpager.core.sched.request import SequenceGroup, SequenceState

_NO_TABLES = np.zeros((0, 0), dtype=np.int32)
_NO_TABLES.flags.writeable = False
_NO_INT64 = np.zeros(0, dtype=np.int64)
_NO_INT64.flags.writeable = False
_NO_INT32 = np.zeros(0, dtype=np.int32)
_NO_INT32.flags.writeable = False
# Defaults are fresh read-only views of shared empty arrays: a step is built every few tens
# of microseconds, and a C-level `view` is far cheaper than a Python factory making an array.
# An executor replaces a field, never writes into an empty one.


@dataclass
class PrefillChunk:
    """Compute known tokens `start .. start + count - 1` of a sequence (prompt or
    recomputation).

    slots: int64 `[count]` cache slots of those tokens. block_table: int32 GPU blocks of the
    sequence covering positions `0 .. start + count - 1` (the history the chunk attends to
    is `block_table[: ceil(start / block_size)]`). completes: whether the chunk computes the
    sequence's last known token (then the model samples one).
    """

    seq: SequenceState
    start: int
    count: int
    completes: bool
    slots: np.ndarray = field(default_factory=_NO_INT64.view)
    block_table: np.ndarray = field(default_factory=_NO_INT32.view)
    #: With several KV-cache groups (`HybridKVCacheManager`): each group's int64 slots of
    #: the chunk's tokens, group 0's being `slots`; empty otherwise.
    group_slots: tuple[np.ndarray, ...] = ()
    #: With several KV-cache groups: each group's int32 GPU blocks covering positions
    #: `0 .. start + count - 1` (released window entries read 0; group 0's equals
    #: `block_table` but for those); empty otherwise.
    group_block_tables: tuple[np.ndarray, ...] = ()
    #: With state groups (linear attention / Mamba): per state group, the int32 `[P_g]`
    #: pages holding the sequence's recurrent state; empty otherwise.
    state_pages: tuple[np.ndarray, ...] = ()


@dataclass
class SchedulerOutput:
    """One step's work. Block pairs are int64 `[n, 2]` (src, dst).

    The executor carries it out in this order: `offload` (GPU blocks being reused are saved
    to the host prefix tier first), `swap_out`, `swap_in`, `load` (prefix blocks back from
    the host tier), `copies`, then the forward pass (writes at each prefill chunk's `slots`
    and at `decode_slots`), then reports back with `Scheduler.complete_step`.

    Decode fields, for the `num_decode_steps` tokens each decoding sequence computes:
    decode_rows: int64 `[B]` manager rows. decode_slots: int64 `[B * num_decode_steps]`,
    row-major. decode_seq_lens: int64 `[B]` tokens each holds after the step (the
    attention length). decode_block_tables: int32 `[B, W]` GPU block tables padded with 0
    (empty `[0, 0]` when the scheduler was built with `kernel_inputs=False`, as a simulator
    that runs no kernel is).
    """

    prefills: list[PrefillChunk] = field(default_factory=list)
    decode_seqs: list[SequenceState] = field(default_factory=list)
    decode_rows: np.ndarray = field(default_factory=_NO_INT64.view)
    decode_slots: np.ndarray = field(default_factory=_NO_INT64.view)
    decode_seq_lens: np.ndarray = field(default_factory=_NO_INT64.view)
    decode_block_tables: np.ndarray = field(default_factory=_NO_TABLES.view)
    #: With several KV-cache groups: per group, its int32 `[B, W_g]` block tables
    #: (released window entries read 0, never read by a kernel) and its int64 decode slots;
    #: group 0's are `decode_block_tables` / `decode_slots`. Empty for one group.
    decode_group_block_tables: tuple[np.ndarray, ...] = ()
    decode_group_slots: tuple[np.ndarray, ...] = ()
    #: With state groups: per state group, int32 `[B, P_g]` pages of each decoding
    #: sequence's state (shared pages were copied by `copies` first). Empty otherwise.
    decode_state_pages: tuple[np.ndarray, ...] = ()
    num_decode_steps: int = 1
    copies: np.ndarray = field(default_factory=EMPTY_PAIRS.view)
    swap_in: np.ndarray = field(default_factory=EMPTY_PAIRS.view)
    swap_out: np.ndarray = field(default_factory=EMPTY_PAIRS.view)
    offload: np.ndarray = field(default_factory=EMPTY_PAIRS.view)  # (gpu, host)
    load: np.ndarray = field(default_factory=EMPTY_PAIRS.view)  # (host, gpu)
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
                    or self.swap_out.size or self.offload.size or self.load.size
                    or self.preempted or self.rejected)


@dataclass
class StepResult:
    """What `complete_step` observed: groups that got their first token, and finished ones."""

    first_token: list[SequenceGroup] = field(default_factory=list)
    finished: list[SequenceGroup] = field(default_factory=list)
