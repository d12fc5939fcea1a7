"""A Llama-architecture decoder (RMSNorm, rotary embeddings, GQA, SwiGLU) on the paged cache.

The weights come from a Hugging Face `transformers` Llama model object, so the engine can be
checked token for token against `generate()` on the same weights; nothing is downloaded and
`transformers` itself is not imported here. The arithmetic follows the reference model's
order of operations (RMSNorm in float32 then cast, rotary tables in float32 then cast,
separate q/k/v and gate/up projections) so that in float32 the two agree to rounding and
greedy tokens match exactly.

Inference only: weights are plain tensors, the forward runs under `torch.inference_mode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch
import torch.nn.functional as F

from kvpager.cache import KVCache
from kvpager.engine.attention import StepInputs, paged_self_attention

#: Rotary variants whose frequencies change with the sequence length: a cache written at
#: one length would be wrong at another, so they are refused.
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


@dataclass(frozen=True)
class LlamaShape:
    """The geometry the cache and kernels need. head_size = hidden / heads unless the
    config sets `head_dim`."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    rms_norm_eps: float


@dataclass
class _Layer:
    """Weights of one decoder layer; `[out, in]` matrices as `F.linear` takes them."""

    input_norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    gate_bias: torch.Tensor | None
    up_bias: torch.Tensor | None
    down_bias: torch.Tensor | None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise in float32 and cast back before the weight: the reference's order, which
    matters in fp16/bf16 where the two orders round differently."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _weight(module: object, name: str) -> torch.Tensor:
    return getattr(module, name).weight.detach()


def _bias(module: object, name: str) -> torch.Tensor | None:
    bias = getattr(getattr(module, name), "bias", None)
    return None if bias is None else bias.detach()


class PagedLlama:
    """Llama forward pass over `StepInputs` that reads and writes a `KVCache`.

    Build with `PagedLlama.from_hf(hf_model)`. `forward` returns float32 logits
    `[num_logits, vocab]` for the batch's `logits_indices`.
    """

    def __init__(self, shape: LlamaShape, embed: torch.Tensor, layers: list[_Layer],
                 final_norm: torch.Tensor, lm_head: torch.Tensor, inv_freq: torch.Tensor,
                 rope_scaling: float) -> None:
        self.shape = shape
        self.embed, self.layers, self.final_norm, self.lm_head = embed, layers, final_norm, \
            lm_head
        self.inv_freq = inv_freq.float()  # [head_size // 2]
        self.rope_scaling = float(rope_scaling)
        self.scale = shape.head_size ** -0.5

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @classmethod
    def from_hf(cls, hf_model: object, *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> PagedLlama:
        """Copy the weights of a `transformers` `LlamaForCausalLM` (random or trained).

        dtype / device: convert the weights (default: as they are in `hf_model`).
        Raises ValueError for a model that is not a Llama causal LM, or whose rotary
        embedding depends on the sequence length (dynamic NTK, LongRoPE).
        """
        config = getattr(hf_model, "config", None)
        base = getattr(hf_model, "model", None)
        if config is None or base is None or not hasattr(hf_model, "lm_head") \
                or not hasattr(base, "layers"):
            raise ValueError(f"hf_model must be a transformers LlamaForCausalLM, got "
                             f"{type(hf_model).__name__}")
        if getattr(config, "model_type", None) != "llama":
            raise ValueError(f"hf_model.config.model_type must be 'llama', got "
                             f"{getattr(config, 'model_type', None)!r}")
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hf_model.config.hidden_act must be 'silu' (SwiGLU), got {act!r}")
        rotary = base.rotary_emb
        rope_type = getattr(rotary, "rope_type", "default")
        if rope_type in _LENGTH_DEPENDENT_ROPE:
            raise ValueError(f"rope type {rope_type!r} changes with the sequence length, which "
                             "a KV cache written earlier cannot follow; supported: static "
                             "types (default, linear, llama3, yarn)")
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
        shape = LlamaShape(config.vocab_size, config.hidden_size, config.num_hidden_layers,
                           heads, kv_heads, head_size, float(config.rms_norm_eps))
        layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append(_Layer(
                layer.input_layernorm.weight.detach(),
                _weight(attn, "q_proj"), _weight(attn, "k_proj"), _weight(attn, "v_proj"),
                _weight(attn, "o_proj"), _bias(attn, "q_proj"), _bias(attn, "k_proj"),
                _bias(attn, "v_proj"), _bias(attn, "o_proj"),
                layer.post_attention_layernorm.weight.detach(),
                _weight(mlp, "gate_proj"), _weight(mlp, "up_proj"), _weight(mlp, "down_proj"),
                _bias(mlp, "gate_proj"), _bias(mlp, "up_proj"), _bias(mlp, "down_proj"),
            ))
        model = cls(shape, base.embed_tokens.weight.detach(), layers, base.norm.weight.detach(),
                    hf_model.lm_head.weight.detach(), rotary.inv_freq.detach(),
                    getattr(rotary, "attention_scaling", 1.0))
        return model.to(dtype=dtype, device=device)

    def to(self, *, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> PagedLlama:
        """Convert the weights in place (the rotary frequencies stay float32); returns self."""
        @overload
        def conv(t: torch.Tensor) -> torch.Tensor: ...
        @overload
        def conv(t: torch.Tensor | None) -> torch.Tensor | None: ...
        def conv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        self.embed, self.final_norm = conv(self.embed), conv(self.final_norm)
        self.lm_head = conv(self.lm_head)
        for layer in self.layers:
            for name, value in vars(layer).items():
                setattr(layer, name, conv(value))
        self.inv_freq = self.inv_freq.to(device=device)
        return self

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin `[num_tokens, head_size]` in the model dtype, computed in float32."""
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return ((emb.cos() * self.rope_scaling).to(self.dtype),
                (emb.sin() * self.rope_scaling).to(self.dtype))

    @torch.inference_mode()
    def forward(self, batch: StepInputs, cache: KVCache, *, backend: str = "auto",
                check_indices: bool = True) -> torch.Tensor:
        """Run one step; returns float32 logits `[len(batch.logits_indices), vocab]`."""
        s = self.shape
        n = batch.num_tokens
        h = F.embedding(batch.input_ids, self.embed)  # [n, hidden]
        cos, sin = self._rotary(batch.positions)
        cos, sin = cos[:, None, :], sin[:, None, :]
        for index, w in enumerate(self.layers):
            x = _rms_norm(h, w.input_norm, s.rms_norm_eps)
            q = F.linear(x, w.q, w.q_bias).view(n, s.num_heads, s.head_size)
            k = F.linear(x, w.k, w.k_bias).view(n, s.num_kv_heads, s.head_size)
            v = F.linear(x, w.v, w.v_bias).view(n, s.num_kv_heads, s.head_size)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            attn = paged_self_attention(q, k, v, index, cache, batch, self.scale,
                                        backend=backend, check_indices=check_indices)
            h = h + F.linear(attn.reshape(n, -1), w.o, w.o_bias)
            x = _rms_norm(h, w.post_norm, s.rms_norm_eps)
            mlp = F.silu(F.linear(x, w.gate, w.gate_bias)) * F.linear(x, w.up, w.up_bias)
            h = h + F.linear(mlp, w.down, w.down_bias)
        h = _rms_norm(h[batch.logits_indices], self.final_norm, s.rms_norm_eps)
        return F.linear(h, self.lm_head).float()


__all__ = ["LlamaShape", "PagedLlama"]
