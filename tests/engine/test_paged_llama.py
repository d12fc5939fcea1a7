"""PagedLlama alone, against transformers' forward pass on the same weights: a prefill, a
decode through `paged_attention`, and a prefill chunk that reads its history from blocks
placed out of order in the cache."""

from __future__ import annotations

import types

import pytest
import torch
from hf_reference import make_prompts, tiny_llama

from kvpager.cache import KVCache
from kvpager.engine import PagedLlama
from kvpager.engine.attention import PrefillSegment, StepInputs

BS = 8
TABLE = [5, 2, 7]  # deliberately not 0, 1, 2: the model must follow the table


def slots(start: int, end: int) -> torch.Tensor:
    return torch.tensor([TABLE[p // BS] * BS + p % BS for p in range(start, end)])


def prefill(tokens: list[int], start: int, logits_all: bool = True) -> StepInputs:
    count = len(tokens)
    history = torch.tensor(TABLE[: -(-start // BS)], dtype=torch.int64)
    return StepInputs(
        input_ids=torch.tensor(tokens), positions=torch.arange(start, start + count),
        slot_mapping=slots(start, start + count),
        prefills=[PrefillSegment(0, count, start, history)],
        decode_block_tables=torch.zeros((0, 1), dtype=torch.int32),
        decode_seq_lens=torch.zeros(0, dtype=torch.int32), decode_max_seq_len=1,
        logits_indices=torch.arange(count) if logits_all else torch.tensor([count - 1]))


def decode(token: int, position: int) -> StepInputs:
    return StepInputs(
        input_ids=torch.tensor([token]), positions=torch.tensor([position]),
        slot_mapping=slots(position, position + 1), prefills=[],
        decode_block_tables=torch.tensor([TABLE], dtype=torch.int32),
        decode_seq_lens=torch.tensor([position + 1], dtype=torch.int32),
        decode_max_seq_len=position + 1, logits_indices=torch.tensor([0]))


@torch.inference_mode()
def test_prefill_decode_and_continued_prefill_match_transformers(hf_model):
    model = PagedLlama.from_hf(hf_model)
    assert (model.shape.num_heads, model.shape.num_kv_heads, model.shape.head_size) == (4, 2, 32)
    cache = KVCache(2, 8, 2, 32, BS, dtype=torch.float32)
    tokens = make_prompts((19,), seed=31)[0]
    full = hf_model(torch.tensor([tokens])).logits[0]  # [19, vocab]

    got = model.forward(prefill(tokens[:13], 0), cache, backend="reference")
    torch.testing.assert_close(got, full[:13], atol=1e-4, rtol=1e-4)
    # Token 13 decodes with paged attention over blocks 5 and 2.
    got = model.forward(decode(tokens[13], 13), cache, backend="reference")
    torch.testing.assert_close(got[0], full[13], atol=1e-4, rtol=1e-4)
    # Tokens 14..18 as one chunk attending to positions 0..13 read back from the cache.
    got = model.forward(prefill(tokens[14:], 14), cache, backend="reference")
    torch.testing.assert_close(got, full[14:], atol=1e-4, rtol=1e-4)


def test_weights_are_converted_on_request(hf_model):
    model = PagedLlama.from_hf(hf_model, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.inv_freq.dtype == torch.float32
    assert hf_model.lm_head.weight.dtype == torch.float32  # the source is left alone


def test_models_it_cannot_run_are_refused():
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        PagedLlama.from_hf(object())
    other = types.SimpleNamespace(config=types.SimpleNamespace(model_type="gpt2"),
                                  model=types.SimpleNamespace(layers=[]), lm_head=None)
    with pytest.raises(ValueError, match="model_type must be 'llama'"):
        PagedLlama.from_hf(other)
    dynamic = tiny_llama(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(ValueError, match="rope type 'dynamic'"):
        PagedLlama.from_hf(dynamic)
    gelu = tiny_llama(hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act must be 'silu'"):
        PagedLlama.from_hf(gelu)
