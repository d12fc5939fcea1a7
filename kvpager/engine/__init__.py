"""A minimal serving engine on kvpager: a real transformer over the paged KV cache.

`LLMEngine` drives a paged model (weights copied from a `transformers` Llama, gpt-oss or
Gemma 3 text model) with the library's own `Scheduler` and `KVCacheManager` (a
`HybridKVCacheManager` for models with sliding-window layers), executing their plans through
`KVCache` and the `kvpager.ops` kernels: the real executor that the simulator stands in for.

    from kvpager.core.config import CacheConfig
    from kvpager.engine import LLMEngine, SamplingParams

    engine = LLMEngine.from_hf(hf_model, CacheConfig(num_gpu_blocks=256, block_size=16))
    outputs = engine.generate([[1, 5, 9], [1, 7]], SamplingParams(max_tokens=32))

Needs torch (and `transformers` only to build the model object you pass in).
"""

from kvpager.engine.beam import BeamSearch, Hypothesis
from kvpager.engine.engine import LLMEngine
from kvpager.engine.gemma3 import PagedGemma3
from kvpager.engine.gpt_oss import PagedGptOss
from kvpager.engine.kv_layout import KVLayout, UnsupportedModelError
from kvpager.engine.layers import ModelShape
from kvpager.engine.llama import LlamaShape, PagedLlama
from kvpager.engine.model import PagedModel
from kvpager.engine.outputs import CompletionOutput, EngineStats, RequestOutput
from kvpager.engine.params import SamplingParams

__all__ = [
    "BeamSearch",
    "CompletionOutput",
    "EngineStats",
    "Hypothesis",
    "KVLayout",
    "LLMEngine",
    "LlamaShape",
    "ModelShape",
    "PagedGemma3",
    "PagedGptOss",
    "PagedLlama",
    "PagedModel",
    "RequestOutput",
    "SamplingParams",
    "UnsupportedModelError",
]
