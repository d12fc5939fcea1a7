"""Models the engine cannot serve are refused by name, with the reason, before anything is
built: an unknown architecture, an attention type with no kernel path, a missing window,
Gemma's attention soft-capping, and a cache config whose groups are not the model's."""

from __future__ import annotations

import pytest
import transformers
from hf_reference import tiny_gemma3, tiny_gpt_oss

from kvpager.cache import KVCache
from kvpager.core.config import CacheConfig
from kvpager.core.groups import FullAttentionSpec
from kvpager.engine import LLMEngine, UnsupportedModelError

CACHE = CacheConfig(num_gpu_blocks=16, block_size=8)


@pytest.fixture(autouse=True)
def _nothing_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused model never gets as far as allocating its cache."""
    def refuse(*args, **kwargs):
        raise AssertionError("a KVCache was built for a model that must be refused")

    monkeypatch.setattr(KVCache, "__init__", refuse)


def test_an_architecture_without_a_paged_model():
    mistral = transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UnsupportedModelError,
                       match=r"model_type 'mistral' \(MistralForCausalLM\) is not an "
                             r"architecture the engine serves: llama .*gpt_oss .*gemma3_text"):
        LLMEngine.from_hf(mistral, CACHE)
    with pytest.raises(UnsupportedModelError, match="with a config, got object"):
        LLMEngine.from_hf(object(), CACHE)


@pytest.mark.parametrize("kind", ["chunked_attention", "linear_attention"])
def test_an_attention_type_without_a_kernel_path(kind):
    model = tiny_gpt_oss(layer_types=[kind, "full_attention", "sliding_attention",
                                      "full_attention"])
    with pytest.raises(UnsupportedModelError,
                       match=rf"gpt-oss: layer_types\[0\] = '{kind}' is not served"):
        LLMEngine.from_hf(model, CACHE)


def test_sliding_layers_need_a_window():
    model = tiny_gemma3()
    model.config.sliding_window = None
    with pytest.raises(UnsupportedModelError,
                       match=r"gemma3: config\.sliding_window must be a positive int"):
        LLMEngine.from_hf(model, CACHE)


def test_gemma_attention_softcapping_is_refused():
    model = tiny_gemma3(attn_logit_softcapping=50.0)
    with pytest.raises(UnsupportedModelError, match="attn_logit_softcapping"):
        LLMEngine.from_hf(model, CACHE)


def test_cache_groups_that_are_not_the_models():
    wrong = CacheConfig(num_gpu_blocks=16, block_size=8, groups=(FullAttentionSpec(),))
    with pytest.raises(ValueError, match=r"cache_config\.groups .* is not the model's"):
        LLMEngine.from_hf(tiny_gpt_oss(), wrong)


@pytest.mark.parametrize("value", [0, 1.5, True])
def test_bad_layers_per_group(value):
    with pytest.raises(ValueError, match="layers_per_group must be a positive int or None"):
        LLMEngine.from_hf(tiny_gpt_oss(), CACHE, layers_per_group=value)
