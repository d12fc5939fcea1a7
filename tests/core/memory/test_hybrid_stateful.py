"""Random operation sequences on a `HybridKVCacheManager` against a shadow model, for every
kind of group: window + full, chunked + full, MLA + window, full + a state group.

An executor made of two numpy arrays (GPU and CPU pages, one value per slot) carries out
every plan: copy pairs (KV copy-on-write and state copies alike: plain page copies), swap
pairs, writes at each group's slots. A token's value chains over every token before it, so a
prefix hit (window groups included) is right only if the shared pages hold this sequence's
values where its queries read them; a state page holds the value of the sequence's last
token (the state after it), rewritten each step. After every step, from public queries:

- reference counts equal the references held by every group's table and the state pages;
  the free lists hold exactly the unreferenced pages;
- every sequence reads back its values through every group's table, from what the group's
  next query reads (a window group's released history is never read), and its state;
- a page is never written while shared or cached;
- a call that raises leaves every group, the pool and the state pages as they were;
- with a host prefix tier (one for all groups), its offloads read only cached or evicted
  pages and its loads fill only fresh pages, and what they carry reads back right.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvpager.core.config import CacheConfig
from kvpager.core.errors import OutOfBlocksError
from kvpager.core.groups import (
    NULL_BLOCK,
    ChunkedLocalSpec,
    FullAttentionSpec,
    MLASpec,
    SlidingWindowSpec,
    StateSpec,
)
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.plans import AllocStatus

from .manager_helpers import state
from .test_manager_stateful import PREFIXES, values_of

BLOCK = 4
GPU_BLOCKS, CPU_BLOCKS = 40, 20
TIER_BLOCKS = 6  # a host prefix tier smaller than what the GPU evicts (its LRU), or 4x
CONFIGS = {
    "window+full": (FullAttentionSpec(num_layers=2), SlidingWindowSpec(window=6)),
    "chunked+full": (ChunkedLocalSpec(chunk=8), FullAttentionSpec()),
    "mla+window": (MLASpec(num_layers=2, latent_dim=8), SlidingWindowSpec(window=5)),
    "full+state": (FullAttentionSpec(num_kv_heads=2, head_size=8), StateSpec(state_bytes=200)),
}


def snapshot(m: HybridKVCacheManager):
    """Everything observable: each group's manager state (tables, rows, chains, pools,
    prefix counters), the windows' released counts and the state pages of every sequence."""
    rows = {s: m.rows.row(s) for s in m.seq_ids()}
    groups = [state(m.group(g)) for g in range(m.num_groups)]
    released = [{s: int(m.group(g).rows.released[r]) for s, r in rows.items()}
                for g in range(m.num_groups) if m.group(g).rows.has_column("released")]
    pages = {s: [m.rows.column(f"state_pages_{i}")[r].tolist()
                 for i in range(m.num_state_groups)] for s, r in rows.items()}
    return groups, released, pages, m.num_free_blocks()


