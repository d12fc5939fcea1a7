"""A test executor for the scheduler: carries out every plan on numpy "device memory".

Each token of each sequence has a value (a hash of the sequence and position, inherited on
fork). The executor carries out exactly what `SchedulerOutput` says and reads nothing else
from the manager while it does: it moves blocks as told, in the engine's order (offloads to
the host prefix tier, swap out, swap in, loads from the tier, copy-on-write; the host store
holds the swap area's ids then the tier's), writes the values of the tokens a step computes
at the slots the output gives (`PrefillChunk.slots`, `decode_slots`), samples a new token
when a sequence's known tokens are all computed, and can check that every live sequence
reads back, through its block table, the values of all its computed tokens.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.sched.request import GroupStatus, SequenceGroup
from kvpager.core.sched.scheduler import Scheduler, SchedulerOutput, StepResult


def token_value(seq_id, position: int) -> int:
    return hash((seq_id, position)) & ((1 << 62) - 1)


class ShadowExecutor:
    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler
        m: KVCacheManager = scheduler.manager
        self.m = m
        cpu_blocks = m.config.num_cpu_blocks + m.config.num_cpu_prefix_blocks  # host ids
        self.mem = {"gpu": np.full((m.gpu.num_blocks, m.block_size), -1, dtype=np.int64),
                    "cpu": np.full((max(cpu_blocks, 1), m.block_size), -1, dtype=np.int64)}
        self.values: dict = {}  # seq_id -> list of token values (known tokens)
        self.generated: dict = defaultdict(int)  # seq_id -> tokens sampled
        self.steps = 0

    def known(self, seq_id, count: int) -> list[int]:
        vals = self.values.setdefault(seq_id, [])
        while len(vals) < count:
            vals.append(token_value(seq_id, len(vals)))
        return vals

    def run(self, out: SchedulerOutput, eos: tuple = ()) -> StepResult:
        for src, dst, pairs in (("gpu", "cpu", out.offload), ("gpu", "cpu", out.swap_out),
                                ("cpu", "gpu", out.swap_in), ("cpu", "gpu", out.load),
                                ("gpu", "gpu", out.copies)):
            for a, b in pairs.tolist():
                self.mem[dst][b] = self.mem[src][a]
        for chunk in out.prefills:
            seq = chunk.seq
            if seq.seq_id not in self.values:
                self.values[seq.seq_id] = self.prompt_values(seq.group)
            vals = self.known(seq.seq_id, chunk.start + chunk.count)
            assert chunk.slots is not None and len(chunk.slots) == chunk.count
            for i, slot in enumerate(chunk.slots.tolist()):
                self.write(slot, vals[chunk.start + i])
        k = out.num_decode_steps
        for i, seq in enumerate(out.decode_seqs):
            end = self.m.num_tokens(seq.seq_id)
            vals = self.known(seq.seq_id, end + 1)
            for j in range(k):
                self.write(int(out.decode_slots[i * k + j]), vals[end - k + j])
                self.generated[seq.seq_id] += 1
        for chunk in out.prefills:  # a prefill that computes every known token samples one
            if chunk.completes:
                self.generated[chunk.seq.seq_id] += 1
        result = self.s.complete_step(out, eos)
        for group in result.first_token:
            self.adopt_children(group)
        self.steps += 1
        return result

    def prompt_values(self, group: SequenceGroup) -> list[int]:
        """A prompt's values: equal block hashes (one per KV block here) mean equal tokens."""
        req, bs = group.request, self.m.block_size
        keys = list(req.block_hashes or [])
        return [token_value(keys[p // bs] if p // bs < len(keys) else req.request_id, p)
                for p in range(req.prompt_tokens)]

    def adopt_children(self, group: SequenceGroup) -> None:
        """Children of an expanded group, ids (request, 1..width-1), inherit the prompt and
        sample their own first token (they may already be finished and gone)."""
        rid = group.request_id
        prompt = self.values[(rid, 0)][: group.request.prompt_tokens]
        for j in range(1, group.request.width):
            if (rid, j) not in self.values:
                self.values[(rid, j)] = list(prompt)
                self.generated[(rid, j)] = 1

    def write(self, slot: int, value: int) -> None:
        block, offset = divmod(slot, self.m.block_size)
        assert self.m.gpu.ref_count(block) == 1, f"write into shared block {block}"
        assert not self.m.gpu.is_cached(block) or self.mem["gpu"][block, offset] == value
        self.mem["gpu"][block, offset] = value

    def check_data(self) -> None:
        for seq_id in self.m.seq_ids():
            table = self.m.block_table(seq_id)
            seq = self.s._seq(seq_id)
            # decoding, every slot holds a computed token; prefilling, the first num_computed
            computed = table.num_tokens if seq.decoding else seq.num_computed
            vals = self.known(seq_id, computed)
            mem = self.mem[table.device]
            got = [int(mem[table[p // self.m.block_size], p % self.m.block_size])
                   for p in range(computed)]
            assert got == vals[:computed], f"{seq_id} reads wrong KV"

    def run_to_completion(self, max_steps: int = 10_000, check_every: int = 1) -> list:
        finished = []
        while self.s.has_unfinished():
            out = self.s.schedule()
            assert not out.is_empty, "a step that changes nothing"
            finished += self.run(out).finished
            if self.steps % check_every == 0:
                self.check_data()
            assert self.steps < max_steps, "no progress"
        return finished


def generated_per_group(ex: ShadowExecutor, group: SequenceGroup) -> dict:
    rid = group.request_id
    return {k: v for k, v in ex.generated.items() if k[0] == rid}


__all__ = ["GroupStatus", "ShadowExecutor", "generated_per_group", "token_value"]
