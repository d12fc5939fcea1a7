"""Pieces every paged model shares: the shape the cache needs, RMSNorm in both rounding
orders, rotary tables and their application, and reading weights off a `transformers` module.

Each function follows the order of operations of the `transformers` code it stands in for,
so that in float32 the two agree to rounding (greedy tokens match exactly) and in fp16 /
bf16 they round at the same places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: Rotary variants whose frequencies change with the sequence length: a cache written at
#: one length would be wrong at another, so they are refused.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


@dataclass(frozen=True)
class ModelShape:
    """The geometry the cache and kernels need. head_size = hidden / heads unless the
    config sets `head_dim`."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    rms_norm_eps: float


def shape_of(config: Any) -> ModelShape:
    """A `ModelShape` from a transformers config (Llama, gpt-oss, Gemma 3 spell it alike)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(config.vocab_size, config.hidden_size, config.num_hidden_layers, heads,
                      kv_heads, head_size, float(config.rms_norm_eps))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's order: normalise in float32, cast back, then scale by the weight (in fp16 /
    bf16 the two orders round differently)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rms_norm_scaled_first(x: torch.Tensor, weight: torch.Tensor, eps: float,
                          offset: float = 0.0) -> torch.Tensor:
    """gpt-oss / Gemma 3 order: normalise and scale by `offset + weight` in float32, then
    cast back. Gemma stores its norm weights centred on 0 (`offset` 1.0)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    scale = weight.float() + offset if offset else weight
    return (scale * h).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary:
    """Rotary position embedding with fixed frequencies (default, linear, llama3, YaRN:
    whatever `transformers` computed into `inv_freq` and `attention_scaling`).

    inv_freq: float32 `[head_size // 2]`; scaling multiplies cos and sin (YaRN's attention
    factor, 1.0 otherwise).
    """

    def __init__(self, inv_freq: torch.Tensor, scaling: float = 1.0) -> None:
        self.inv_freq = inv_freq.detach().float()
        self.scaling = float(scaling)

    @classmethod
    def of(cls, rotary: object, prefix: str = "") -> Rotary:
        """From a transformers rotary module (`{prefix}inv_freq`, `{prefix}attention_scaling`;
        Gemma 3 keeps one pair per layer type under a prefix). Raises ValueError for a
        rotary variant that depends on the sequence length."""
        rope_type = getattr(rotary, "rope_type", "default")
        if isinstance(rope_type, dict):  # one type per layer type (Gemma 3)
            rope_type = rope_type.get(prefix.removesuffix("_"), "default")
        if rope_type in LENGTH_DEPENDENT_ROPE:
            raise ValueError(f"rope type {rope_type!r} changes with the sequence length, which "
                             "a KV cache written earlier cannot follow; supported: static "
                             "types (default, linear, llama3, yarn)")
        return cls(getattr(rotary, f"{prefix}inv_freq"),
                   getattr(rotary, f"{prefix}attention_scaling", 1.0))

    def to(self, device: torch.device | str | None) -> Rotary:
        self.inv_freq = self.inv_freq.to(device=device)
        return self

    def tables(self, positions: torch.Tensor, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[num_tokens, 1, head_size]` in `dtype`, computed in float32."""
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.scaling).to(dtype)[:, None, :],
                (emb.sin() * self.scaling).to(dtype)[:, None, :])


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: `[num_tokens, heads, head_size]`; cos, sin from `Rotary.tables`."""
    return x * cos + rotate_half(x) * sin


def weight(module: object, name: str) -> torch.Tensor:
    return getattr(module, name).weight.detach()


def bias(module: object, name: str) -> torch.Tensor | None:
    b = getattr(getattr(module, name), "bias", None)
    return None if b is None else b.detach()


def convert(t: torch.Tensor | None, dtype: torch.dtype | None,
            device: torch.device | str | None) -> torch.Tensor | None:
    return None if t is None else t.to(device=device, dtype=dtype)


@dataclass
class AttentionWeights:
    """The q, k, v, o projections of one attention layer (`[out, in]` matrices as
    `F.linear` takes them, optional biases)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    o_bias: torch.Tensor | None

    @classmethod
    def of(cls, attn: object) -> AttentionWeights:
        """From a transformers attention module with q_proj, k_proj, v_proj, o_proj."""
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        return cls(*(weight(attn, n) for n in names), *(bias(attn, n) for n in names))

    def project(self, x: torch.Tensor, shape: ModelShape
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q `[n, num_heads, D]`, k and v `[n, num_kv_heads, D]` of hidden states `[n, hidden]`."""
        n = x.shape[0]
        return (F.linear(x, self.q, self.q_bias).view(n, shape.num_heads, shape.head_size),
                F.linear(x, self.k, self.k_bias).view(n, shape.num_kv_heads, shape.head_size),
                F.linear(x, self.v, self.v_bias).view(n, shape.num_kv_heads, shape.head_size))

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        """The o projection of attention outputs `[n, num_heads, D]`."""
        return F.linear(attn.reshape(attn.shape[0], -1), self.o, self.o_bias)


def check_model_type(hf_model: Any, model_type: str, class_name: str) -> Any:
    """The config of a transformers causal LM of `model_type` (a transformers config: its
    fields are read by name); ValueError naming what it got otherwise."""
    config = getattr(hf_model, "config", None)
    base = getattr(hf_model, "model", None)
    if config is None or base is None or not hasattr(hf_model, "lm_head") \
            or not hasattr(base, "layers"):
        raise ValueError(f"hf_model must be a transformers {class_name}, got "
                         f"{type(hf_model).__name__}")
    if getattr(config, "model_type", None) != model_type:
        raise ValueError(f"hf_model.config.model_type must be {model_type!r}, got "
                         f"{getattr(config, 'model_type', None)!r}")
    return config


__all__ = ["LENGTH_DEPENDENT_ROPE", "AttentionWeights", "ModelShape", "Rotary", "apply_rotary",
           "bias", "check_model_type", "convert", "rms_norm", "rms_norm_scaled_first",
           "rotate_half", "shape_of", "weight"]
