"""A random serving workload over a manager with prefix caching and the host tier, and the
checks that its KV events agree with the manager's own state."""

from __future__ import annotations

from collections.abc import Hashable
from itertools import pairwise

import numpy as np
from hypothesis import strategies as st

from kvpager.core.errors import OutOfBlocksError
from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.memory.prefix import hash_block_tokens
from kvpager.events import BlockStored, KVEvent, KVEventBus, KVEventIndex

BS = 4
#: shared prompt heads, so prompts hit each other's blocks
BASES = [list(range(b * 100, b * 100 + 24)) for b in range(3)]

_PARAMS = {
    "alloc": st.tuples(st.just("alloc"), st.integers(0, 2), st.integers(4, 24),
                       st.lists(st.integers(0, 3), max_size=6), st.booleans()),
    "append": st.tuples(st.just("append"), st.integers(0, 50), st.integers(0, 3)),
    "batch": st.tuples(st.just("batch"), st.integers(0, 3)),
    "free": st.tuples(st.just("free"), st.integers(0, 50)),
    "fork": st.tuples(st.just("fork"), st.integers(0, 50)),
    "truncate": st.tuples(st.just("truncate"), st.integers(0, 50), st.integers(1, 30)),
    "swap": st.tuples(st.just("swap"), st.integers(0, 50)),
    "transfers": st.tuples(st.just("transfers")),
    "reset": st.tuples(st.just("reset")),
}
#: allocations and frees weighted up, resets down, so pools fill, evict, offload and load
_KINDS = ["alloc"] * 5 + ["free"] * 3 + ["transfers"] * 2 + [
    "append", "batch", "fork", "truncate", "swap", "reset"]
ops = st.lists(st.sampled_from(_KINDS).flatmap(_PARAMS.__getitem__), min_size=10,
               max_size=80)


def int_keys(keys: list[bytes]) -> list[int]:
    """Caller keys as a trace gives them (chained ints), made from kvpager's digests."""
    return [int.from_bytes(k[:8], "big") >> 1 for k in keys]


class Workload:
    """Drives `manager` with random operations and knows every key's true parent."""

    def __init__(self, manager: KVCacheManager) -> None:
        self.m = manager
        self.tokens: dict[Hashable, list[int]] = {}
        self.int_keyed: set[Hashable] = set()
        self.parent_of: dict[Hashable, Hashable | None] = {}
        self.next_id = 0

    def _learn(self, seq: Hashable) -> None:
        """Record the true parent of every key the sequence's tokens make."""
        keys: list[Hashable] = list(hash_block_tokens(self.tokens[seq], BS))
        if seq in self.int_keyed:
            keys = list(int_keys(keys))  # type: ignore[arg-type]
        for i, key in enumerate(keys):
            self.parent_of.setdefault(key, keys[i - 1] if i else None)

    def _pick(self, i: int, device: str = "gpu") -> Hashable | None:
        live = [s for s in self.tokens if self.m.device_of(s) == device]
        return live[i % len(live)] if live else None

    def run(self, op: tuple) -> None:
        m, kind = self.m, op[0]
        seq: Hashable | None
        if kind == "alloc":
            _, base, plen, suffix, use_ints = op
            tokens = BASES[base][:plen] + suffix
            if not tokens:
                return
            seq = self.next_id
            self.next_id += 1
            hashes = int_keys(hash_block_tokens(tokens, BS)) if use_ints else None
            while True:  # under pressure, free the oldest sequence and retry (a preemption)
                try:
                    m.allocate(seq, token_ids=tokens, block_hashes=hashes)
                    break
                except OutOfBlocksError:
                    if not self.tokens:
                        return
                    self.run(("free", 0))
            self.tokens[seq] = list(tokens)
            if hashes:  # caller keys (none for a prompt shorter than a block: it is hashed)
                self.int_keyed.add(seq)
            self._learn(seq)
            m.mark_computed(seq, len(tokens))
        elif kind == "append":
            seq = self._pick(op[1])
            if seq is None:
                return
            try:
                m.append_slots(seq, token_ids=[op[2]])
            except OutOfBlocksError:
                return
            self.tokens[seq].append(op[2])
            self._learn(seq)
            m.mark_computed(seq, len(self.tokens[seq]))
        elif kind == "batch":
            seqs = [s for s in self.tokens if m.device_of(s) == "gpu"]
            if not seqs:
                return
            rows = m.rows_of(seqs)
            try:
                m.append_slots_batch(rows, token_ids=np.full(len(seqs), op[1]))
            except OutOfBlocksError:
                return
            for seq in seqs:
                self.tokens[seq].append(op[1])
                self._learn(seq)
            m.mark_computed_batch(rows)
        elif kind == "free":
            seq = self._pick(op[1])
            if seq is None:
                seq = self._pick(op[1], "cpu")
            if seq is not None:
                m.free(seq)
                del self.tokens[seq]
                self.int_keyed.discard(seq)
        elif kind == "fork":
            seq = self._pick(op[1])
            if seq is not None:
                child = self.next_id
                self.next_id += 1
                m.fork(seq, child)
                self.tokens[child] = list(self.tokens[seq])
                if seq in self.int_keyed:
                    self.int_keyed.add(child)
        elif kind == "truncate":
            seq = self._pick(op[1])
            if seq is not None and op[2] < len(self.tokens[seq]):
                m.truncate(seq, op[2])
                del self.tokens[seq][op[2]:]
        elif kind == "swap":
            out, back = self._pick(op[1]), self._pick(op[1], "cpu")
            if back is not None and m.can_swap_in([back]).name == "OK":
                m.swap_in([back])
            elif out is not None and m.can_swap_out([out]):
                m.swap_out([out])
        elif kind == "reset":
            m.reset_prefix_cache()
        elif kind == "transfers":
            m.take_host_transfers()


