"""Blocks filled during decode are prefix-cached under the key that continues the prompt's
chain, once computed; the next turn of a conversation hits them."""

import numpy as np
import pytest

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.memory.prefix import hash_block_tokens

from .manager_helpers import table

BS = 4


def make(**kw) -> KVCacheManager:
    return KVCacheManager(num_gpu_blocks=64, block_size=BS, watermark=0.0,
                          enable_prefix_caching=True, **kw)


def decode(m: KVCacheManager, seq, tokens: list[int], batch: bool) -> None:
    for t in tokens:
        if batch:
            rows = m.rows_of([seq])
            m.append_slots_batch(rows, token_ids=np.asarray([[t]]))
            m.mark_computed_batch(rows)
        else:
            m.append_slots(seq, token_ids=[t])
            m.mark_computed(seq, m.num_tokens(seq))


@pytest.mark.parametrize("batch", [False, True])
def test_next_turn_hits_the_answer_blocks(batch: bool):
    m = make()
    prompt, answer = list(range(10)), [50 + i for i in range(9)]
    m.allocate("turn1", token_ids=prompt)
    m.mark_computed("turn1", len(prompt))
    decode(m, "turn1", answer, batch)
    # 19 tokens: blocks 0..3 full (16 tokens), block 4 partial
    assert len(m.prefix_cache) == 4
    turn2 = prompt + answer + [7, 7, 7]
    got = m.allocate("turn2", token_ids=turn2)
    assert got.num_cached_tokens == 16  # two prompt blocks and two generated ones
    assert table(m, "turn2")[:4] == table(m, "turn1")[:4]
    # the generated blocks are registered under the same keys a fresh hash gives
    keys = hash_block_tokens(turn2, BS)
    assert [m.prefix_cache.block_of(k) for k in keys[:4]] == table(m, "turn1")[:4]


def test_blocks_are_registered_only_once_computed():
    m = make()
    m.allocate("a", token_ids=[1, 2, 3])
    m.mark_computed("a", 3)
    m.append_slots("a", token_ids=[4])  # fills block 0, not yet computed
    assert len(m.prefix_cache) == 0
    assert m.allocate("b", token_ids=[1, 2, 3, 4, 5]).num_cached_tokens == 0
    m.mark_computed("a", 4)
    assert len(m.prefix_cache) == 1
    assert m.allocate("c", token_ids=[1, 2, 3, 4, 5]).num_cached_tokens == 4


def test_an_append_without_token_ids_ends_the_chain():
    m = make()
    m.allocate("a", token_ids=[1, 2, 3])
    m.mark_computed("a", 3)
    m.append_slots("a")  # token unknown
    for t in (5, 6, 7, 8):
        m.append_slots("a", token_ids=[t])
    m.mark_computed("a", m.num_tokens("a"))
    assert len(m.prefix_cache) == 0  # no key can be trusted past the unknown token


def test_unknown_tokens_in_a_batch_end_only_their_rows_chains():
    m = make()
    for s in ("a", "b"):
        m.allocate(s, token_ids=[1, 2, 3])
        m.mark_computed(s, 3)
    rows = m.rows_of(["a", "b"])
    m.append_slots_batch(rows, token_ids=np.asarray([[4], [-1]]))
    m.mark_computed_batch(rows)
    assert len(m.prefix_cache) == 1
    assert m.prefix_cache.key_of(table(m, "a")[0]) == hash_block_tokens([1, 2, 3, 4], BS)[0]


def test_caller_keys_end_the_chain_at_the_prompt():
    m = make()
    m.allocate("a", 4, token_ids=[1, 2, 3, 4], block_hashes=["caller-key"])
    m.mark_computed("a", 4)
    for t in (5, 6, 7, 8):
        m.append_slots("a", token_ids=[t])
    m.mark_computed("a", 8)
    assert len(m.prefix_cache) == 1  # the prompt block only


def test_truncation_unregisters_from_the_chain_and_never_writes_a_cached_block():
    m = make()
    m.allocate("a", token_ids=[1, 2, 3])
    m.mark_computed("a", 3)
    decode(m, "a", [4, 5, 6, 7, 8], batch=False)  # blocks 0 and 1 registered
    cached = table(m, "a")[1]
    assert m.gpu.is_cached(cached)
    m.truncate("a", 6)  # inside block 1, a registered block
    got = m.append_slots("a", token_ids=[9])
    assert got.copies.tolist() == [[cached, table(m, "a")[1]]]  # copied, not written
    m.append_slots("a", token_ids=[10])  # block 1 is full again: [5, 6, 9, 10]
    m.mark_computed("a", m.num_tokens("a"))
    # The cut key's tokens are gone, so the chain ended: the rewritten block is not
    # registered (under any key), and the two original blocks stay cached as they were.
    assert len(m.prefix_cache) == 2 and not m.gpu.is_cached(table(m, "a")[1])
    assert m.prefix_cache.key_of(cached) == hash_block_tokens([1, 2, 3, 4, 5, 6, 7, 8], BS)[1]


def test_forked_samples_keep_their_own_chains():
    m = make()
    m.allocate("p", token_ids=[1, 2, 3])
    m.mark_computed("p", 3)
    m.fork("p", "q")
    decode(m, "p", [4, 5, 6, 7, 8], batch=True)
    decode(m, "q", [9, 5, 6, 7, 8], batch=True)
    a = m.allocate("x", token_ids=[1, 2, 3, 4, 5, 6, 7, 8, 0])
    b = m.allocate("y", token_ids=[1, 2, 3, 9, 5, 6, 7, 8, 0])
    assert a.num_cached_tokens == b.num_cached_tokens == 8
    assert table(m, "x")[:2] == table(m, "p")[:2]
    assert table(m, "y")[:2] == table(m, "q")[:2]
