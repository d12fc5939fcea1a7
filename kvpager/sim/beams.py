"""A stochastic stand-in for beam search's reselection of beams.

Without a model there are no scores, but the memory pattern of beam search is what matters
to the KV cache: every step some beams are dropped and others continue twice, sharing
everything they had. Here, after each decode step, each beam of a running group is replaced
with probability `replace_prob` by a copy of another beam of the same group: the dropped
beam frees its private blocks, the copy shares all of its parent's blocks and copies its
partial tail on the next write. Seeded, so runs repeat exactly.
"""

from __future__ import annotations

import numpy as np

from kvpager.core.sched.request import GroupStatus
from kvpager.core.sched.scheduler import Scheduler


class BeamModel:
    def __init__(self, replace_prob: float, seed: int) -> None:
        self.replace_prob = replace_prob
        self.rng = np.random.default_rng(seed)
        self.replaced = 0

    def step(self, scheduler: Scheduler) -> None:
        """Reselect the beams of every running beam-search group once."""
        if self.replace_prob == 0.0:
            return
        for group in list(scheduler.running):
            if group.request.beam_width < 2 or group.status is not GroupStatus.RUNNING:
                continue
            beams = [s for s in group.seqs if s.decoding]
            if len(beams) < 2:
                continue
            drop = self.rng.random(len(beams)) < self.replace_prob
            for i in np.flatnonzero(drop).tolist():
                if drop.all() and i == len(beams) - 1:
                    break  # keep at least one beam of the old generation
                survivors = [b for j, b in enumerate(beams) if not drop[j]] or beams[-1:]
                parent = survivors[int(self.rng.integers(len(survivors)))]
                scheduler.free_seq(beams[i].seq_id)
                scheduler.fork_seq(parent.seq_id)
                self.replaced += 1
