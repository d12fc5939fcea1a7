"""Bad input is refused up front with a message naming the argument; requests that can
never run come back rejected instead of hanging the loop."""

from __future__ import annotations

import pytest
from engine_helpers import make_engine
from hf_reference import tiny_llama

from kvpager.core.config import CacheConfig
from kvpager.engine import LLMEngine, SamplingParams


@pytest.mark.parametrize("fields, message", [
    ({"max_tokens": 0}, "max_tokens must be an int >= 1"),
    ({"n": 0}, "n must be an int >= 1"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be an int >= 0"),
    ({"seed": -3}, "seed must be an int >= 0"),
    ({"n": 2, "beam_width": 2}, "choose parallel sampling or beam search"),
    ({"beam_width": 2, "temperature": 1.0}, "use temperature=0"),
    ({"early_stopping": "sometimes"}, "early_stopping must be one of"),
    ({"eos_token_id": "2"}, "eos_token_id must be an int"),
    ({"eos_token_id": [2, -1]}, "eos_token_id must be an int >= 0"),
    ({"ignore_eos": 1}, "ignore_eos must be a bool"),
])
def test_bad_sampling_params(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**fields)


def test_bad_engine_configuration(hf_model):
    with pytest.raises(ValueError, match="block_size must be one of"):
        LLMEngine.from_hf(hf_model, CacheConfig(num_gpu_blocks=8, block_size=12))
    small_heads = tiny_llama(head_dim=16)
    with pytest.raises(ValueError, match="head size 16"):
        LLMEngine.from_hf(small_heads, CacheConfig(num_gpu_blocks=8, block_size=8))
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        LLMEngine.from_hf(hf_model, CacheConfig(num_gpu_blocks=8, block_size=8), backend="fast")
    with pytest.raises(ValueError, match="model must be a PagedLlama"):
        LLMEngine(hf_model, CacheConfig(num_gpu_blocks=8, block_size=8))


def test_bad_requests(hf_model):
    engine = make_engine(hf_model)
    for prompt in ([], [1, 128], [-1], ["a"], [3.0], None):
        with pytest.raises(ValueError, match="prompt_token_ids"):
            engine.add_request("r", prompt)
    with pytest.raises(ValueError, match="params must be a SamplingParams"):
        engine.add_request("r", [5, 6], {"max_tokens": 3})
    engine.add_request("r", [5, 6])
    with pytest.raises(ValueError, match="request_id 'r' is already running"):
        engine.add_request("r", [7])
    with pytest.raises(ValueError, match="generate\\(\\) needs an idle engine"):
        engine.generate([[7]])
    chunked = make_engine(hf_model, chunked_prefill=True, preemption="recompute")
    with pytest.raises(ValueError, match="beam search with chunked prefill"):
        chunked.add_request("b", [5, 6], SamplingParams(beam_width=2))


def test_requests_that_can_never_run_are_rejected(hf_model):
    engine = make_engine(hf_model, num_gpu_blocks=4, max_model_len=40)
    engine.add_request("too long for the model", list(range(3, 43)))
    engine.add_request("too big for the cache", list(range(3, 39)))  # 36 tokens > 4 blocks
    engine.add_request("fine", [5, 6, 7], SamplingParams(max_tokens=3))
    outputs = {o.request_id: o for o in engine.run(max_steps=20)}
    assert outputs["too long for the model"].outputs[0].finish_reason.startswith(
        "rejected: prompt of 40 tokens reaches max_model_len=40")
    assert outputs["too big for the cache"].outputs[0].finish_reason.startswith(
        "rejected: needs more KV blocks")
    assert all(not o.outputs[0].token_ids for k, o in outputs.items() if k != "fine")
    assert len(outputs["fine"].outputs[0].token_ids) == 3


def test_generation_stops_at_max_model_len(hf_model):
    engine = make_engine(hf_model, max_model_len=12)
    out = engine.generate([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]],
                          SamplingParams(max_tokens=8, ignore_eos=True))[0]
    assert (len(out.outputs[0].token_ids), out.outputs[0].finish_reason) == (2, "length")
    beams = engine.generate([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]],
                            SamplingParams(max_tokens=8, beam_width=2, ignore_eos=True))[0]
    assert [len(c.token_ids) for c in beams.outputs] == [2, 2]
