"""State groups (linear attention / Mamba) in the hybrid manager: whole pages of the shared
pool per sequence, shared by forks and copied by the next append, swapped, freed; checked
against a shadow executor that rewrites each sequence's state every step."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kvpager.core.config import CacheConfig
from kvpager.core.errors import OutOfBlocksError
from kvpager.core.groups import NULL_BLOCK, FullAttentionSpec, SlidingWindowSpec, StateSpec
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.sched.request import Request
from kvpager.core.sched.scheduler import Scheduler

BS = 4
# page = 4 tokens * 2 * 1 * 8 * 2 bytes * 1 layer = 128 bytes; the state takes 300 -> 3 pages
FULL = FullAttentionSpec(num_kv_heads=1, head_size=8)
STATE = StateSpec(state_bytes=100, num_layers=3)
P = 3


def make(gpu: int = 40, cpu: int = 20, groups=(FULL, STATE)) -> HybridKVCacheManager:
    return HybridKVCacheManager(CacheConfig(num_gpu_blocks=gpu, block_size=BS, watermark=0.0,
                                            num_cpu_blocks=cpu, groups=groups))


def refs_match(m: HybridKVCacheManager) -> None:
    """Each pool's reference counts equal what the tables and state pages hold."""
    for device, pool in (("gpu", m.gpu), ("cpu", m.cpu)):
        held: Counter[int] = Counter()
        for s in m.seq_ids():
            if m.device_of(s) != device:
                continue
            for g in range(m.num_groups):
                held.update(b for b in m.group(g).block_ids(s).tolist() if b != NULL_BLOCK)
            row = m.rows.row(s)
            for name in ("state_pages_0",):
                held.update(m.rows.column(name)[row].tolist())
        refs = pool.ref_counts  # type: ignore[union-attr]
        assert {b: int(refs[b]) for b in np.flatnonzero(refs)} == dict(held)


def test_state_pages_follow_the_sequence() -> None:
    m = make()
    assert m.num_groups == 1 and m.num_state_groups == 1 and m.state_pages_per_seq == P
    m.allocate("a", 6)  # 2 KV blocks + 3 state pages
    assert m.num_used_blocks() == 2 + P
    (pages,) = m.state_pages(m.rows_of(["a"]))
    assert pages.shape == (1, P) and len(set(pages[0].tolist())) == P
    for _ in range(10):  # the state does not grow with the sequence
        m.append_slots("a")
    assert m.num_used_blocks() == 4 + P
    refs_match(m)
    m.free("a")
    assert m.num_used_blocks() == 0


def test_fork_shares_the_state_and_the_next_append_copies_it() -> None:
    m = make()
    m.allocate("a", 5)
    m.fork("a", "b")
    (pa,), (pb,) = (m.state_pages(m.rows_of([s]))[0] for s in ("a", "b"))
    assert pa.tolist() == pb.tolist()  # shared, no page taken
    assert m.num_used_blocks() == 2 + P
    out = m.append_slots_batch(m.rows_of(["a", "b"]))
    pa2, pb2 = m.state_pages(m.rows_of(["a", "b"]))[0]
    # the first writer copies, the last keeps the original pages
    assert pb2.tolist() == pa.tolist() and not set(pa2.tolist()) & set(pa.tolist())
    state_copies = {(int(s), int(d)) for s, d in out.copies.tolist()}
    assert {(int(s), int(d)) for s, d in zip(pa, pa2, strict=True)} <= state_copies
    refs_match(m)


def test_swap_moves_the_state_and_truncation_is_refused() -> None:
    m = make()
    m.allocate("a", 7)
    before = m.state_pages(m.rows_of(["a"]))[0][0].tolist()
    pairs = m.swap_out(["a"])
    assert set(before) <= {int(s) for s in pairs[:, 0]}
    assert m.num_used_blocks("cpu") == 2 + P and m.num_used_blocks() == 0
    back = m.swap_in(["a"])
    assert back.shape == (2 + P, 2)
    with pytest.raises(ValueError, match="state group"):
        m.truncate("a", 5)
    m.truncate("a", 7)  # no change: allowed
    refs_match(m)


