"""Prefix caching: a request whose prompt starts like an earlier one's reuses the cached
full blocks (counted), computes only the rest, and still produces the same tokens."""

from __future__ import annotations

from engine_helpers import BLOCK_SIZE, make_engine
from hf_reference import hf_greedy, make_prompts

from kvpager.engine import SamplingParams

MAX_NEW = 10
PARAMS = SamplingParams(max_tokens=MAX_NEW)


def run_one_then_other(engine, first, second):
    """Prefill `first` (one step registers its computed full blocks), then add `second`."""
    engine.add_request("first", first, PARAMS)
    outputs = engine.step()
    engine.add_request("second", second, PARAMS)
    outputs += engine.run()
    return {o.request_id: list(o.outputs[0].token_ids) for o in outputs}


def test_shared_prefix_blocks_are_reused_and_tokens_unchanged(hf_model):
    shared, tail_a, tail_b = make_prompts((19, 6, 9), seed=21)
    first, second = shared + tail_a, shared + tail_b  # 25 and 28 tokens
    want = {"first": hf_greedy(hf_model, first, MAX_NEW)[0],
            "second": hf_greedy(hf_model, second, MAX_NEW)[0]}
    engine = make_engine(hf_model, prefix=True)
    assert run_one_then_other(engine, first, second) == want
    # 19 shared tokens = 2 full blocks of 8; the third block mixes in tail_a and differs.
    hits = len(shared) // BLOCK_SIZE
    assert engine.stats.prefix_hit_blocks == hits == 2
    # The second prompt's prefill started after the hits: 28 - 16 = 12 tokens computed.
    assert engine.stats.prefill_tokens == len(first) + len(second) - hits * BLOCK_SIZE
    # Without prefix caching: the same tokens, every prompt token computed.
    plain = make_engine(hf_model)
    assert run_one_then_other(plain, first, second) == want
    assert plain.stats.prefill_tokens == len(first) + len(second)


def test_an_identical_prompt_recomputes_only_its_last_token_block(hf_model):
    """A prompt of exactly 3 blocks seen before: 2 blocks hit and the third is computed,
    because the last prompt token's logits are needed to sample."""
    (prompt,) = make_prompts((24,), seed=22)
    want = hf_greedy(hf_model, prompt, MAX_NEW)[0]
    engine = make_engine(hf_model, prefix=True)
    assert run_one_then_other(engine, prompt, prompt) == {"first": want, "second": want}
    assert engine.stats.prefix_hit_blocks == 2
    assert engine.stats.prefill_tokens == 24 + 8


def test_samples_of_a_cached_prompt_share_it_too(hf_model):
    """Parallel samples of a prompt that hit the prefix cache: greedy samples still equal
    transformers' greedy continuation."""
    shared, tail = make_prompts((16, 5), seed=23)
    want = hf_greedy(hf_model, shared + tail, MAX_NEW, eos=())[0]
    engine = make_engine(hf_model, prefix=True)
    engine.add_request("warm", shared + [7, 7, 7], PARAMS)
    engine.step()
    engine.add_request("n", shared + tail, SamplingParams(max_tokens=MAX_NEW, n=3, top_k=1,
                                                          temperature=1.0, ignore_eos=True))
    outs = {o.request_id: o for o in engine.run()}
    assert [list(c.token_ids) for c in outs["n"].outputs] == [want] * 3
    assert engine.stats.prefix_hit_blocks == 2


def test_the_next_turn_hits_the_blocks_the_answer_filled(hf_model):
    """A conversation's second turn (first prompt + first answer + new text) hits the blocks
    filled while decoding the answer, not only the first prompt's, and stays token-exact."""
    first, new_text = make_prompts((13, 5), seed=24)
    answer_params = SamplingParams(max_tokens=20, ignore_eos=True)
    engine = make_engine(hf_model, prefix=True)
    (turn1,) = engine.generate([first], answer_params)
    answer = list(turn1.outputs[0].token_ids)
    assert answer == hf_greedy(hf_model, first, 20, eos=())[0]
    second = first + answer + new_text  # 38 tokens
    (turn2,) = engine.generate([second], PARAMS)
    assert list(turn2.outputs[0].token_ids) == hf_greedy(hf_model, second, MAX_NEW)[0]
    # Turn 1 holds KV for its 13 prompt tokens and 19 of its 20 answer tokens: 4 full
    # blocks of 8, three of them filled during decode. Prompt-only caching would hit one.
    assert engine.stats.prefix_hit_blocks == 4


def test_a_host_tier_loads_evicted_prefix_blocks_back_token_exact(hf_model):
    """A GPU cache too small to keep a prompt's blocks cached while other requests run: with a
    host tier they are offloaded on eviction and loaded back (swap_blocks on the real cache)
    for the next request that shares them, and every output stays transformers' output."""
    from kvpager.core.config import CacheConfig, SchedulerConfig
    from kvpager.engine import LLMEngine

    shared, tail, other = make_prompts((32, 5, 40), seed=25)
    first, again = shared + [3, 3], shared + tail
    cache = CacheConfig(num_gpu_blocks=8, block_size=BLOCK_SIZE, watermark=0.0,
                        enable_prefix_caching=True, num_cpu_prefix_blocks=8)
    engine = LLMEngine.from_hf(hf_model, cache, SchedulerConfig())
    outs = {}
    for rid, prompt in (("first", first), ("other", other), ("again", again)):
        (out,) = engine.generate([prompt], PARAMS)  # one after another: evicts first's blocks
        outs[rid] = list(out.outputs[0].token_ids)
        assert outs[rid] == hf_greedy(hf_model, prompt, MAX_NEW)[0], rid
    prefix = engine.manager.prefix_cache
    # "again" shares 4 full blocks with "first": all served, some from the host tier
    # (the GPU evicted them for "other"), none recomputed
    assert prefix.gpu_hit_blocks + prefix.cpu_hit_blocks == 4
    assert 1 <= prefix.cpu_hit_blocks <= prefix.offloaded_blocks
