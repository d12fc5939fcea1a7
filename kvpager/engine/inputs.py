"""Turning a `SchedulerOutput` into the model's `StepInputs`.

The scheduler's output says which tokens of which sequences to compute and where their K/V
goes (slots, block tables); this module only reads it, never the manager. Token accounting
(see `kvpager.core.sched.request`): a prefill chunk computes known tokens `start .. start +
count - 1` and yields logits only when it reaches the sequence's last known token; a decode
computes the token sampled last, whose slot the scheduler has just appended, so the
sequence's attention length (`decode_seq_lens`) equals the number of known tokens and the
token sits at position `len(token_ids) - 1`.

A hybrid model's groups (`group_specs`, the manager's `CacheConfig.groups`) each get their own
slots and tables (`GroupInputs`); a prefill chunk's history in a window group starts at the
first block its first query reads (the blocks before it may be released).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kvpager.core.groups import GroupSpec, StateSpec
from kvpager.core.memory.block_table import num_blocks_for
from kvpager.core.sched.output import PrefillChunk, SchedulerOutput
from kvpager.core.sched.request import SequenceState
from kvpager.engine.attention import GroupInputs, PrefillSegment, StepInputs


def _segment(chunk: PrefillChunk, table: np.ndarray, offset: int, block_size: int,
             spec: GroupSpec | None, device: torch.device) -> PrefillSegment:
    """The chunk's segment in one group: history from the first block its first query
    reads (`spec.first_needed`; block 0 for full attention) up to its start."""
    start = chunk.start
    first = 0
    if spec is not None and not isinstance(spec, StateSpec):
        first = spec.first_needed(start + 1) // block_size
    history = table[first: num_blocks_for(start, block_size)]
    return PrefillSegment(offset, chunk.count, start, torch.as_tensor(
        history.astype(np.int64), device=device), first * block_size)


def _int64(values: list[int] | np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64), device=device)


def build_step_inputs(
    out: SchedulerOutput, block_size: int, device: torch.device,
    group_specs: Sequence[GroupSpec] | None = None,
) -> tuple[StepInputs, list[SequenceState]]:
    """The flat batch of one step, and the sequences its logits rows belong to (in order).

    group_specs: the KV-cache groups of a hybrid model (None: one full-attention group);
    groups after the first read their slots and tables from the output's group fields.

    Raises RuntimeError when a sequence's `token_ids` disagree with the scheduler's counts:
    the engine keeps them in step, so a mismatch is a bug, not bad input.
    """
    if out.num_decode_steps != 1:
        raise RuntimeError(f"the engine decodes one token per step, got a plan for "
                           f"{out.num_decode_steps}")
    ids: list[int] = []
    positions: list[np.ndarray] = []
    slots: list[np.ndarray] = []
    segments: list[PrefillSegment] = []
    logits_at: list[int] = []
    logit_seqs: list[SequenceState] = []
    bs = block_size
    for chunk in out.prefills:
        seq, start, end = chunk.seq, chunk.start, chunk.start + chunk.count
        tokens = seq.token_ids
        if tokens is None or len(tokens) != seq.num_tokens:
            raise RuntimeError(f"sequence {seq.seq_id!r} knows {seq.num_tokens} tokens but "
                               f"the engine holds {None if tokens is None else len(tokens)}")
        offset = len(ids)
        ids += tokens[start:end]
        positions.append(np.arange(start, end, dtype=np.int64))
        slots.append(chunk.slots)
        segments.append(_segment(chunk, chunk.block_table, offset, bs,
                                 group_specs[0] if group_specs else None, device))
        if chunk.completes:
            logits_at.append(offset + chunk.count - 1)
            logit_seqs.append(seq)
    for i, seq in enumerate(out.decode_seqs):
        known_ids = seq.token_ids or []
        known = len(known_ids)
        held = int(out.decode_seq_lens[i])
        if held != known:
            raise RuntimeError(f"decoding sequence {seq.seq_id!r} holds {held} slots but the "
                               f"engine knows {known} tokens")
        logits_at.append(len(ids))
        ids.append(known_ids[-1])
        positions.append(np.asarray([known - 1], dtype=np.int64))
        slots.append(out.decode_slots[i : i + 1].astype(np.int64))
        logit_seqs.append(seq)

    rows = out.decode_rows
    if rows.size:
        tables = torch.from_numpy(out.decode_block_tables).to(device)
        lens = out.decode_seq_lens
        seq_lens = torch.as_tensor(lens.astype(np.int32), device=device)
        longest = int(lens.max())
    else:
        tables = torch.zeros((0, 1), dtype=torch.int32, device=device)
        seq_lens = torch.zeros(0, dtype=torch.int32, device=device)
        longest = 1
    batch = StepInputs(
        input_ids=_int64(ids, device),
        positions=_int64(np.concatenate(positions) if positions else [], device),
        slot_mapping=_int64(np.concatenate(slots) if slots else [], device),
        prefills=segments,
        decode_block_tables=tables,
        decode_seq_lens=seq_lens,
        decode_max_seq_len=longest,
        logits_indices=_int64(logits_at, device),
        extra_groups=_extra_groups(out, segments, bs, group_specs, device),
    )
    return batch, logit_seqs


def _extra_groups(out: SchedulerOutput, segments: list[PrefillSegment], block_size: int,
                  group_specs: Sequence[GroupSpec] | None, device: torch.device
                  ) -> tuple[GroupInputs, ...]:
    """Groups 1.. of a hybrid model: their slots (prefill chunks first, then decodes, as
    the flat batch), prefill histories and decode tables."""
    if not group_specs or len(group_specs) < 2:
        return ()
    groups = []
    for g in range(1, len(group_specs)):
        slots = [c.group_slots[g] for c in out.prefills]
        if out.decode_rows.size:
            slots.append(out.decode_group_slots[g])
        prefills = [_segment(c, c.group_block_tables[g], seg.offset, block_size,
                             group_specs[g], device)
                    for c, seg in zip(out.prefills, segments, strict=True)]
        tables = torch.from_numpy(out.decode_group_block_tables[g]).to(device) \
            if out.decode_rows.size else torch.zeros((0, 1), dtype=torch.int32, device=device)
        groups.append(GroupInputs(_int64(np.concatenate(slots) if slots else [], device),
                                  prefills, tables))
    return tuple(groups)


__all__ = ["build_step_inputs"]
