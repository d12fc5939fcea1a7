"""A test executor for the scheduler over a `ContiguousManager`, on numpy "device memory".

Adapted from `tests/core/sched/shadow_executor.py` (whose block tables and reference counts
are paged): each token of each sequence has a value (a hash of the sequence and position,
inherited on fork); the executor carries out swaps and the copies forks make, writes every
computed token at the slot the plans give, and checks after each step that


- every write lands inside the writing sequence's own region;
- regions (and spares) never overlap, and the allocator holds exactly them: no leak;
- every live sequence reads back, from its region, the values of all its computed tokens;
- the memory breakdown sums to the capacity, with no negative part.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np

from kvpager.core.errors import OutOfBlocksError
from kvpager.core.sched.request import SequenceGroup
from kvpager.core.sched.scheduler import Scheduler, SchedulerOutput, StepResult
from kvpager.sim import queries
from kvpager.sim.contiguous import ContiguousManager


def token_value(seq_id, position: int) -> int:
    return hash((seq_id, position)) & ((1 << 62) - 1)


class ContigExecutor:
    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        m: ContiguousManager = scheduler.manager
        self.m = m
        cpu = m.cpu.capacity if m.cpu is not None else 1
        self.mem = {"gpu": np.full(m.gpu.capacity, -1, dtype=np.int64),
                    "cpu": np.full(cpu, -1, dtype=np.int64)}
        self.values: dict = {}  # seq_id -> token values (known tokens)
        self.generated: dict = defaultdict(int)  # seq_id -> tokens sampled
        self.steps = 0
        self.fork_copies = 0
        self.breakdowns: list[dict[str, int]] = []

    def known(self, seq_id, count: int) -> list[int]:
        vals = self.values.setdefault(seq_id, [])
        while len(vals) < count:
            vals.append(token_value(seq_id, len(vals)))
        return vals

    def run(self, out: SchedulerOutput, eos: tuple = ()) -> StepResult:
        assert out.copies.size == 0  # a contiguous cache never copies on write
        for src, dst, pairs in (("gpu", "cpu", out.swap_out), ("cpu", "gpu", out.swap_in)):
            if pairs.size:
                self.mem[dst][pairs[:, 1]] = self.mem[src][pairs[:, 0]]
        for chunk in out.prefills:
            seq = chunk.seq
            if seq.seq_id not in self.values:
                self.values[seq.seq_id] = [token_value(seq.group.request_id, p)
                                           for p in range(seq.group.request.prompt_tokens)]
            vals = self.known(seq.seq_id, chunk.start + chunk.count)
            slots = self.m.slot_mapping(seq.seq_id, chunk.start, chunk.start + chunk.count)
            for i, slot in enumerate(slots.tolist()):
                self.write(seq.seq_id, slot, vals[chunk.start + i])
        k = out.num_decode_steps
        for i, seq in enumerate(out.decode_seqs):
            end = self.m.num_tokens(seq.seq_id)
            vals = self.known(seq.seq_id, end + 1)
            for j in range(k):
                self.write(seq.seq_id, int(out.decode_slots[i * k + j]), vals[end - k + j])
                self.generated[seq.seq_id] += 1
        for chunk in out.prefills:
            if chunk.completes:
                self.generated[chunk.seq.seq_id] += 1
        result = self.s.complete_step(out, eos)
        self.apply_fork_copies()
        for group in result.first_token:
            self.adopt_children(group)
        self.steps += 1
        return result

    def apply_fork_copies(self) -> None:
        """Copy parents' tokens into children's regions, as forks asked (before any write)."""
        pairs = self.m.take_copies()
        if pairs.size:
            self.mem["gpu"][pairs[:, 1]] = self.mem["gpu"][pairs[:, 0]]
            self.fork_copies += int(pairs.shape[0])

    def adopt_children(self, group: SequenceGroup) -> None:
        rid = group.request_id
        prompt = self.values[(rid, 0)][: group.request.prompt_tokens]
        for j in range(1, group.request.width):
            if (rid, j) not in self.values:
                self.values[(rid, j)] = list(prompt)
                self.generated[(rid, j)] = 1

    def write(self, seq_id, slot: int, value: int) -> None:
        device, offset, size = self.m.region(seq_id)
        assert device == "gpu" and offset <= slot < offset + size, (
            f"{seq_id} writes slot {slot} outside its region [{offset}, {offset + size})")
        self.mem["gpu"][slot] = value

    def check(self) -> None:
        self.check_regions()
        self.check_data()
        self.check_breakdown()

    def check_regions(self) -> None:
        m = self.m
        held = {"gpu": [(o, s) for o, s in m.spare_regions()], "cpu": []}
        for seq_id in m.seq_ids():
            device, offset, size = m.region(seq_id)
            held[device].append((offset, size))
            assert m.num_tokens(seq_id) <= size
        for device, alloc in (("gpu", m.gpu), ("cpu", m.cpu)):
            if alloc is None:
                assert not held[device]
                continue
            blocks = sorted(held[device])
            for (o1, s1), (o2, _s2) in itertools.pairwise(blocks):
                assert o1 + s1 <= o2, f"regions overlap on the {device}: {o1}+{s1} > {o2}"
            assert blocks == alloc.allocated_blocks()  # the allocator holds exactly these
            assert alloc.free_slots + sum(s for _, s in blocks) == alloc.capacity

    def check_data(self) -> None:
        for seq_id in self.m.seq_ids():
            seq = self.s._seq(seq_id)
            computed = self.m.num_tokens(seq_id) if seq.decoding else seq.num_computed
            device, offset, _size = self.m.region(seq_id)
            got = self.mem[device][offset : offset + computed].tolist()
            assert got == self.known(seq_id, computed)[:computed], f"{seq_id} reads wrong KV"

    def check_breakdown(self) -> dict[str, int]:
        rows, final = queries.resident(self.s)
        head = queries.next_waiting(self.s)
        got = self.m.memory_breakdown(rows, final, None if head is None else head[1],
                                      next_num_tokens=None if head is None else head[0])
        assert sum(got.values()) == self.m.capacity_tokens, got
        assert min(got.values()) >= 0, got
        assert got["token"] == int(self.m.seq_lens(rows).sum())
        assert got["free"] + got["external"] == self.m.gpu.free_slots
        if head is None:
            assert got["external"] == 0
        self.breakdowns.append(got)
        return got

    def run_to_completion(self, max_steps: int = 5_000, pressure=None) -> list:
        """Run until every request is done; `pressure(step)` may set `m.pressure` first."""
        finished = []
        while self.s.has_unfinished():
            if pressure is not None:
                pressure(self.steps)
            out = self.s.schedule()
            assert not out.is_empty, "a step that changes nothing"
            finished += self.run(out).finished
            self.check()
            assert self.steps < max_steps, "no progress"
        return finished


class PressuredManager(ContiguousManager):
    """A contiguous manager that can fake memory pressure for the scheduler.

    Contiguous regions never grow, so the scheduler, which preempts only when decodes need
    more memory than is free, never preempts with a plain `ContiguousManager`. With
    `pressure` set, the next decode append of a scheduler running two groups or more fails
    for want of one slot, once per unit (as a real shortage raises `OutOfBlocksError`): the
    scheduler then preempts its lowest-priority group (swap or recompute) exactly as under
    real pressure, which drives the manager's swap and free paths through the real scheduler.
    """

    pressure = 0
    scheduler: Scheduler | None = None

    def append_slots_batch(self, rows, num_new_tokens=1, num_lookahead_slots=0, *, token_ids=None):
        if self.pressure and len(rows) and len(self.scheduler.running) > 1:
            self.pressure -= 1
            raise OutOfBlocksError("gpu", self.num_free_blocks() + 1, self.num_free_blocks())
        return super().append_slots_batch(rows, num_new_tokens, num_lookahead_slots,
                                          token_ids=token_ids)


def generated_per_group(ex: ContigExecutor, group: SequenceGroup) -> dict:
    rid = group.request_id
    return {k: v for k, v in ex.generated.items() if k[0] == rid}
