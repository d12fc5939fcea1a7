"""The engine's record of one request: its samples or its beam search, and its output.

The scheduler owns sequences (`SequenceState`) and their memory; this record owns what the
scheduler does not know: which sample a sequence is, the tokens and log-probabilities it
generated, its random generator, and a beam search's hypotheses. Tokens also go into
`SequenceState.token_ids`, because prefix caching and recomputation read them there.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from kvpager.core.sched.request import GroupStatus, SequenceGroup, SequenceState
from kvpager.engine.beam import BeamSearch, BeamStep
from kvpager.engine.outputs import CompletionOutput, RequestOutput
from kvpager.engine.params import SamplingParams
from kvpager.engine.sampler import sample_generator


@dataclass
class SampleState:
    """One of a request's n samples (or its only sequence). `seq` is None until the
    scheduler has forked the sample's sequence from the prompt."""

    index: int
    seq: SequenceState | None
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    logprob: float = 0.0
    finish_reason: str | None = None
    pending: tuple[int, float] | None = None  # (token, logprob) chosen this step


@dataclass
class RequestState:
    """Everything the engine tracks for one live request."""

    request_id: Hashable
    prompt: tuple[int, ...]
    params: SamplingParams
    eos: frozenset[int]
    max_new_tokens: int
    group: SequenceGroup
    samples: list[SampleState] = field(default_factory=list)
    beam: BeamSearch | None = None
    beam_seqs: list[SequenceState] = field(default_factory=list)
    beam_step: BeamStep | None = None  # decided this step, carried out after complete_step

    @property
    def started(self) -> bool:
        """Whether the prompt's first token has been chosen."""
        return bool(self.samples) or (self.beam is not None and self.beam.generated > 0)

    @property
    def finished(self) -> bool:
        return self.group.status is GroupStatus.FINISHED

    def start_samples(self, prompt_seq: SequenceState, device: torch.device) -> None:
        """Create the n sample records at the prompt's first token; sample 0 is the prompt's
        own sequence, the others get theirs when the scheduler forks them."""
        p = self.params
        self.samples = [
            SampleState(j, prompt_seq if j == 0 else None,
                        None if p.greedy or p.seed is None else sample_generator(p.seed, j, device))
            for j in range(p.n)
        ]

    def sample_of(self, seq: SequenceState) -> SampleState:
        for sample in self.samples:
            if sample.seq is seq:
                return sample
        raise RuntimeError(f"sequence {seq.seq_id!r} belongs to no sample of request "
                           f"{self.request_id!r}")

    @property
    def beam_search(self) -> BeamSearch:
        """The request's beam search, started at its first token."""
        if self.beam is None:
            raise RuntimeError(f"request {self.request_id!r}: no beam search started")
        return self.beam

    def start_beam_search(self) -> BeamSearch:
        self.beam = BeamSearch(self.params, tuple(sorted(self.eos)), self.max_new_tokens)
        return self.beam

    def output(self) -> RequestOutput:
        """The finished request's output (call once the group is FINISHED)."""
        reason = self.group.finish_reason or "finished"
        if self.beam is not None:
            outs = [CompletionOutput(rank, h.tokens, h.logprob,
                                     "stop" if h.tokens and h.tokens[-1] in self.eos
                                     else "length", h.score)
                    for rank, h in enumerate(self.beam.results())]
            if not outs:  # ended before any beam finished (rejected or dropped)
                outs = [CompletionOutput(rank, tuple(tokens), float(score), reason)
                        for rank, (tokens, score) in enumerate(
                            zip(self.beam.beams, self.beam.scores.tolist(), strict=True))]
        elif self.samples:
            outs = [CompletionOutput(s.index, tuple(s.tokens), s.logprob,
                                     s.finish_reason or reason) for s in self.samples]
        else:  # rejected before its prompt ran
            outs = [CompletionOutput(j, (), 0.0, reason) for j in range(self.params.width)]
        return RequestOutput(self.request_id, self.prompt, tuple(outs),
                             self.group.num_preemptions)


def known_tokens(seq: SequenceState) -> list[int]:
    """The token ids of `seq`, which every sequence the engine runs carries."""
    if seq.token_ids is None:
        raise RuntimeError(f"sequence {seq.seq_id!r} carries no token ids")
    return seq.token_ids


__all__ = ["RequestState", "SampleState", "known_tokens"]
