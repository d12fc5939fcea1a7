"""Helpers of the hybrid-model engine tests: the two architectures, and transformers'
greedy tokens computed once per model and prompt."""

from __future__ import annotations

from hf_reference import hf_greedy, tiny_gemma3, tiny_gpt_oss

ARCHITECTURES = {"gpt_oss": tiny_gpt_oss, "gemma3": tiny_gemma3}
MAX_NEW = 20
MIN_MARGIN = 1e-5  # see test_greedy.py

_REFERENCES: dict[tuple[int, ...], list[int]] = {}


def reference(model, prompts, max_new):
    """transformers' greedy tokens of each prompt, eos ignored (computed once per model and
    prompt); refuses a fixture whose reference meets a near tie."""
    out = []
    for p in prompts:
        key = (id(model), max_new, *p)
        if key not in _REFERENCES:
            tokens, margins = hf_greedy(model, p, max_new, eos=())
            assert min(margins) > MIN_MARGIN, "fixture has a near tie: reseed"
            _REFERENCES[key] = tokens
        out.append(_REFERENCES[key])
    return out
