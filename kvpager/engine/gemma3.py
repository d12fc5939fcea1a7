"""Gemma 3 (text) on the paged cache: local sliding-window and global layers, each kind with
its own rotary base, and Gemma's norms and scalings.

Follows transformers' `Gemma3ForCausalLM` (v5) operation by operation:

- the input embedding is multiplied by `sqrt(hidden_size)` (cast to the weight dtype);
- RMSNorm scales by `1 + weight` in float32 before casting back; four per layer (before and
  after attention, before and after the MLP) and one on each query and key head (q_norm,
  k_norm, over head_dim, before the rotary embedding);
- rotary tables per layer type (`rope_parameters[layer_type]`: local layers default to base
  10,000, global ones to 1,000,000, possibly scaled);
- attention scale `query_pre_attn_scalar ** -0.5`; `sliding_attention` layers read a window
  of `config.sliding_window` keys (their KV-cache group releases blocks before it);
- MLP: `down(act(gate(x)) * up(x))` with `hidden_activation` (GELU, tanh approximation);
- logits optionally soft-capped: `cap * tanh(logits / cap)` (`final_logit_softcapping`).

Refused with UnsupportedModelError: attention logit soft-capping (`attn_logit_softcapping`,
Gemma 2's; the paged kernels have none) and bidirectional attention (not causal decoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kvpager.cache import KVCache
from kvpager.engine.attention import StepInputs
from kvpager.engine.kv_layout import KVLayout, UnsupportedModelError
from kvpager.engine.layers import (
    AttentionWeights,
    ModelShape,
    Rotary,
    apply_rotary,
    check_model_type,
    rms_norm_scaled_first,
    shape_of,
    weight,
)
from kvpager.engine.model import PagedModel

#: transformers' activation names the MLP supports, and torch's GELU approximation of each.
_GELU = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}


@dataclass
class _Layer:
    """One decoder layer: four hidden-state norms, per-head q / k norms `[head_dim]`,
    attention and MLP weights."""

    input_norm: torch.Tensor
    attn: AttentionWeights
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    post_attn_norm: torch.Tensor
    pre_mlp_norm: torch.Tensor
    post_mlp_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


def _norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_scaled_first(x, w, eps, offset=1.0)


class PagedGemma3(PagedModel):
    """Gemma 3 text forward pass over `StepInputs` on a (hybrid) `KVCache`."""

    def __init__(self, shape: ModelShape, layout: KVLayout, embed: torch.Tensor,
                 layers: list[_Layer], final_norm: torch.Tensor, lm_head: torch.Tensor,
                 rotaries: dict[str, Rotary], layer_types: tuple[str, ...], *,
                 scale: float, embed_scale: float, approximate: str,
                 final_softcap: float | None) -> None:
        self.shape, self.layout = shape, layout
        self.embed, self.layers, self.final_norm, self.lm_head = embed, layers, final_norm, \
            lm_head
        self.rotaries, self.layer_types = rotaries, layer_types
        self.scale, self.embed_scale = scale, embed_scale
        self.approximate, self.final_softcap = approximate, final_softcap

    @classmethod
    def from_hf(cls, hf_model: Any, *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> PagedGemma3:
        """Copy the weights of a `transformers` `Gemma3ForCausalLM` (text only).

        Raises UnsupportedModelError (a ValueError) for what the engine cannot serve (see
        the module docstring) before copying anything.
        """
        config = check_model_type(hf_model, "gemma3_text", "Gemma3ForCausalLM")
        c = config
        if getattr(c, "attn_logit_softcapping", None) is not None:
            raise UnsupportedModelError(
                "gemma3: config.attn_logit_softcapping is set; the paged attention kernels "
                "have no logit soft-capping")
        if getattr(c, "use_bidirectional_attention", False):
            raise UnsupportedModelError(
                "gemma3: config.use_bidirectional_attention=True; the engine decodes causally")
        act = getattr(c, "hidden_activation", None)
        if act not in _GELU:
            raise UnsupportedModelError(f"gemma3: config.hidden_activation {act!r} is not one "
                                        f"the engine implements ({sorted(_GELU)})")
        base = hf_model.model
        shape = shape_of(c)
        layer_types = tuple(c.layer_types)
        layout = KVLayout.build(layer_types, c.sliding_window,
                                num_kv_heads=shape.num_kv_heads, head_size=shape.head_size,
                                dtype_bytes=base.embed_tokens.weight.element_size(),
                                architecture="gemma3")
        try:
            rotaries = {kind: Rotary.of(base.rotary_emb, f"{kind}_")
                        for kind in sorted(set(layer_types))}
        except ValueError as exc:
            raise UnsupportedModelError(f"gemma3: {exc}") from None
        layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append(_Layer(
                layer.input_layernorm.weight.detach(), AttentionWeights.of(attn),
                attn.q_norm.weight.detach(), attn.k_norm.weight.detach(),
                layer.post_attention_layernorm.weight.detach(),
                layer.pre_feedforward_layernorm.weight.detach(),
                layer.post_feedforward_layernorm.weight.detach(),
                weight(mlp, "gate_proj"), weight(mlp, "up_proj"), weight(mlp, "down_proj")))
        softcap = getattr(c, "final_logit_softcapping", None)
        model = cls(shape, layout, base.embed_tokens.weight.detach(), layers,
                    base.norm.weight.detach(),
                    hf_model.lm_head.weight.detach(),
                    rotaries, layer_types,
                    scale=float(c.query_pre_attn_scalar) ** -0.5,
                    embed_scale=math.sqrt(shape.hidden_size), approximate=_GELU[act],
                    final_softcap=None if softcap is None else float(softcap))
        model.to(dtype=dtype, device=device)
        return model

    def _rotaries(self) -> list[Rotary]:
        return list(self.rotaries.values())

    @torch.inference_mode()
    def forward(self, batch: StepInputs, cache: KVCache, *, backend: str = "auto",
                check_indices: bool = True) -> torch.Tensor:
        """Run one step; returns float32 logits `[len(batch.logits_indices), vocab]`."""
        s = self.shape
        eps = s.rms_norm_eps
        # transformers multiplies by a float32 scalar tensor cast to the weight dtype
        scale = torch.tensor(self.embed_scale, dtype=torch.float32).to(self.dtype)
        h = F.embedding(batch.input_ids, self.embed) * scale.to(self.device)
        tables = {kind: r.tables(batch.positions, self.dtype)
                  for kind, r in self.rotaries.items()}
        for index, w in enumerate(self.layers):
            x = _norm(h, w.input_norm, eps)
            q, k, v = w.attn.project(x, s)
            cos, sin = tables[self.layer_types[index]]
            q = apply_rotary(_norm(q, w.q_norm, eps), cos, sin)
            k = apply_rotary(_norm(k, w.k_norm, eps), cos, sin)
            attn = self.attend(index, q, k, v, cache, batch, self.scale, backend=backend,
                               check_indices=check_indices)
            h = h + _norm(w.attn.output(attn), w.post_attn_norm, eps)
            x = _norm(h, w.pre_mlp_norm, eps)
            mlp = F.gelu(F.linear(x, w.gate), approximate=self.approximate) \
                * F.linear(x, w.up)
            h = h + _norm(F.linear(mlp, w.down), w.post_mlp_norm, eps)
        h = _norm(h[batch.logits_indices], self.final_norm, eps)
        logits = F.linear(h, self.lm_head)
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits.float()


__all__ = ["PagedGemma3"]
