"""Requests and the sequences the scheduler runs for them.

A request becomes a `SequenceGroup`: one sequence for its prompt, which after the prompt is
computed becomes `n` parallel samples or `beam_width` beams, all forked from it so that they
share the prompt's blocks.

Token accounting, the same for every phase: a sequence *knows* `num_tokens` tokens (prompt
plus generated) and has KV for the first `num_computed` of them. A step computes a chunk of
the known-but-uncomputed tokens; when it computes the last of them, the model samples one new
token. So a prompt of P tokens is a prefill of P (the first output token comes out of it),
each decode step computes the one token sampled last, and a sequence preempted by
recomputation is a prefill of all its known tokens again. While decoding, a sequence always
knows exactly one token more than it has computed.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np


class GroupStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Request:
    """What a client asks for.

    Args:
        request_id: any hashable id, unique among live requests.
        prompt_tokens: prompt length, > 0.
        max_output_tokens: tokens to generate at most (> 0); in simulation, the true length.
        arrival_time: seconds, for FCFS order and latency metrics.
        n: parallel samples (shared prompt, independent continuations).
        beam_width: beams of a beam search (n and beam_width > 1 together is an error).
        prompt_token_ids: the prompt's token ids, for content-hashed prefix caching.
        block_hashes: chained keys of the prompt's full blocks: a caller's own, instead of
            token ids, or kvpager's digests of `prompt_token_ids` made once at arrival.
    """

    request_id: Hashable
    prompt_tokens: int
    max_output_tokens: int
    arrival_time: float = 0.0
    n: int = 1
    beam_width: int = 1
    prompt_token_ids: Sequence[int] | None = None
    block_hashes: Sequence[Hashable] | None = None
    #: Sequences the request runs once its prompt is computed: max(n, beam_width). Set at
    #: construction (the scheduler reads it for every admission check).
    width: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_count("prompt_tokens", self.prompt_tokens, 1)
        _check_count("max_output_tokens", self.max_output_tokens, 1)
        _check_count("n", self.n, 1)
        _check_count("beam_width", self.beam_width, 1)
        if self.n > 1 and self.beam_width > 1:
            raise ValueError(f"request {self.request_id!r}: n={self.n} and "
                             f"beam_width={self.beam_width}; use one or the other")
        if self.prompt_token_ids is not None and len(self.prompt_token_ids) != self.prompt_tokens:
            raise ValueError(f"request {self.request_id!r}: prompt_token_ids has "
                             f"{len(self.prompt_token_ids)} ids, prompt_tokens is "
                             f"{self.prompt_tokens}")
        object.__setattr__(self, "width", max(self.n, self.beam_width))



class SequenceState:
    """One sequence of a group.

    Its token counts live in one place at a time. While the sequence waits or prefills they
    are here: `num_tokens` known, `num_computed` with KV. While it decodes on the GPU the
    manager holds them (its count is the tokens with slots; one more token is known, the one
    sampled last), and here they read None: `Scheduler.num_tokens(seq)` answers for every
    phase. The scheduler hands them over with `start_decoding()` (prompt computed) and
    `restart(n)` (preempted for recomputation: n known tokens, none computed).

    `token_ids` is for executors that know the tokens: a real engine appends what it
    samples; a simulator replaying a trace's outputs sets the whole stream (prompt + outputs)
    up front. Only the first `n` ids matter while the sequence holds `n` tokens; the scheduler
    passes them to the manager for prefix caching.
    """

    __slots__ = ("_num_computed", "_num_tokens", "decoding", "group", "seq_id", "token_ids")

    def __init__(self, seq_id: Hashable, group: SequenceGroup, num_tokens: int | None = None,
                 num_computed: int = 0, *, decoding: bool = False,
                 token_ids: list[int] | None = None) -> None:
        self.seq_id = seq_id
        self.group = group
        self.token_ids = token_ids
        self._num_tokens = None if decoding else num_tokens
        self._num_computed = None if decoding else num_computed
        #: Whether the sequence decodes on the GPU (its counts are the manager's). A plain
        #: attribute, kept in step by `start_decoding` / `restart`: the running set reads it
        #: for every sequence whenever its decode batch changes.
        self.decoding = decoding
        if not decoding and num_tokens is None:
            raise ValueError(f"sequence {seq_id!r}: num_tokens is needed unless decoding")

    @property
    def num_tokens(self) -> int | None:
        """Tokens known, while waiting or prefilling; None while decoding."""
        return self._num_tokens

    @property
    def num_computed(self) -> int | None:
        """Tokens with KV, while waiting or prefilling; None while decoding."""
        return self._num_computed

    @property
    def prefill_counts(self) -> tuple[int, int]:
        """(known, computed) tokens of a sequence that waits or prefills; RuntimeError while
        it decodes (its counts are the manager's then). The scheduler's prefill paths read
        this instead of the Optional properties above."""
        if self._num_tokens is None or self._num_computed is None:
            raise RuntimeError(f"sequence {self.seq_id!r} is decoding: its counts are the "
                               "manager's")
        return self._num_tokens, self._num_computed

    def advance_prefill(self, count: int) -> None:
        """`count` more known tokens were computed."""
        if self._num_computed is None:
            raise RuntimeError(f"sequence {self.seq_id!r} is decoding: no prefill to advance")
        self._num_computed += count

    def start_decoding(self) -> None:
        """Every known token is computed: from now on the manager holds the counts."""
        self._num_tokens = self._num_computed = None
        self.decoding = True

    def restart(self, num_tokens: int) -> None:
        """Preempted for recomputation: `num_tokens` known tokens, none with KV."""
        self._num_tokens, self._num_computed = num_tokens, 0
        self.decoding = False

    def __repr__(self) -> str:
        phase = "decoding" if self.decoding else f"{self._num_computed}/{self._num_tokens}"
        return f"SequenceState({self.seq_id!r}, {phase})"


@dataclass(eq=False)
class SequenceGroup:
    """The scheduler's record of one request."""

    request: Request
    #: Tokens a sequence of the request holds at most (prompt + output, capped at the
    #: manager's max_model_len): `Scheduler.final_tokens`, set once when it is queued.
    final_tokens: int = 0
    status: GroupStatus = GroupStatus.WAITING
    seqs: list[SequenceState] = field(default_factory=list)
    expanded: bool = False  # forked into n samples / beams after the prompt
    num_preemptions: int = 0
    num_recomputed_tokens: int = 0
    finish_reason: str | None = None
    _next_index: int = 1

    @property
    def request_id(self) -> Hashable:
        return self.request.request_id

    def new_seq_id(self) -> tuple[Hashable, int]:
        index = self._next_index
        self._next_index += 1
        return (self.request.request_id, index)
