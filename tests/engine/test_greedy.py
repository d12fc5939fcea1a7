"""Greedy decoding through the paged cache gives exactly transformers' tokens (fp32)."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import make_engine, require_backend, tokens_of
from hf_reference import (
    assert_greedy_within_tolerance,
    hf_greedy,
    hf_greedy_batch,
    hf_logprobs,
    make_prompts,
    tiny_llama,
)

from kvpager.engine import SamplingParams

# Lengths below, at and across block boundaries (block size 8).
LENGTHS = (5, 11, 17, 8, 24)
MAX_NEW = 16
#: Smallest top-1 / top-2 logit gap the reference may show for a token comparison to mean
#: something: fp32 paths differ by ~1e-6 in the logits.
MIN_MARGIN = 1e-5


def reference(hf_model, prompts, max_new):
    refs = [hf_greedy(hf_model, p, max_new) for p in prompts]
    for tokens, margins in refs:
        assert min(margins[: len(tokens)]) > MIN_MARGIN, "fixture has a near tie: reseed"
    return [t for t, _ in refs]


@pytest.mark.parametrize("backend, lengths, max_new", [
    ("reference", LENGTHS, MAX_NEW),
    ("triton", (5, 11), 6),  # the interpreter is slow: a smaller batch, same paths
])
def test_greedy_batch_matches_transformers_generate(hf_model, backend, lengths, max_new):
    require_backend(backend)
    prompts = make_prompts(lengths)
    want = reference(hf_model, prompts, max_new)
    engine = make_engine(hf_model, backend=backend)
    outputs = engine.generate(prompts, SamplingParams(max_tokens=max_new))
    assert tokens_of(outputs) == want
    for out, prompt, tokens in zip(outputs, prompts, want, strict=True):
        completion = out.outputs[0]
        assert completion.finish_reason == ("stop" if tokens[-1] == 2 else "length")
        assert completion.cumulative_logprob == pytest.approx(
            math.fsum(hf_logprobs(hf_model, prompt, tokens)), abs=1e-4)
    # Every request ran in one continuous batch: decodes of different lengths together.
    assert engine.stats.prefill_tokens == sum(lengths)
    assert engine.stats.steps <= max_new + 1


def test_batched_transformers_agrees_with_per_prompt(hf_model):
    """The per-prompt reference equals transformers' own left-padded batch generate, so
    'the same tokens as generate() on the batch' holds whichever way generate is run."""
    prompts = make_prompts(LENGTHS)
    assert hf_greedy_batch(hf_model, prompts, MAX_NEW) == reference(hf_model, prompts, MAX_NEW)


def test_chunked_prefill_reads_earlier_chunks_from_the_cache(hf_model):
    """With an 8-token budget, prompts are computed in chunks that attend to the chunks
    before them through their block tables, mixed with other requests' decodes."""
    prompts = make_prompts(LENGTHS)
    want = reference(hf_model, prompts, MAX_NEW)
    engine = make_engine(hf_model, chunked_prefill=True, max_num_batched_tokens=8)
    assert tokens_of(engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW))) == want
    # 65 prompt tokens at most 8 per step: at least 9 steps hold prefill work.
    assert engine.stats.prefill_tokens == sum(LENGTHS)
    assert engine.stats.steps >= math.ceil(sum(LENGTHS) / 8)


def test_stops_on_eos_like_transformers(hf_model):
    prompt = make_prompts((11,))[0]
    free_run, _ = hf_greedy(hf_model, prompt, MAX_NEW, eos=())
    # An eos id the greedy path first produces at its 4th token or later.
    index = next(i for i in range(3, MAX_NEW) if free_run[i] not in free_run[:i])
    eos = free_run[index]
    want, _ = hf_greedy(hf_model, prompt, MAX_NEW, eos=(eos,))
    assert want == free_run[: index + 1]
    engine = make_engine(hf_model)
    out = engine.generate([prompt], SamplingParams(max_tokens=MAX_NEW, eos_token_id=eos))[0]
    assert list(out.outputs[0].token_ids) == want
    assert out.outputs[0].finish_reason == "stop"
    out = engine.generate([prompt], SamplingParams(max_tokens=MAX_NEW, eos_token_id=eos,
                                                   ignore_eos=True))[0]
    assert list(out.outputs[0].token_ids) == free_run
    assert out.outputs[0].finish_reason == "length"
    assert engine.manager.num_used_blocks() == 0  # everything freed at the end


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_half_precision_greedy_is_transformers_up_to_rounding(dtype):
    """fp16 / bf16 weights, activations and cache on the CPU, compared tolerance-aware
    against transformers in the same dtype (see `assert_greedy_within_tolerance`)."""
    hf = tiny_llama(dtype=dtype)
    prompts = make_prompts(LENGTHS)
    engine = make_engine(hf)
    assert engine.cache.key_caches[0].dtype == dtype
    outputs = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    for prompt, out in zip(prompts, outputs, strict=True):
        assert_greedy_within_tolerance(hf, prompt, list(out.outputs[0].token_ids), MAX_NEW,
                                       dtype)


def test_model_eos_is_the_default_and_an_empty_tuple_disables_it(hf_model):
    prompt = make_prompts(LENGTHS)[0]
    stopped, _ = hf_greedy(hf_model, prompt, MAX_NEW)  # the model's eos id 2
    unstopped, _ = hf_greedy(hf_model, prompt, MAX_NEW, eos=())
    assert stopped[-1] == 2 and len(stopped) < MAX_NEW == len(unstopped)  # fixture check
    engine = make_engine(hf_model)
    default, disabled = engine.generate(
        [prompt, prompt], [SamplingParams(max_tokens=MAX_NEW),
                           SamplingParams(max_tokens=MAX_NEW, eos_token_id=())])
    assert (list(default.outputs[0].token_ids), default.outputs[0].finish_reason) == (
        stopped, "stop")
    assert (list(disabled.outputs[0].token_ids), disabled.outputs[0].finish_reason) == (
        unstopped, "length")