class HybridMachine(RuleBasedStateMachine):
    @initialize(config=st.sampled_from(sorted(CONFIGS)), prefix_caching=st.booleans(),
                tier=st.sampled_from([0, TIER_BLOCKS, 4 * TIER_BLOCKS]),
                write_through=st.booleans())
    def setup(self, config: str, prefix_caching: bool, tier: int = 0,
              write_through: bool = False) -> None:
        groups = CONFIGS[config]
        has_state = any(isinstance(g, StateSpec) for g in groups)
        prefix_caching = prefix_caching and not has_state
        tier = tier if prefix_caching else 0
        self.m = HybridKVCacheManager(CacheConfig(
            num_gpu_blocks=GPU_BLOCKS, block_size=BLOCK, num_cpu_blocks=CPU_BLOCKS,
            watermark=0.0, enable_prefix_caching=prefix_caching, groups=groups,
            num_cpu_prefix_blocks=tier,
            prefix_tier_write_through=write_through and bool(tier)))
        self.mem = {"gpu": np.full((GPU_BLOCKS, BLOCK), -1, dtype=np.int64),
                    "cpu": np.full((CPU_BLOCKS + tier, BLOCK), -1, dtype=np.int64)}
        self.tokens: dict[int, list[int]] = {}
        self.next_id = 0

    # ---- executor -----------------------------------------------------------------------
    def write_slots(self, seq: int, slots: np.ndarray, start: int) -> None:
        values = values_of(self.tokens[seq])
        for i, slot in enumerate(slots.tolist()):
            block, offset = divmod(slot, BLOCK)
            assert self.m.gpu.ref_count(block) == 1, f"write into shared page {block}"
            assert not self.m.gpu.is_cached(block), f"write into cached page {block}"
            self.mem["gpu"][block, offset] = values[start + i]

    def write_state(self, seq: int) -> None:
        pages = self.m.state_pages(self.m.rows_of([seq]))
        for group in pages:
            for page in group[0].tolist():
                assert self.m.gpu.ref_count(page) == 1, f"state write into shared {page}"
                self.mem["gpu"][page] = values_of(self.tokens[seq])[-1]

    def copy(self, pairs: np.ndarray, src: str, dst: str) -> None:
        for s, d in pairs.tolist():
            self.mem[dst][d] = self.mem[src][s]

    def on(self, device: str) -> list[int]:
        return sorted(s for s in self.tokens if self.m.device_of(s) == device)

    def try_call(self, fn, *args, errors=(OutOfBlocksError,), **kwargs):
        self.transfer()  # write-through copies that mark_computed planned
        before = snapshot(self.m)
        free_before = set(np.flatnonzero(self.m.gpu.ref_counts == 0).tolist())
        try:
            got = fn(*args, **kwargs)
        except errors:
            assert snapshot(self.m) == before, "a failed call changed the manager"
            assert all(not p.size for p in self.m.take_host_transfers())
            return None
        self.transfer(free_before)
        return got

    def transfer(self, free_before: set[int] | None = None) -> None:
        """The host prefix tier's copies, as an executor does them first in the step:
        offloads (of cached pages, or of pages free before the call: evicted, not yet
        rewritten), then loads (into pages free before the call, now held by one
        sequence), for every group's pages alike."""
        offloads, loads = self.m.take_host_transfers()
        for gpu, _host in offloads.tolist():
            assert self.m.gpu.is_cached(gpu) or (
                free_before is not None and gpu in free_before), f"offload of used {gpu}"
        self.copy(offloads, "gpu", "cpu")
        for _host, gpu in loads.tolist():
            assert free_before is not None and gpu in free_before, f"load into used {gpu}"
            assert self.m.gpu.ref_count(gpu) == 1, f"load into shared page {gpu}"
        self.copy(loads, "cpu", "gpu")

    # ---- rules --------------------------------------------------------------------------
    @rule(prefix=st.sampled_from(PREFIXES),
          tail=st.lists(st.integers(0, 3), min_size=0, max_size=9))
    def allocate(self, prefix: list[int], tail: list[int]) -> None:
        self.admit(self.next_id, prefix + tail or [0])
        self.next_id += 1

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), tail=st.lists(st.integers(0, 3), min_size=1, max_size=6))
    def continue_conversation(self, data, tail: list[int]) -> None:
        earlier = data.draw(st.sampled_from(sorted(self.tokens)))
        self.admit(self.next_id, self.tokens[earlier] + tail)
        self.next_id += 1

    def admit(self, seq: int, tokens: list[int]) -> None:
        status = self.m.can_allocate(len(tokens), token_ids=tokens)
        got = self.try_call(self.m.allocate, seq, token_ids=tokens)
        # admission counts exactly what allocate takes (hits, revived pages, state pages)
        assert (status is AllocStatus.OK) == (got is not None), status
        if got is None:
            return
        self.tokens[seq] = list(tokens)
        cached = got.num_cached_tokens
        for g in range(self.m.num_groups):
            self.write_slots(seq, self.m.group_slot_mapping(g, seq, cached, len(tokens)),
                             cached)
        self.write_state(seq)
        self.m.mark_computed(seq, len(tokens))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), k=st.sampled_from([1, 1, 1, 3]), lookahead=st.integers(0, 2))
    def append(self, data, k: int, lookahead: int) -> None:
        gpu = self.on("gpu")
        if not gpu:
            return
        seq = data.draw(st.sampled_from(gpu))
        new = data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k))
        named = data.draw(st.booleans())
        got = self.try_call(self.m.append_slots, seq, k, lookahead,
                            token_ids=new if named else None)
        if got is None:
            return
        self.copy(got.copies, "gpu", "gpu")
        start = len(self.tokens[seq])
        self.tokens[seq] += new
        for slots in got.group_slots:
            self.write_slots(seq, slots, start)
        self.write_state(seq)
        self.m.mark_computed(seq, len(self.tokens[seq]))

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), k=st.sampled_from([1, 1, 2]))
    def decode_step(self, data, k: int) -> None:
        gpu = self.on("gpu")
        if not gpu:
            return
        batch = data.draw(st.lists(st.sampled_from(gpu), min_size=1, unique=True))
        new = [data.draw(st.lists(st.integers(0, 3), min_size=k, max_size=k)) for _ in batch]
        rows = self.m.rows_of(batch)
        got = self.try_call(self.m.append_slots_batch, rows, k,
                            token_ids=np.asarray(new, dtype=np.int64))
        if got is None:
            return
        self.copy(got.copies, "gpu", "gpu")
        for i, seq in enumerate(batch):
            start = len(self.tokens[seq])
            self.tokens[seq] += new[i]
            for slots in got.group_slots:
                self.write_slots(seq, slots[i * k : (i + 1) * k], start)
            self.write_state(seq)
        self.m.mark_computed_batch(rows)

    @rule()
    def flush_gpu_cache(self) -> None:
        """A burst of unrelated work takes every free page and finishes: the GPU evicts its
        cached pages (to the host tier, when there is one), so later prompts that share
        them hit the tier."""
        if self.m.prefix_cache is None or self.m.num_free_blocks() < self.m.num_groups:
            return
        tokens = self.m.num_free_blocks() // self.m.num_groups * BLOCK
        if self.try_call(self.m.allocate, "flush", tokens) is not None:
            self.m.free("flush")

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data) -> None:
        gpu = self.on("gpu")
        if not gpu:
            return
        parents = data.draw(st.lists(st.sampled_from(gpu), min_size=1, max_size=3))
        children = list(range(self.next_id, self.next_id + len(parents)))
        self.m.fork_many(parents, children)
        for parent, child in zip(parents, children, strict=True):
            self.tokens[child] = list(self.tokens[parent])
        self.next_id += len(parents)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data) -> None:
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.tokens)), min_size=1,
                                  max_size=3, unique=True))
        counts = self.m.free_many(seqs)
        assert counts.tolist() == [len(self.tokens.pop(s)) for s in seqs]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def swap(self, data) -> None:
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        if self.m.device_of(seq) == "gpu":
            if self.m.can_swap_out([seq]):
                self.copy(self.m.swap_out([seq]), "gpu", "cpu")
        else:
            pairs = self.try_call(self.m.swap_in, [seq])
            if pairs is not None:
                self.copy(pairs, "cpu", "gpu")

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def truncate(self, data) -> None:
        seq = data.draw(st.sampled_from(sorted(self.tokens)))
        n = data.draw(st.integers(max(0, len(self.tokens[seq]) - 5), len(self.tokens[seq])))
        before = snapshot(self.m)
        try:
            self.m.truncate(seq, n)
        except ValueError:  # a window's released history, or a state group: no change
            assert snapshot(self.m) == before, "a refused truncation changed the manager"
            return
        del self.tokens[seq][n:]  # a state group allowed only a truncation to its length

    # ---- invariants ---------------------------------------------------------------------
    @invariant()
    def references_match_tables_and_states(self) -> None:
        if not hasattr(self, "m"):
            return
        m = self.m
        for device, pool in (("gpu", m.gpu), ("cpu", m.cpu)):
            held: Counter[int] = Counter()
            for seq in self.on(device):
                for g in range(m.num_groups):
                    held.update(b for b in m.group(g).block_ids(seq).tolist()
                                if b != NULL_BLOCK)
                row = m.rows.row(seq)
                for i in range(m.num_state_groups):
                    held.update(m.rows.column(f"state_pages_{i}")[row].tolist())
            refs = pool.ref_counts  # type: ignore[union-attr]
            assert {b: int(refs[b]) for b in np.flatnonzero(refs)} == dict(held)
            clean, evictable = pool.free_blocks()  # type: ignore[union-attr]
            free = clean.tolist() + evictable
            assert len(free) == len(set(free)) == pool.num_free  # type: ignore[union-attr]
            assert set(free) == set(np.flatnonzero(refs == 0).tolist())

    @invariant()
    def every_group_reads_back_its_values(self) -> None:
        if not hasattr(self, "m"):
            return
        m = self.m
        for seq, tokens in self.tokens.items():
            device, n, values = m.device_of(seq), len(tokens), values_of(tokens)
            assert m.num_tokens(seq) == n
            for g, spec in enumerate(m.paged_groups):
                table = m.group(g).block_ids(seq)
                for pos in range(spec.first_needed(n + 1) if n else 0, n):
                    block = int(table[pos // BLOCK])
                    assert block != NULL_BLOCK, (seq, g, pos)
                    got = int(self.mem[device][block, pos % BLOCK])
                    assert got == values[pos], f"sequence {seq} group {g} position {pos}"
            row = m.rows.row(seq)
            for i in range(m.num_state_groups):
                for page in m.rows.column(f"state_pages_{i}")[row].tolist():
                    assert n == 0 or (self.mem[device][page] == values[-1]).all(), (seq, i)


HybridMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=25,
                                           deadline=None)
TestHybridStateful = HybridMachine.TestCase
