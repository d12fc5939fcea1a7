"""Random operation sequences against a shadow model, with the data the plans move.

An executor made of two numpy arrays (GPU and CPU "memory", one value per slot) carries out
every plan the manager returns: copy-on-write pairs, swap pairs, writes at the returned
slots. A token's value is a chained hash of the token ids up to it, exactly as a token's KV
depends on its whole prefix, so a prefix-cache hit is only correct if the shared blocks hold
this sequence's values. After every step the test checks, from public queries only:

- reference counts equal the references held by all block tables, per device;
- free + used = total; the free lists hold exactly the unreferenced blocks, once each;
- every sequence reads back, through its table, exactly the values written for it;
- a block is never written while shared or prefix-cached (checked at each write).

Appends name their tokens (or, at random, do not), and every write is followed by
`mark_computed`, so blocks filled by decode are registered, and `continue_conversation`
admits prompts that extend earlier sequences: hits on generated blocks must read back the
values the shadow model holds, and a registered block is never written again.

With a host prefix tier (small, so its LRU works), the executor carries out offloads and
loads first, as a real one does: a block loaded back must read exactly what was offloaded
(the read-back invariant), an offload never reads a block a live sequence has written, and a
load never fills a block another sequence holds.

CI runs 2,000 examples of up to 40 steps of the shadow machine and 60 of the tensor one.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvpager.core.errors import OutOfBlocksError, WrongDeviceError
from kvpager.core.memory.manager import KVCacheManager

from .manager_helpers import state

BLOCK = 4
GPU_BLOCKS, CPU_BLOCKS = 24, 12  # small: forces sharing, eviction, swapping
TIER_BLOCKS = 6  # a host prefix tier smaller than what the GPU evicts: forces its LRU
PREFIXES = [[], [7, 7, 3, 1, 9], [7, 7, 3, 1, 9, 2, 2, 8, 4], [5] * 11]


def values_of(tokens: list[int]) -> list[int]:
    out, prev = [], 0
    for t in tokens:
        prev = hash((prev, t)) & ((1 << 62) - 1)
        out.append(prev)
    return out


class ManagerMachine(RuleBasedStateMachine):
    @initialize(prefix_caching=st.booleans(), watermark=st.sampled_from([0.0, 0.1]),
                tier=st.sampled_from([0, TIER_BLOCKS]), write_through=st.booleans())
    def setup(self, prefix_caching: bool, watermark: float, tier: int = 0,
              write_through: bool = False) -> None:
        tier = tier if prefix_caching else 0
        self.m = KVCacheManager(num_gpu_blocks=GPU_BLOCKS, block_size=BLOCK,
                                num_cpu_blocks=CPU_BLOCKS, watermark=watermark,
                                enable_prefix_caching=prefix_caching,
                                num_cpu_prefix_blocks=tier,
                                prefix_tier_write_through=write_through and bool(tier))
        self.mem = {"gpu": np.full((GPU_BLOCKS, BLOCK), -1, dtype=np.int64),
                    "cpu": np.full((CPU_BLOCKS + tier, BLOCK), -1, dtype=np.int64)}
        self.tokens: dict[int, list[int]] = {}
        self.next_id = 0

    # ---- executor -----------------------------------------------------------------------
    def write(self, seq: int, slots: np.ndarray, start: int) -> None:
        values = values_of(self.tokens[seq])
        for i, slot in enumerate(slots.tolist()):
            block, offset = divmod(slot, BLOCK)
            assert self.m.gpu.ref_count(block) == 1, f"write into shared block {block}"
            assert not self.m.gpu.is_cached(block), f"write into cached block {block}"
            self.mem["gpu"][block, offset] = values[start + i]

    def copy(self, pairs: np.ndarray, src: str, dst: str) -> None:
        for s, d in pairs.tolist():
            self.mem[dst][d] = self.mem[src][s]

    def on(self, device: str) -> list[int]:
        return sorted(s for s in self.tokens if self.m.device_of(s) == device)

    def try_call(self, fn, *args, **kwargs):
        self.transfer()  # write-through copies that mark_computed planned
        before = state(self.m)
        free_before = set(np.flatnonzero(self.m.gpu.ref_counts == 0).tolist())
        try:
            got = fn(*args, **kwargs)
        except OutOfBlocksError:
            assert state(self.m) == before, "a failed call changed the manager"
            assert all(not p.size for p in self.m.take_host_transfers())
            return None
        self.transfer(free_before)
        return got

    def transfer(self, free_before: set[int] | None = None) -> None:
        """Carry out the host prefix tier's copies as an executor does, first in the step:
        offloads, then loads. An offload reads either a registered (immutable) block or a
        block that was free before the call (evicted: its new holder has not written it),
        never a block a sequence may be writing; a load only fills a block that no sequence
        held before the call and that one sequence holds now."""
        offloads, loads = self.m.take_host_transfers()
        for gpu, _host in offloads.tolist():
            assert self.m.gpu.is_cached(gpu) or (
                free_before is not None and gpu in free_before), \
                f"offload of block {gpu}, which was in use and not cached"
        self.copy(offloads, "gpu", "cpu")
        for _host, gpu in loads.tolist():
            assert free_before is not None and gpu in free_before, f"load into used {gpu}"
            assert self.m.gpu.ref_count(gpu) == 1, f"load into shared block {gpu}"
        self.copy(loads, "cpu", "gpu")

    # ---- rules --------------------------------------------------------------------------
    @rule(prefix=st.sampled_from(PREFIXES),
          tail=st.lists(st.integers(0, 3), min_size=0, max_size=9))
    def allocate(self, prefix: list[int], tail: list[int]) -> None:
        tokens = prefix + tail or [0]
        self.admit(self.next_id, tokens)
        self.next_id += 1

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), tail=st.lists(st.integers(0, 3), min_size=1, max_size=6))
    def continue_conversation(self, data, tail: list[int]) -> None:
        """A new request whose prompt is an earlier sequence's tokens (prompt and generated)
        plus new text: it may hit blocks registered during decode."""
        earlier = data.draw(st.sampled_from(sorted(self.tokens)))
        self.admit(self.next_id, self.tokens[earlier] + tail)
        self.next_id += 1

    def admit(self, seq: int, tokens: list[int]) -> None:
        got = self.try_call(self.m.allocate, seq, token_ids=tokens)
        if got is None:
            return
        self.tokens[seq] = list(tokens)
        cached = got.num_cached_tokens
        self.write(seq, self.m.slot_mapping(seq, cached, len(tokens)), cached)
        self.m.mark_computed(seq, len(tokens))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), k=st.integers(1, 6), lookahead=st.integers(0, 5))
    def append(self, data, k: int, lookahead: int) -> None:
        gpu = self.on("gpu")
        if not gpu:
            return
        seq = data.draw(st.sampled_from(gpu))
        new = data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k))
        named = data.draw(st.booleans())  # an executor that does not name its tokens
        got = self.try_call(self.m.append_slots, seq, k, lookahead,
                            token_ids=new if named else None)
        if got is None:
            return
        self.copy(got.copies, "gpu", "gpu")
        start = len(self.tokens[seq])
        self.tokens[seq] += new
        self.write(seq, got.slots, start)
        self.m.mark_computed(seq, len(self.tokens[seq]))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), k=st.sampled_from([1, 1, 2, 5]), lookahead=st.integers(0, 2))
    def decode_step(self, data, k: int, lookahead: int) -> None:
        gpu = self.on("gpu")
        if not gpu:
            return
        batch = data.draw(st.lists(st.sampled_from(gpu), min_size=1, unique=True))
        new = [data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k)) for _ in batch]
        rows = self.m.rows_of(batch)
        got = self.try_call(self.m.append_slots_batch, rows, k, lookahead,
                            token_ids=np.asarray(new, dtype=np.int64))
        if got is None:
            return
        self.copy(got.copies, "gpu", "gpu")
        for i, seq in enumerate(batch):
            start = len(self.tokens[seq])
            self.tokens[seq] += new[i]
            self.write(seq, got.slots[i * k : (i + 1) * k], start)
        self.m.mark_computed_batch(rows)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data) -> None:
        parent = data.draw(st.sampled_from(sorted(self.tokens)))
        if self.m.device_of(parent) == "cpu":
            before = state(self.m)
            with pytest.raises(WrongDeviceError, match="swapped out"):
                self.m.fork(parent, self.next_id)
            assert state(self.m) == before
            return
        self.m.fork(parent, self.next_id)
        self.tokens[self.next_id] = list(self.tokens[parent])
        self.next_id += 1

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork_many(self, data) -> None:
        gpu = self.on("gpu")
        if not gpu:
            return
        parents = data.draw(st.lists(st.sampled_from(gpu), min_size=1, max_size=4))
        children = list(range(self.next_id, self.next_id + len(parents)))
        self.m.fork_many(parents, children)
        for parent, child in zip(parents, children, strict=True):
            self.tokens[child] = list(self.tokens[parent])
        self.next_id += len(parents)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free_many(self, data) -> None:
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.tokens)), min_size=1,
                                  max_size=4, unique=True))
        counts = self.m.free_many(seqs)
        assert counts.tolist() == [len(self.tokens.pop(s)) for s in seqs]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data) -> None:
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        assert self.m.free(seq) == len(self.tokens.pop(seq))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def preempt_and_recompute(self, data) -> None:
        gpu = self.on("gpu")
        if not gpu:
            return
        seq = data.draw(st.sampled_from(gpu))
        self.m.preempt_recompute(seq)
        tokens = self.tokens.pop(seq)
        if tokens:  # a sequence truncated to nothing has nothing to recompute
            self.admit(seq, tokens)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def swap_out(self, data) -> None:
        gpu = self.on("gpu")
        if gpu:
            group = data.draw(st.lists(st.sampled_from(gpu), min_size=1, max_size=3, unique=True))
            pairs = self.try_call(self.m.swap_out, group)
            if pairs is not None:
                self.copy(pairs, "gpu", "cpu")

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def swap_in(self, data) -> None:
        cpu = self.on("cpu")
        if cpu:
            group = data.draw(st.lists(st.sampled_from(cpu), min_size=1, max_size=3, unique=True))
            pairs = self.try_call(self.m.swap_in, group)
            if pairs is not None:
                self.copy(pairs, "cpu", "gpu")

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def truncate(self, data) -> None:
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        n = data.draw(st.integers(0, len(self.tokens[seq])))
        self.m.truncate(seq, n)
        del self.tokens[seq][n:]

    # ---- invariants ---------------------------------------------------------------------
    @invariant()
    def reference_counts_match_tables(self) -> None:
        if not hasattr(self, "m"):
            return
        for device, pool in (("gpu", self.m.gpu), ("cpu", self.m.cpu)):
            held = Counter()
            for seq in self.on(device):
                held.update(self.m.block_table(seq).blocks.tolist())
            refs = pool.ref_counts
            assert {b: int(refs[b]) for b in np.flatnonzero(refs)} == dict(held)
            clean, evictable = pool.free_blocks()
            free = clean.tolist() + evictable
            assert len(free) == len(set(free)) == pool.num_free
            assert set(free) == set(np.flatnonzero(refs == 0).tolist())
            assert pool.num_free + pool.num_used == pool.num_blocks
            assert all(pool.is_cached(b) for b in evictable)

    @invariant()
    def every_sequence_reads_back_its_values(self) -> None:
        if not hasattr(self, "m"):
            return
        for seq, tokens in self.tokens.items():
            table = self.m.block_table(seq)
            assert table.num_tokens == len(tokens)
            assert len(table) * BLOCK >= len(tokens)
            got = [int(self.mem[table.device][table[i // BLOCK], i % BLOCK])
                   for i in range(len(tokens))]
            assert got == values_of(tokens), f"sequence {seq} reads wrong data"


ManagerMachine.TestCase.settings = settings(
    max_examples=2000, stateful_step_count=40, deadline=None
)
TestManagerStateful = ManagerMachine.TestCase


class KVCacheMachine(ManagerMachine):
    """The same machine, with the plans carried out by `KVCache` on real tensors through the
    reference ops: a token's value is stored as its K (and V) vector."""

    @initialize(prefix_caching=st.booleans(), watermark=st.sampled_from([0.0, 0.1]),
                tier=st.sampled_from([0, TIER_BLOCKS]), write_through=st.booleans())
    def setup(self, prefix_caching: bool, watermark: float, tier: int = 0,
              write_through: bool = False) -> None:
        import torch

        from kvpager.cache import KVCache

        super().setup(prefix_caching, watermark, tier, write_through)
        self.torch = torch
        self.cache = KVCache.for_manager(self.m, 1, 1, 32, dtype=torch.float32)

    def write(self, seq: int, slots: np.ndarray, start: int) -> None:
        super().write(seq, slots, start)
        values = values_of(self.tokens[seq])[start : start + len(slots)]
        kv = self.torch.tensor([float(v % (1 << 24)) for v in values]).reshape(-1, 1, 1)
        kv = kv.expand(-1, 1, 32).contiguous()
        self.cache.write(0, kv, -kv, slots)

    def copy(self, pairs: np.ndarray, src: str, dst: str) -> None:
        super().copy(pairs, src, dst)
        if src == dst == "gpu":
            self.cache.copy(pairs)
        elif src == "gpu":
            self.cache.swap_out(pairs)
        else:
            self.cache.swap_in(pairs)

    @invariant()
    def every_sequence_reads_back_its_values(self) -> None:
        if not hasattr(self, "m"):
            return
        for seq, tokens in self.tokens.items():
            table = self.m.block_table(seq)
            k, v = self.cache.gather(0, table.blocks, len(tokens), cpu=table.device == "cpu")
            want = [float(x % (1 << 24)) for x in values_of(tokens)]
            assert k[:, 0, 0].tolist() == want and (-v[:, 0, 31]).tolist() == want


KVCacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                            deadline=None)
TestKVCacheStateful = KVCacheMachine.TestCase
