"""Carrying a step's token decisions into the scheduler's sequences.

Decisions are made before `Scheduler.complete_step` (it must learn which sequences stopped on
an eos token) and applied after it (it forks finished prompts into samples / beams, and it
reads the step's batch rows, which a fork or free made earlier could invalidate).

A beam search step maps onto memory operations like this: a running beam that has c >= 1
continuations keeps its sequence for the first and is forked for the others
(`Scheduler.fork_seq`: the child shares every block, and the partial last block is copied
only when one of them writes into it); a beam with no continuation is freed
(`Scheduler.free_seq`). Forks happen before frees so a group never becomes empty, and before
tokens are appended so that a child copies its parent's tokens, not its sibling's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from kvpager.core.sched.request import SequenceState
from kvpager.core.sched.scheduler import Scheduler
from kvpager.engine.outputs import EngineStats
from kvpager.engine.tracking import RequestState


def _append(seq: SequenceState, token: int) -> None:
    """Add a generated token to the sequence's ids (the engine's sequences always carry
    them: prefix caching and recomputation read them)."""
    if seq.token_ids is None:
        raise RuntimeError(f"sequence {seq.seq_id!r} carries no token ids")
    seq.token_ids.append(token)


def decide_beam_step(
    state: RequestState, items: list[tuple[int, SequenceState]], logits: torch.Tensor
) -> list[Hashable]:
    """Run the request's beam step on its rows of `logits`; return the ids to report as
    finished (every running beam, when the search is over)."""
    beam = state.beam
    if beam is None:
        if len(items) != 1:
            raise RuntimeError(f"request {state.request_id!r}: {len(items)} sequences "
                               "produced a first token; expected the prompt's only")
        beam = state.start_beam_search()
        state.beam_seqs = [items[0][1]]
    current = state.beam_seqs
    row_of = {id(seq): row for row, seq in items}
    if set(row_of) != {id(seq) for seq in current}:
        raise RuntimeError(
            f"request {state.request_id!r}: {len(items)} of its {len(current)} beams produced "
            "logits this step; a beam step needs all of them (a recomputed beam group was "
            "split across chunked-prefill steps; use preemption='swap')")
    rows = torch.tensor([row_of[id(seq)] for seq in current], device=logits.device)
    step = beam.step(logits[rows])
    state.beam_step = step
    return [seq.seq_id for seq in current] if step.done else []


def apply_beam_step(scheduler: Scheduler, held_blocks: Callable[[Hashable], int],
                    stats: EngineStats, state: RequestState) -> None:
    """Re-form the running beams as decided: fork, free, append tokens. held_blocks(seq_id):
    the GPU blocks a sequence holds (what a fork of it shares)."""
    step, state.beam_step = state.beam_step, None
    if step is None or state.beam is None:
        return
    if step.done:
        if not state.finished:  # beams forked from the prompt in this very step
            scheduler.finish_seqs([seq.seq_id for seq in state.group.seqs])
        return
    current = state.beam_seqs
    if state.beam_search.generated == 1:  # the scheduler forked the prompt into width sequences
        spare = {0: list(state.group.seqs)}
    else:
        spare = {p: [seq] for p, seq in enumerate(current)}
    beams: list[SequenceState] = []
    for parent in step.parents:
        if spare.get(parent):
            beams.append(spare[parent].pop(0))
            continue
        parent_id = current[parent].seq_id
        stats.forks += 1
        stats.fork_shared_blocks += held_blocks(parent_id)
        beams.append(scheduler.fork_seq(parent_id))
    for unused in spare.values():
        for seq in unused:
            scheduler.free_seq(seq.seq_id)
    for seq, token in zip(beams, step.tokens, strict=True):
        _append(seq, token)
    state.beam_seqs = beams


def apply_samples(scheduler: Scheduler, state: RequestState) -> None:
    """Append each sample's chosen token, bind newly forked samples to their sequences, and
    end samples that stopped on eos but could not be reported in `complete_step` (children
    forked from the prompt in this very step)."""
    group = state.group
    unbound = [s for s in state.samples if s.seq is None]
    if unbound and not state.finished:
        bound = {id(s.seq) for s in state.samples if s.seq is not None}
        children = [seq for seq in group.seqs if id(seq) not in bound]
        if len(children) != len(unbound):
            raise RuntimeError(f"request {state.request_id!r}: {len(unbound)} samples wait "
                               f"for a sequence, the scheduler forked {len(children)}")
        for sample, seq in zip(unbound, children, strict=True):
            sample.seq = seq
    live = set() if state.finished else {id(seq) for seq in group.seqs}
    to_end: list[SequenceState] = []
    for sample in state.samples:
        if sample.pending is None:
            continue
        (token, logprob), sample.pending = sample.pending, None
        sample.tokens.append(token)
        sample.logprob += logprob
        own = sample.seq
        alive = own is not None and id(own) in live
        if own is not None:
            _append(own, token)
        if token in state.eos:
            sample.finish_reason = "stop"
            if alive and own is not None:
                to_end.append(own)
        elif not alive:  # the scheduler ended it at its length limit
            sample.finish_reason = "length"
    if to_end:
        scheduler.finish_seqs([seq.seq_id for seq in to_end])


__all__ = ["apply_beam_step", "apply_samples", "decide_beam_step"]
