"""Parallel sampling (n = 4): the samples share the prompt's blocks; seeded samples are
reproducible whatever else runs; every sampled token is scored like the model scores it."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import BLOCK_SIZE, make_engine
from hf_reference import hf_greedy, hf_logprobs, make_prompts

from kvpager.core.memory.block_table import num_blocks_for
from kvpager.engine import SamplingParams
from kvpager.engine.sampler import choose_tokens, filtered_logits, sample_generator

N = 4
PROMPT_LEN = 20  # 2 full blocks of 8 and a partial third
MAX_NEW = 10


def completions(output) -> list[list[int]]:
    return [list(c.token_ids) for c in output.outputs]


def test_top_k_1_samples_are_greedy_and_share_the_prompt_blocks(hf_model):
    prompt = make_prompts((PROMPT_LEN,), seed=5)[0]
    want, _ = hf_greedy(hf_model, prompt, MAX_NEW, eos=())
    engine = make_engine(hf_model)
    params = SamplingParams(max_tokens=MAX_NEW, n=N, temperature=1.0, top_k=1, ignore_eos=True)
    out = engine.generate([prompt], params)[0]
    assert completions(out) == [want] * N
    # Memory, by hand: at the last step each sample holds P + MAX_NEW - 1 = 29 tokens in
    # 4 blocks; the 2 full prompt blocks are shared by all four samples, the rest private.
    full_prompt = PROMPT_LEN // BLOCK_SIZE
    per_sample = num_blocks_for(PROMPT_LEN + MAX_NEW - 1, BLOCK_SIZE)
    assert engine.stats.peak_blocks_used == full_prompt + N * (per_sample - full_prompt) == 10
    assert engine.stats.peak_blocks_used < N * per_sample  # 16 without sharing
    # The partial prompt block was shared by 4 and copied by the first 3 writers.
    assert engine.stats.cow_copies == N - 1
    assert engine.stats.forks == N - 1
    assert engine.stats.fork_shared_blocks == (N - 1) * num_blocks_for(PROMPT_LEN, BLOCK_SIZE)


def test_seeded_samples_are_reproducible_and_independent_of_the_batch(hf_model):
    prompt, other, third = make_prompts((PROMPT_LEN, 9, 14), seed=5)
    params = SamplingParams(max_tokens=MAX_NEW, n=N, temperature=1.0, seed=1234,
                            ignore_eos=True)
    alone = make_engine(hf_model).generate([prompt], params)[0]
    crowded = make_engine(hf_model).generate(
        [other, prompt, third],
        [SamplingParams(max_tokens=4), params, SamplingParams(max_tokens=12, n=2, seed=7,
                                                              temperature=0.8)])[1]
    assert completions(crowded) == completions(alone)
    assert len({tuple(c) for c in completions(alone)}) > 1  # the samples differ
    reseeded = make_engine(hf_model).generate(
        [prompt], SamplingParams(max_tokens=MAX_NEW, n=N, temperature=1.0, seed=4321,
                                 ignore_eos=True))[0]
    assert completions(reseeded) != completions(alone)
    # Each sample's reported log-probability is the model's, by an independent forward.
    for c in alone.outputs:
        want = math.fsum(hf_logprobs(hf_model, prompt, list(c.token_ids)))
        assert c.cumulative_logprob == pytest.approx(want, abs=1e-4)


def test_a_sample_that_draws_eos_first_ends_alone(hf_model):
    """eos drawn as the first token ends that sample at once; its siblings go on."""
    prompt = make_prompts((PROMPT_LEN,), seed=5)[0]
    probe = make_engine(hf_model).generate(
        [prompt], SamplingParams(max_tokens=1, n=N, temperature=1.0, seed=99))[0]
    firsts = [c.token_ids[0] for c in probe.outputs]
    eos = firsts[2]  # declare sample 2's first draw the stop token
    engine = make_engine(hf_model)
    out = engine.generate([prompt], SamplingParams(max_tokens=6, n=N, temperature=1.0,
                                                   seed=99, eos_token_id=eos))[0]
    for first, c in zip(firsts, out.outputs, strict=True):
        assert c.token_ids[0] == first
        if first == eos:
            assert (c.token_ids, c.finish_reason) == ((eos,), "stop")
        else:
            assert c.finish_reason in ("stop", "length") and len(c.token_ids) >= 1
    assert engine.manager.num_used_blocks() == 0


def test_sampler_draws_from_the_filtered_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    top_p = SamplingParams(temperature=1.0, top_p=0.8)
    assert torch.isinf(filtered_logits(logits, top_p)).tolist() == [False, False, True, True]
    top_k = SamplingParams(temperature=1.0, top_k=3)
    assert torch.isinf(filtered_logits(logits, top_k)).tolist() == [False, False, False, True]
    # 4000 draws at temperature 1 follow the softmax (5 sigma on each frequency).
    gen = sample_generator(0, 0, torch.device("cpu"))
    params = SamplingParams(temperature=1.0)
    draws, _ = choose_tokens(logits.repeat(4000, 1), [params] * 4000, [gen] * 4000)
    freq = torch.bincount(torch.tensor(draws), minlength=4).float() / 4000
    sigma = (probs * (1 - probs) / 4000).sqrt()
    assert ((freq - probs).abs() < 5 * sigma).all(), freq
    # Temperature 0.5 squares and renormalises the probabilities.
    hot, _ = choose_tokens(logits.repeat(4000, 1), [SamplingParams(temperature=0.5)] * 4000,
                           [gen] * 4000)
    want = probs ** 2 / (probs ** 2).sum()
    freq = torch.bincount(torch.tensor(hot), minlength=4).float() / 4000
    assert ((freq - want).abs() < 5 * (want * (1 - want) / 4000).sqrt() + 1e-3).all(), freq


def test_every_sample_stopping_on_its_first_token_finishes_the_request(hf_model):
    prompt = make_prompts((PROMPT_LEN,), seed=5)[0]
    first = hf_greedy(hf_model, prompt, 1, eos=())[0][0]
    engine = make_engine(hf_model)
    out = engine.generate([prompt], SamplingParams(max_tokens=6, n=3, temperature=1.0,
                                                   top_k=1, eos_token_id=first))[0]
    assert [(c.token_ids, c.finish_reason) for c in out.outputs] == [((first,), "stop")] * 3
    assert not engine.scheduler.has_unfinished()
    assert engine.manager.num_used_blocks() == 0
