"""The scheduler over a two-group (window + full) manager: per-group tables in the output,
window release through a whole run, every page back at the end."""

from __future__ import annotations

import numpy as np

from kvpager.core.config import CacheConfig
from kvpager.core.groups import NULL_BLOCK, FullAttentionSpec, SlidingWindowSpec
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.core.sched.request import Request
from kvpager.core.sched.scheduler import Scheduler


def test_scheduler_output_carries_every_groups_tables() -> None:
    groups = (FullAttentionSpec(), SlidingWindowSpec(window=4))
    m = HybridKVCacheManager(CacheConfig(num_gpu_blocks=64, block_size=4, watermark=0.0,
                                         groups=groups))
    s = Scheduler(m, max_num_seqs=4, max_num_batched_tokens=8, chunked_prefill=True)
    s.add_request(Request("a", 13, 20))
    s.add_request(Request("b", 5, 20, n=2))
    saw_decode = False
    while s.has_unfinished():
        out = s.schedule()
        for chunk in out.prefills:
            assert len(chunk.group_slots) == 2
            assert np.array_equal(chunk.group_slots[0], chunk.slots)
        if out.decode_rows.size:
            saw_decode = True
            tables = out.decode_group_block_tables
            assert len(tables) == 2 and len(out.decode_group_slots) == 2
            assert np.array_equal(tables[0], out.decode_block_tables)
            assert np.array_equal(out.decode_group_slots[0], out.decode_slots)
            assert tables[1].min() >= 0  # released entries read the pad, never -1
            for i, row in enumerate(out.decode_rows.tolist()):
                n = int(out.decode_seq_lens[i])
                win = m.group(1).block_ids(m.rows.seq_of[row])
                # the window keeps at most the blocks of its last 4 keys (+ the new one)
                assert np.count_nonzero(win != NULL_BLOCK) <= 2
                slot = int(out.decode_group_slots[1][i])
                assert slot // 4 == win[(n - 1) // 4]
        s.complete_step(out)
    assert saw_decode
    assert m.num_free_blocks() == 64 and len(m) == 0


def test_second_request_hits_the_first_ones_prompt_in_every_group() -> None:
    groups = (SlidingWindowSpec(window=6), FullAttentionSpec())  # gemma-like: window first
    m = HybridKVCacheManager(CacheConfig(num_gpu_blocks=64, block_size=4, watermark=0.0,
                                         enable_prefix_caching=True, groups=groups))
    s = Scheduler(m, max_num_seqs=4, max_num_batched_tokens=8, chunked_prefill=True)
    prompt = list(range(1, 31))  # 30 tokens: 7 full blocks
    s.add_request(Request("a", 30, 3, prompt_token_ids=prompt))
    while s.has_unfinished():
        s.complete_step(s.schedule())
    s.add_request(Request("b", 33, 3, prompt_token_ids=prompt + [9, 9, 9]))
    out = s.schedule()
    (chunk,) = out.prefills
    assert chunk.start == 28  # 7 blocks hit in both groups; only the rest is computed
    win = m.group(0).block_ids(("b", 0))
    assert win[:5].tolist() == [NULL_BLOCK] * 5  # a query at 28 reads keys 23..: blocks 5, 6
    assert (win[5:] != NULL_BLOCK).all()
    while s.has_unfinished():
        s.complete_step(out)
        out = s.schedule()
    assert m.num_free_blocks() == 64 and len(m) == 0
