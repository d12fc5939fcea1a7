"""What the memory manager answers: small result types, plain data an executor carries out.

The manager never touches K/V memory. Each call that changes block tables answers with the
work an executor must do for it: slots to write, (src, dst) block pairs to copy or move.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np


class AllocStatus(enum.Enum):
    """Whether a request's blocks can be allocated.

    OK: now. LATER: not now, but once running sequences free their blocks. NEVER: the request
    cannot fit even in an empty cache (reject it instead of waiting forever).
    """

    OK = "ok"
    LATER = "later"
    NEVER = "never"


@dataclass(frozen=True)
class Allocation:
    """What `KVCacheManager.allocate` did for a prompt.

    blocks: int32 `[num_blocks]` GPU block table. num_cached_tokens: leading prompt tokens
    whose KV is already in the cache (prefix hits); the caller computes only the rest.
    """

    seq_id: object
    blocks: np.ndarray
    num_cached_tokens: int


@dataclass(slots=True)
class AppendResult:
    """What appending tokens did.

    slots: int64 `[num_new_tokens]` (per sequence, concatenated in batch order for batches),
    where `reshape_and_cache` writes the new tokens' K/V. copies: int64 `[num_copies, 2]` of
    (src, dst) GPU blocks to copy *before* that write (copy-on-write of shared blocks).
    group_slots: per KV-cache group, that group's slots (a hybrid manager's).
    """

    slots: np.ndarray
    copies: np.ndarray
    #: With several KV-cache groups: each group's slots, group 0's being `slots` (None for
    #: a single-group manager).
    group_slots: tuple[np.ndarray, ...] | None = None

    # A plain slotted dataclass, not a frozen one: a per-sequence decode step builds one per
    # sequence, and a frozen dataclass costs three times as much to build.

    @property
    def num_copies(self) -> int:
        return int(self.copies.shape[0])


EMPTY_PAIRS = np.zeros((0, 2), dtype=np.int64)
EMPTY_PAIRS.flags.writeable = False