def held_keys(m: KVCacheManager) -> tuple[set[Hashable], set[Hashable]]:
    """(keys the GPU pool has registered, keys the host tier holds), the manager's truth;
    first checks that no subscriber (a strict index) raised."""
    if isinstance(m.events, KVEventBus):
        assert not m.events.errors, list(m.events.errors)
    tier = m.prefix_cache.tier if m.prefix_cache is not None else None  # drains evictions
    gpu = {key for _, key in m.gpu.cached_items()}
    return gpu, set() if tier is None else {key for key, _ in tier.lru()}


def check_parents(events: list[KVEvent], parent_of: dict[Hashable, Hashable | None]) -> int:
    """Every GPU `BlockStored` is a chain run whose parent links are the true ones; CPU ones
    name no parent. Returns how many stored blocks were checked."""
    checked = 0
    for event in events:
        if not isinstance(event, BlockStored):
            continue
        assert event.block_size == BS and event.token_ids == [] and event.lora_id is None
        hashes = event.block_hashes
        if event.medium == "CPU":
            assert event.parent_block_hash is None and len(hashes) == 1
        else:
            assert event.medium == "GPU"
            assert event.parent_block_hash == parent_of[hashes[0]]
            for prev, key in pairwise(hashes):
                assert parent_of[key] == prev
        checked += len(hashes)
    return checked


def make_manager(write_through: bool = False, gpu: int = 16, bus: KVEventBus | None = None
                 ) -> KVCacheManager:
    return KVCacheManager(num_gpu_blocks=gpu, block_size=BS, num_cpu_blocks=6, watermark=0.0,
                          enable_prefix_caching=True, num_cpu_prefix_blocks=5,
                          prefix_tier_write_through=write_through, events=bus)


def subscribed(m: KVCacheManager) -> tuple[KVEventIndex, list[KVEvent]]:
    """A strict index and a list of events, both subscribed to the manager's bus."""
    assert isinstance(m.events, KVEventBus)
    index, events = KVEventIndex(strict=True), list[KVEvent]()
    m.events.subscribe(index)
    m.events.subscribe(events.append)
    return index, events
