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
from typing import Any

import torch
import torch.nn.functional as F

from kvpager.cache import KVCache
from kvpager.engine.attention import StepInputs
from kvpager.engine.kv_layout import KVLayout
from kvpager.engine.layers import (
    AttentionWeights,
    ModelShape,
    Rotary,
    apply_rotary,
    bias,
    check_model_type,
    rms_norm,
    shape_of,
    weight,
)
from kvpager.engine.model import PagedModel

#: The shape of any paged model; the name predates the other architectures.
LlamaShape = ModelShape


@dataclass
class _Layer:
    """Weights of one decoder layer; `[out, in]` matrices as `F.linear` takes them."""

    input_norm: torch.Tensor
    attn: AttentionWeights
    post_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    gate_bias: torch.Tensor | None
    up_bias: torch.Tensor | None
    down_bias: torch.Tensor | None


class PagedLlama(PagedModel):
    """Llama forward pass over `StepInputs` that reads and writes a `KVCache`.

    Build with `PagedLlama.from_hf(hf_model)`. `forward` returns float32 logits
    `[num_logits, vocab]` for the batch's `logits_indices`.
    """

    def __init__(self, shape: ModelShape, embed: torch.Tensor, layers: list[_Layer],
                 final_norm: torch.Tensor, lm_head: torch.Tensor, inv_freq: torch.Tensor,
                 rope_scaling: float) -> None:
        self.shape = shape
        self.layout = KVLayout.full(shape.num_layers, num_kv_heads=shape.num_kv_heads,
                                    head_size=shape.head_size,
                                    dtype_bytes=embed.element_size())
        self.embed, self.layers, self.final_norm, self.lm_head = embed, layers, final_norm, \
            lm_head
        self.rotary = Rotary(inv_freq, rope_scaling)
        self.scale = shape.head_size ** -0.5

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.rotary.inv_freq

    @classmethod
    def from_hf(cls, hf_model: Any, *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> PagedLlama:
        """Copy the weights of a `transformers` `LlamaForCausalLM` (random or trained).

        dtype / device: convert the weights (default: as they are in `hf_model`).
        Raises ValueError for a model that is not a Llama causal LM, or whose rotary
        embedding depends on the sequence length (dynamic NTK, LongRoPE).
        """
        config = check_model_type(hf_model, "llama", "LlamaForCausalLM")
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hf_model.config.hidden_act must be 'silu' (SwiGLU), got {act!r}")
        base = hf_model.model
        rotary = Rotary.of(base.rotary_emb)
        layers = []
        for layer in base.layers:
            mlp = layer.mlp
            layers.append(_Layer(
                layer.input_layernorm.weight.detach(), AttentionWeights.of(layer.self_attn),
                layer.post_attention_layernorm.weight.detach(),
                weight(mlp, "gate_proj"), weight(mlp, "up_proj"), weight(mlp, "down_proj"),
                bias(mlp, "gate_proj"), bias(mlp, "up_proj"), bias(mlp, "down_proj"),
            ))
        model = cls(shape_of(config), base.embed_tokens.weight.detach(), layers,
                    base.norm.weight.detach(),
                    hf_model.lm_head.weight.detach(),
                    rotary.inv_freq, rotary.scaling)
        return model.to(dtype=dtype, device=device)

    def to(self, *, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> PagedLlama:
        super().to(dtype=dtype, device=device)
        return self

    def _rotaries(self) -> list[Rotary]:
        return [self.rotary]

    @torch.inference_mode()
    def forward(self, batch: StepInputs, cache: KVCache, *, backend: str = "auto",
                check_indices: bool = True) -> torch.Tensor:
        """Run one step; returns float32 logits `[len(batch.logits_indices), vocab]`."""
        s = self.shape
        h = F.embedding(batch.input_ids, self.embed)  # [n, hidden]
        cos, sin = self.rotary.tables(batch.positions, self.dtype)
        for index, w in enumerate(self.layers):
            x = rms_norm(h, w.input_norm, s.rms_norm_eps)
            q, k, v = w.attn.project(x, s)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            attn = self.attend(index, q, k, v, cache, batch, self.scale, backend=backend,
                               check_indices=check_indices)
            h = h + w.attn.output(attn)
            x = rms_norm(h, w.post_norm, s.rms_norm_eps)
            mlp = F.silu(F.linear(x, w.gate, w.gate_bias)) * F.linear(x, w.up, w.up_bias)
            h = h + F.linear(mlp, w.down, w.down_bias)
        h = rms_norm(h[batch.logits_indices], self.final_norm, s.rms_norm_eps)
        return F.linear(h, self.lm_head).float()


__all__ = ["LlamaShape", "PagedLlama"]
