"""Under memory pressure every request still finishes with the tokens it gets without
pressure, whether preempted groups are swapped to the CPU or recomputed."""

from __future__ import annotations

import pytest
from engine_helpers import make_engine
from hf_reference import hf_greedy, make_prompts

from kvpager.engine import SamplingParams

MAX_NEW = 16
LENGTHS = (5, 11, 17, 24, 9, 10)
PARAMS = [SamplingParams(max_tokens=MAX_NEW)] * 4 + [
    SamplingParams(max_tokens=MAX_NEW, n=2, temperature=1.0, seed=3),
    SamplingParams(max_tokens=MAX_NEW, beam_width=3),
]
#: The workload peaks at 28 blocks with room to spare; 10 forces preemptions, yet every
#: request alone fits (the largest, 24 + 16 tokens, needs 5 blocks of 8).
TIGHT = 10


def completions(outputs) -> list[list[list[int]]]:
    return [[list(c.token_ids) for c in o.outputs] for o in outputs]


@pytest.fixture(scope="module")
def unconstrained(hf_model):
    prompts = make_prompts(LENGTHS, seed=11)
    engine = make_engine(hf_model)
    outputs = engine.generate(prompts, PARAMS)
    assert engine.stats.preemptions == {"swap": 0, "recompute": 0}
    assert engine.stats.peak_blocks_used > TIGHT
    # The greedy ones are transformers' tokens, so "the same as without pressure" is anchored.
    for out, prompt in zip(outputs[:4], prompts, strict=False):
        assert list(out.outputs[0].token_ids) == hf_greedy(hf_model, prompt, MAX_NEW)[0]
    return prompts, completions(outputs)


@pytest.mark.parametrize("mode, cpu_blocks, chunked", [
    ("swap", 64, False),
    ("recompute", 0, False),
    ("auto", 64, False),
    ("swap", 64, True),
])
def test_preempted_requests_finish_with_the_same_tokens(hf_model, unconstrained, mode,
                                                        cpu_blocks, chunked):
    prompts, want = unconstrained
    scheduler = {"chunked_prefill": True, "max_num_batched_tokens": 16} if chunked else {}
    engine = make_engine(hf_model, num_gpu_blocks=TIGHT, num_cpu_blocks=cpu_blocks,
                         preemption=mode, **scheduler)
    outputs = engine.generate(prompts, PARAMS)
    assert completions(outputs) == want
    stats = engine.stats
    assert stats.peak_blocks_used <= TIGHT
    # Pressure really happened, in the mode asked for, and hit the sampled and beam groups.
    if mode == "recompute":
        assert stats.preemptions["recompute"] > 0 and stats.swapped_out == 0
        assert stats.prefill_tokens > sum(LENGTHS)  # recomputed tokens count again
    else:
        assert stats.preemptions["swap"] > 0
        assert stats.swapped_in == stats.swapped_out > 0  # everything swapped came back
    assert outputs[4].num_preemptions > 0 and outputs[5].num_preemptions > 0
    assert engine.manager.num_used_blocks() == 0
    if cpu_blocks:
        assert engine.manager.num_used_blocks("cpu") == 0
