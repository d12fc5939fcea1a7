"""From a `transformers` model object to the engine's paged model of its architecture.

`load_model` dispatches on `config.model_type`; an architecture the engine has no model for
is refused with `UnsupportedModelError` naming it and the ones it serves, before anything
is copied. Each model's `from_hf` refuses, the same way, what it cannot serve of its own
architecture (an attention type, a length-dependent rotary embedding, soft-capping).
"""

from __future__ import annotations

import torch

from kvpager.engine.gemma3 import PagedGemma3
from kvpager.engine.gpt_oss import PagedGptOss
from kvpager.engine.kv_layout import UnsupportedModelError
from kvpager.engine.llama import PagedLlama
from kvpager.engine.model import PagedModel

#: config.model_type -> the paged model of that architecture.
MODELS: dict[str, type[PagedLlama] | type[PagedGptOss] | type[PagedGemma3]] = {
    "llama": PagedLlama,
    "gpt_oss": PagedGptOss,
    "gemma3_text": PagedGemma3,
}


def load_model(hf_model: object, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None) -> PagedModel:
    """The paged model of `hf_model`'s architecture, weights copied (and converted to
    `dtype` / moved to `device` when given)."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None:
        raise UnsupportedModelError(f"hf_model must be a transformers causal LM with a config, "
                                    f"got {type(hf_model).__name__}")
    if model_type not in MODELS:
        names = ", ".join(f"{k} ({v.__name__})" for k, v in MODELS.items())
        raise UnsupportedModelError(
            f"hf_model.config.model_type {model_type!r} "
            f"({type(hf_model).__name__}) is not an architecture the engine serves: {names}")
    return MODELS[model_type].from_hf(hf_model, dtype=dtype, device=device)


__all__ = ["MODELS", "load_model"]
