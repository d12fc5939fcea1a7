"""gpt-oss and Gemma 3 through the engine: token-exact against transformers' generate() on
tiny random models whose sliding-window layers (window 5, blocks of 8) see sequences run
far past the window, with a hybrid KV-cache manager whose window group releases blocks.

gpt-oss brings attention sinks, YaRN rotary and a mixture-of-experts MLP; Gemma 3 its (1 +
w) norms, q/k norms, scaled embedding and a rotary base per layer type. Greedy (one batch,
and chunked prefill mixing chunks with decodes), beam search, and prefix caching with a
second request that shares the first one's prompt; prefix caching is on throughout.
Preemption, a conversation's next turn, equal-size groups and other backends are in
test_hybrid_memory.py.
"""

from __future__ import annotations

import math

import pytest
from engine_helpers import BLOCK_SIZE, make_engine, tokens_of
from hf_reference import TINY_WINDOW, hf_beams, hf_logprobs, make_prompts
from hybrid_helpers import MAX_NEW, reference

from kvpager.core.groups import FullAttentionSpec, SlidingWindowSpec
from kvpager.core.memory.block_table import num_blocks_for
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.engine import SamplingParams

#: Prompts shorter than, around and far past the window; 20 new tokens take every one of
#: them several blocks beyond it.
LENGTHS = (5, 13, 30)


def window_blocks_held(engine) -> int:
    """Most blocks any decoding sequence holds in the window group (group 0). A prompt
    holds all its blocks from admission until its chunks are computed."""
    m = engine.manager
    decoding = [seq.seq_id for group in engine.scheduler.running for seq in group.seqs
                if seq.decoding]
    return max((int((m.group(0).block_ids(s) >= 0).sum()) for s in decoding), default=0)


def test_the_engine_builds_a_hybrid_manager_with_one_slot_per_layer_pair(hybrid_model):
    engine = make_engine(hybrid_model)
    m, layout = engine.manager, engine.model.layout
    assert isinstance(m, HybridKVCacheManager)
    window, full = m.groups
    assert isinstance(window, SlidingWindowSpec) and window.window == TINY_WINDOW
    assert isinstance(full, FullAttentionSpec)
    types = hybrid_model.config.layer_types
    assert [layout.layer_group[i] for i in range(len(types))] == [
        0 if t == "sliding_attention" else 1 for t in types]
    # the j-th layer of each group shares cache slot j: as many K/V pairs as the larger group
    largest = max(types.count("sliding_attention"), types.count("full_attention"))
    assert engine.cache.num_layers == layout.num_slots == largest
    # a cache block is exactly the manager's page: the largest group's layers of one block
    assert engine.memory_usage()["bytes_per_block"] == m.page_bytes
    assert window.num_layers + full.num_layers == len(types)


@pytest.mark.parametrize("chunked", [False, True], ids=["one-batch", "chunked-prefill"])
def test_greedy_matches_transformers_far_past_the_window(hybrid_model, chunked):
    prompts = make_prompts(LENGTHS, seed=5)
    want = reference(hybrid_model, prompts, MAX_NEW)
    scheduler = {"chunked_prefill": True, "max_num_batched_tokens": 8} if chunked else {}
    engine = make_engine(hybrid_model, prefix=True, **scheduler)
    for tensor in engine.cache.key_caches + engine.cache.value_caches:
        tensor.fill_(float("nan"))  # a slot read before it is written poisons the output
    for rid, prompt in enumerate(prompts):
        engine.add_request(rid, prompt, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    outputs, most_held = [], 0
    while engine.has_unfinished():
        outputs += engine.step()
        most_held = max(most_held, window_blocks_held(engine))
    outputs.sort(key=lambda o: o.request_id)
    assert tokens_of(outputs) == want
    for out, prompt, tokens in zip(outputs, prompts, want, strict=True):
        assert out.outputs[0].cumulative_logprob == pytest.approx(
            math.fsum(hf_logprobs(hybrid_model, prompt, tokens)), abs=1e-4)
    # The window group kept at most the blocks a window of 5 can straddle (2 of 8 tokens)
    # while sequences grew to 49 tokens (7 blocks): the rest was released as it went.
    assert most_held == 2
    assert engine.manager.num_released_blocks >= sum(
        num_blocks_for(n + MAX_NEW - 1, BLOCK_SIZE) - 2 for n in LENGTHS)
    assert engine.manager.num_used_blocks() == 0


def test_beam_search_matches_transformers_with_prefix_caching(hybrid_model):
    """Width 4 over a 22-token prompt, twice on one engine with prefix caching on: the
    second search starts from the first one's cached prompt blocks."""
    prompt = make_prompts((22,), seed=3)[0]
    want = hf_beams(hybrid_model, prompt, 12, 4, num_return=4, eos=())
    engine = make_engine(hybrid_model, prefix=True)
    params = SamplingParams(max_tokens=12, beam_width=4, eos_token_id=())
    for run in range(2):
        got = engine.generate([prompt], params)[0]
        assert [list(c.token_ids) for c in got.outputs] == [tokens for tokens, _ in want]
        for completion, (_, score) in zip(got.outputs, want, strict=True):
            assert completion.score == pytest.approx(score, rel=1e-5, abs=1e-5)
        assert engine.stats.prefix_hit_blocks == run * 2  # 2 full blocks of 22 tokens
    assert engine.stats.cow_copies > 0  # forked beams wrote into shared partial blocks
    assert engine.manager.num_used_blocks() == 0


def test_prefix_caching_serves_a_second_request_sharing_the_prompt(hybrid_model):
    shared, tail_a, tail_b = make_prompts((27, 6, 9), seed=21)
    first, second = shared + tail_a, shared + tail_b  # 33 and 36 tokens
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    want = dict(zip(("first", "second"), reference(hybrid_model, [first, second], 20),
                    strict=True))
    engine = make_engine(hybrid_model, prefix=True)
    engine.add_request("first", first, params)
    outputs = engine.step()  # first's prompt computed: its full blocks are registered
    engine.add_request("second", second, params)
    outputs += engine.run()
    assert {o.request_id: list(o.outputs[0].token_ids) for o in outputs} == want
    hits = len(shared) // BLOCK_SIZE  # 3 blocks both prompts share, in every group
    assert engine.stats.prefix_hit_blocks == hits
    assert engine.stats.prefill_tokens == len(first) + len(second) - hits * BLOCK_SIZE
    # The same prompt again, after the first request finished: 4 blocks hit (the last
    # token is always computed), the window group serving them from what its window reads.
    (again,) = engine.generate([first], params)
    assert list(again.outputs[0].token_ids) == want["first"]
    assert engine.stats.prefix_hit_blocks == hits + 4
    assert engine.stats.prefill_tokens == len(first) + len(second) - hits * BLOCK_SIZE + 1
