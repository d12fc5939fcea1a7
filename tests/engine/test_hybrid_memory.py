"""gpt-oss and Gemma 3 through the engine under memory operations: preemption by swap and
by recomputation, a conversation's next turn hitting the answer's blocks in every group,
KV-cache groups of equal layer counts, half precision, and the Triton decode kernels with a
window and sinks; every output token-exact against transformers' generate().
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_engine, require_backend, tokens_of
from hf_reference import make_prompts, tiny_gemma3, tiny_gpt_oss
from hybrid_helpers import MAX_NEW, reference

from kvpager.engine import SamplingParams


def test_triton_kernels_take_the_window_and_sinks():
    """The Triton decode kernels (interpreted on a CPU: a small batch) with gpt-oss's window
    and sinks give the same tokens."""
    require_backend("triton")
    model = tiny_gpt_oss()
    prompts = make_prompts((13,), seed=5)  # past the window of 5 from the first decode
    want = reference(model, prompts, 4)
    outputs = make_engine(model, backend="triton").generate(
        prompts, SamplingParams(max_tokens=4, ignore_eos=True))
    assert tokens_of(outputs) == want

def test_half_precision_runs_with_float32_sinks():
    """bf16 weights and cache; gpt-oss's sinks stay float32 (the kernels' contract)."""
    model = tiny_gpt_oss()
    engine = make_engine(model, dtype=torch.bfloat16)
    assert engine.cache.key_caches[0].dtype == torch.bfloat16
    assert {w.sinks.dtype for w in engine.model.layers} == {torch.float32}
    (out,) = engine.generate(make_prompts((13,), seed=5),
                             SamplingParams(max_tokens=8, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 8

@pytest.mark.parametrize("mode, cpu_blocks", [("swap", 32), ("recompute", 0)])
def test_preemption_keeps_outputs_exact(hybrid_model, mode, cpu_blocks):
    """14 pages for four sequences that grow to 50 tokens: the scheduler preempts, swapping
    every group's pages out and back (window groups with released entries), or freeing
    them and recomputing the prompt plus what was generated."""
    prompts = make_prompts((13, 30, 9, 20), seed=5)
    want = reference(hybrid_model, prompts, MAX_NEW)
    engine = make_engine(hybrid_model, num_gpu_blocks=14, num_cpu_blocks=cpu_blocks,
                         preemption=mode)
    outputs = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert tokens_of(outputs) == want
    assert engine.stats.preemptions[mode] > 0
    assert engine.manager.num_used_blocks() == 0

def test_the_next_turn_hits_the_blocks_the_answer_filled(hybrid_model):
    """A second turn (first prompt + answer + new text) hits the blocks filled while
    decoding the answer in every group, the window group included, and stays exact."""
    first, new_text = make_prompts((13, 5), seed=24)
    engine = make_engine(hybrid_model, prefix=True)
    (turn1,) = engine.generate([first], SamplingParams(max_tokens=20, ignore_eos=True))
    answer = list(turn1.outputs[0].token_ids)
    assert answer == reference(hybrid_model, [first], 20)[0]
    second = first + answer + new_text  # 38 tokens
    (turn2,) = engine.generate([second], SamplingParams(max_tokens=10, ignore_eos=True))
    assert list(turn2.outputs[0].token_ids) == reference(hybrid_model, [second], 10)[0]
    # 32 tokens of turn 1 hold KV in 4 full blocks, three filled during decode
    assert engine.stats.prefix_hit_blocks == 4

def test_equal_size_groups_shrink_the_page_and_stay_exact():
    """Gemma 3's 3 local : 1 global layers in groups of one layer each (four groups): the
    common page is one layer's block instead of three, every output unchanged."""
    model = tiny_gemma3()
    prompts = make_prompts((13, 30), seed=5)
    want = reference(model, prompts, MAX_NEW)
    one_per_kind = make_engine(model, prefix=True)
    engine = make_engine(model, prefix=True, layers_per_group=1)
    assert [g.kind for g in engine.manager.groups] == ["sliding_window"] * 3 + ["full"]
    assert engine.cache.num_layers == 1
    assert 3 * engine.manager.page_bytes == one_per_kind.manager.page_bytes
    outputs = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert tokens_of(outputs) == want
    (again,) = engine.generate(prompts[1:], SamplingParams(max_tokens=MAX_NEW,
                                                           ignore_eos=True))
    assert list(again.outputs[0].token_ids) == want[1]
    assert engine.stats.prefix_hit_blocks == 3  # (30 - 1) // 8 blocks, in all four groups
