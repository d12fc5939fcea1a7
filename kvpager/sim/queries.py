"""Questions only the simulator asks of a scheduler, answered from its public state.

An engine never needs them: they pick the length of a multi-step decode window
(`decode_headroom`, `has_prefill_work`, `decode_rows`) and feed the memory breakdown
(`resident`, `next_waiting`). They read `Scheduler.running` / `waiting` and
`Scheduler.final_tokens`, so they change nothing.
"""

from __future__ import annotations

import numpy as np

from kvpager.core.sched.scheduler import Scheduler


def decode_rows(sched: Scheduler) -> np.ndarray:
    """int64 manager rows of the sequences the next decode step would extend, in order."""
    return sched.running.decode_batch()[0]


def decode_headroom(sched: Scheduler) -> int:
    """Decode steps every decoding sequence can take before one reaches its length limit
    (0 when none decodes): the longest multi-step window that finishes no one early."""
    rows = decode_rows(sched)
    if not rows.size:
        return 0
    return int((sched.running.targets(rows) - sched.manager.seq_lens(rows)).min())


def has_prefill_work(sched: Scheduler) -> bool:
    """Whether a running sequence still has prompt (or recomputation) tokens to compute."""
    return any(not s.decoding for g in sched.running for s in g.seqs)


def resident(sched: Scheduler) -> tuple[np.ndarray, np.ndarray]:
    """(rows, final slots), int64 both, of every sequence holding GPU memory: the slots each
    will occupy at the end, for `SimManager.memory_breakdown`."""
    seqs = sched.running.all_seqs()
    rows = sched.manager.rows_of([s.seq_id for s in seqs])
    final = np.fromiter((s.group.final_tokens - 1 for s in seqs),
                        dtype=np.int64, count=len(seqs))
    return rows, final


def next_waiting(sched: Scheduler) -> tuple[int, int] | None:
    """(tokens now, tokens at most) of the head of the waiting queue, or None: what a
    contiguous cache would have to reserve for it next (for fragmentation metrics)."""
    if not sched.waiting:
        return None
    group = sched.waiting[0]
    return group.seqs[0].num_tokens, sched.final_tokens(group.request)  # type: ignore[return-value]