def test_admission_counts_the_state_and_failures_change_nothing() -> None:
    m = make(gpu=6)
    assert m.can_allocate(12).name == "OK"  # 3 blocks + 3 pages
    assert m.can_allocate(13).name == "LATER" or m.can_allocate(13).name == "NEVER"
    m.allocate("a", 4)
    m.fork("a", "b")
    free = m.num_free_blocks()
    with pytest.raises(OutOfBlocksError):  # each needs a block; b also its state copy
        m.append_slots_batch(m.rows_of(["a", "b"]), num_new_tokens=4)
    assert m.num_free_blocks() == free and m.num_tokens("a") == 4
    refs_match(m)


def test_state_must_follow_the_paged_groups() -> None:
    with pytest.raises(ValueError, match="after every paged group"):
        make(groups=(FULL, STATE, SlidingWindowSpec(window=4)))


@pytest.mark.parametrize("seed", range(10))
def test_random_operations_keep_each_state(seed: int) -> None:
    """The executor rewrites every state page of a sequence at each of its steps (after the
    step's copies): each sequence must read back its own latest state."""
    rng = np.random.default_rng(seed)
    m = make(gpu=30, cpu=15, groups=(FULL, SlidingWindowSpec(window=5), STATE))
    gpu = np.full(30, -1, dtype=np.int64)
    cpu = np.full(15, -1, dtype=np.int64)
    value: dict[object, int] = {}
    for step in range(60):
        live = list(value)
        on_gpu = [s for s in live if m.device_of(s) == "gpu"]
        op = int(rng.integers(5))
        try:
            if op == 0 or not live:
                s = ("s", step)
                m.allocate(s, int(rng.integers(1, 9)))
                value[s] = step * 1000
                gpu[m.state_pages(m.rows_of([s]))[0][0]] = value[s]
            elif op == 1 and on_gpu:
                batch = [s for s in on_gpu if rng.random() < 0.6] or on_gpu[:1]
                rows = m.rows_of(batch)
                out = m.append_slots_batch(rows)
                for src, dst in out.copies.tolist():
                    gpu[dst] = gpu[src]
                for s, pages in zip(batch, m.state_pages(rows)[0], strict=True):
                    assert (gpu[pages] == value[s]).all()  # read the state, then write it
                    value[s] += 1
                    gpu[pages] = value[s]
            elif op == 2 and on_gpu:
                s = on_gpu[int(rng.integers(len(on_gpu)))]
                m.fork(s, ("f", step))
                value[("f", step)] = value[s]
            elif op == 3:
                s = live[int(rng.integers(len(live)))]
                m.free(s)
                del value[s]
            elif op == 4:
                s = live[int(rng.integers(len(live)))]
                if m.device_of(s) == "cpu":
                    for src, dst in m.swap_in([s]).tolist():
                        gpu[dst] = cpu[src]
                elif m.can_swap_out([s]):
                    for src, dst in m.swap_out([s]).tolist():
                        cpu[dst] = gpu[src]
        except OutOfBlocksError:
            pass
        refs_match(m)
        for s, v in value.items():
            if m.device_of(s) == "gpu":
                assert (gpu[m.state_pages(m.rows_of([s]))[0][0]] == v).all(), (s, step)


def test_scheduler_hands_the_executor_each_sequences_state_pages() -> None:
    m = make(gpu=64)
    s = Scheduler(m, max_num_seqs=4, max_num_batched_tokens=8, chunked_prefill=True)
    s.add_request(Request("a", 10, 4, n=2))
    saw = False
    while s.has_unfinished():
        out = s.schedule()
        for chunk in out.prefills:
            assert len(chunk.state_pages) == 1 and chunk.state_pages[0].shape == (P,)
        if out.decode_rows.size:
            saw = True
            (pages,) = out.decode_state_pages
            assert pages.shape == (out.decode_rows.size, P)
            assert len(set(pages.ravel().tolist())) == pages.size  # no two share a page
        s.complete_step(out)
    assert saw and m.num_free_blocks() == 64
