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
        block_hashes: caller-chained keys of the prompt's full blocks, instead of token ids.
    """

    request_id: Hashable
    prompt_tokens: int
    max_output_tokens: int
    arrival_time: float = 0.0
    n: int = 1
    beam_width: int = 1
    prompt_token_ids: Sequence[int] | None = None
    block_hashes: Sequence[Hashable] | None = None

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
        if self.prompt_token_ids is not None and self.block_hashes is not None:
            raise ValueError(f"request {self.request_id!r}: give prompt_token_ids or "
                             "block_hashes, not both")

    @property
    def width(self) -> int:
        """Sequences the request runs once its prompt is computed."""
        return max(self.n, self.beam_width)


@dataclass(eq=False)
class SequenceState:
    """One sequence of a group.

    `num_tokens` / `num_computed` are kept here while the sequence is waiting or prefilling;
    while it decodes on the GPU the manager's token count is the truth (`num_computed` =
    tokens with KV slots, `num_tokens` = that + 1) and these fields are refreshed only when
    the sequence leaves the decode batch. `token_ids` is for executors that know the tokens
    (a real engine); the scheduler passes them to the manager for prefix caching.
    """

    seq_id: Hashable
    group: SequenceGroup
    num_tokens: int
    num_computed: int = 0
    decoding: bool = False
    token_ids: list[int] | None = None


@dataclass(eq=False)
class SequenceGroup:
    """The scheduler's record of one request."""

    request: Request
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
