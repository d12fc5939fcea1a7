"""Beam search of one request, with transformers' semantics, as a pure state machine.

The state machine only decides; the engine turns each decision into memory operations:
a beam that survives with several continuations is forked (`Scheduler.fork_seq`, the
children share every block and copy only the partial last block when they first write),
and a beam with none is freed (`Scheduler.free_seq`).

One step, given the logits of the `b` running beams (b = 1 right after the prompt):

1. Accumulate: score(beam, token) = beam score + log_softmax(logits)[token], float32.
2. Take the top K = max(2, 1 + #eos ids) * width candidates over all (beam, token) pairs, so
   that at least `width` of them do not end, whatever the eos candidates.
3. A candidate *ends* when its token is an eos id or it reaches the length limit. Ending
   candidates among the first `width` become finished hypotheses scored
   score / generated_len ** length_penalty (generated_len counts the new token), unless the
   search already knows it cannot improve (see 5) or, with early_stopping=True, already
   holds `width` hypotheses. The best `width` hypotheses are kept.
4. The next running beams are the best `width` candidates that do not end.
5. The search stops when no candidate can continue (length limit), when early_stopping=True
   and `width` hypotheses are finished, or when the best running beam scored at its current
   length (early_stopping=False) or at the longest possible length ("never" with a
   positive penalty) cannot beat the worst finished hypothesis; once that last test fails
   it stays failed.

This is the decision procedure of transformers' `_beam_search` (v4.50+), re-derived so that
the same model and settings give the same best sequence; scores are float32 like theirs, so
comparisons that decide ties agree too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvpager.engine.params import SamplingParams

_NEG = -1.0e9  # transformers' "impossible" score offset, kept for identical comparisons


@dataclass(frozen=True)
class Hypothesis:
    """A finished beam: generated tokens (eos included), length-normalised score, and the
    raw sum of log-probabilities."""

    tokens: tuple[int, ...]
    score: float
    logprob: float


@dataclass(frozen=True)
class BeamStep:
    """What one step decided: the next running beams as (parent index, token) pairs in rank
    order, and whether the search is over."""

    parents: list[int]
    tokens: list[int]
    done: bool


class BeamSearch:
    """State of one request's beam search.

    Args:
        params: the request's settings (beam_width, length_penalty, early_stopping).
        eos_ids: token ids that end a beam.
        max_new_tokens: generated tokens at most (the length limit).
    """

    def __init__(self, params: SamplingParams, eos_ids: tuple[int, ...],
                 max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.width = params.beam_width
        self.length_penalty = float(params.length_penalty)
        self.early_stopping = params.early_stopping
        self.eos_ids = tuple(eos_ids)
        self.max_new_tokens = max_new_tokens
        self.num_candidates = max(2, 1 + len(self.eos_ids)) * self.width
        self.beams: list[tuple[int, ...]] = [()]  # generated tokens of each running beam
        self.scores = torch.zeros(1, dtype=torch.float32)  # cumulative log-probs
        self.finished: list[Hypothesis] = []
        self.generated = 0
        self.improvable = True
        self.done = False

    @property
    def num_running(self) -> int:
        return len(self.beams)

    def step(self, logits: torch.Tensor) -> BeamStep:
        """Advance by one token. logits: `[num_running, vocab]` in beam order (any float
        dtype, any device); the decision is made in float32 on the CPU."""
        if self.done:
            raise ValueError("step() called on a finished beam search")
        if logits.dim() != 2 or logits.shape[0] != self.num_running:
            raise ValueError(f"logits must be [{self.num_running}, vocab], got "
                             f"{tuple(logits.shape)}")
        vocab = logits.shape[1]
        log_probs = torch.log_softmax(logits.detach().float().cpu(), dim=-1)
        total = (log_probs + self.scores[:, None]).reshape(-1)
        k = min(self.num_candidates, total.numel())
        cand_scores, flat = torch.topk(total, k)
        parents, tokens = flat // vocab, flat % vocab
        length = self.generated + 1
        ends = torch.zeros(k, dtype=torch.bool) if length < self.max_new_tokens \
            else torch.ones(k, dtype=torch.bool)
        if self.eos_ids:
            ends |= torch.isin(tokens, torch.tensor(self.eos_ids, dtype=tokens.dtype))

        self._collect_finished(cand_scores, parents, tokens, ends, length)

        running = cand_scores + ends.float() * _NEG
        keep = torch.topk(running, min(self.width, k)).indices
        new_parents, new_tokens = parents[keep].tolist(), tokens[keep].tolist()
        self.beams = [self.beams[p] + (t,) for p, t in zip(new_parents, new_tokens, strict=True)]
        self.scores = running[keep]
        self.generated = length
        self._update_improvable()
        full = len(self.finished) == self.width
        self.done = (not self.improvable or (full and self.early_stopping is True)
                     or bool(ends.all()))
        return BeamStep(new_parents, new_tokens, self.done)

    def _collect_finished(self, cand_scores: torch.Tensor, parents: torch.Tensor,
                          tokens: torch.Tensor, ends: torch.Tensor, length: int) -> None:
        full = len(self.finished) == self.width
        if not self.improvable or (full and self.early_stopping is True):
            return
        normalised = cand_scores / (length ** self.length_penalty)
        added = False
        for c in range(min(self.width, cand_scores.numel())):  # only the top `width` count
            if ends[c]:
                beam = self.beams[int(parents[c])] + (int(tokens[c]),)
                self.finished.append(Hypothesis(beam, float(normalised[c]),
                                                float(cand_scores[c])))
                added = True
        if added:
            self.finished.sort(key=lambda h: h.score, reverse=True)
            del self.finished[self.width:]

    def _update_improvable(self) -> None:
        """Whether the best running beam might still beat the worst finished hypothesis."""
        if len(self.finished) < self.width:
            return
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            length = self.max_new_tokens
        else:
            length = self.generated
        best = self.scores[:1] / (length ** self.length_penalty)
        worst = min(h.score for h in self.finished)
        self.improvable = self.improvable and bool(best[0] > worst)

    def results(self) -> list[Hypothesis]:
        """Finished hypotheses, best first (at most beam_width)."""
        return list(self.finished)


__all__ = ["BeamSearch", "BeamStep", "Hypothesis"]
