"""gpt-oss on the paged cache: alternating sliding-window and full attention layers with
learned attention sinks, YaRN rotary embeddings, and a mixture-of-experts MLP.

Follows transformers' `GptOssForCausalLM` (v5) operation by operation:

- RMSNorm scales by the weight in float32 before casting back (`rms_norm_scaled_first`);
- attention: q/k/v/o projections with biases, rotary (YaRN: `transformers` computed the
  frequencies and the attention factor; they are copied, not re-derived), scale
  `head_dim ** -0.5`, one learned sink logit per head in the softmax denominator, and on
  `sliding_attention` layers a window of `config.sliding_window` keys (a query at p reads
  p - W + 1 .. p); the KV-cache group of those layers releases blocks before the window;
- MLP: a router (linear with bias) picks the top-k experts per token, their logits
  softmaxed into weights; each expert computes `gate_up = x @ W + b` with gate and up
  interleaved (even and odd columns), `gate` clamped above and `up` on both sides at
  `swiglu_limit`, `(up + 1) * gate * sigmoid(alpha * gate)`, then `@ down + b`; outputs are
  summed with the routing weights.
"""

from __future__ import annotations

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
)
from kvpager.engine.model import PagedModel


@dataclass
class _Layer:
    """One decoder layer. Experts: gate_up `[E, hidden, 2I]` (gate and up interleaved),
    gate_up_bias `[E, 2I]`, down `[E, I, hidden]`, down_bias `[E, hidden]`; router
    `[E, hidden]` and its bias `[E]`; sinks float32 `[num_heads]`."""

    input_norm: torch.Tensor
    attn: AttentionWeights
    sinks: torch.Tensor
    post_norm: torch.Tensor
    router: torch.Tensor
    router_bias: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor
    down: torch.Tensor
    down_bias: torch.Tensor


@dataclass(frozen=True)
class MoeSettings:
    """Routing and activation constants: experts per token, SwiGLU gain and clamp."""

    top_k: int
    alpha: float
    limit: float


def moe_mlp(x: torch.Tensor, w: _Layer, moe: MoeSettings) -> torch.Tensor:
    """The mixture-of-experts MLP of hidden states `[n, hidden]`; returns `[n, hidden]`.

    Every expert some token picked runs once on its tokens (a loop over experts, as
    transformers' reference loop does: a minimal engine, not a grouped-GEMM kernel).
    """
    logits = F.linear(x, w.router, w.router_bias)  # [n, E]
    top_values, experts = torch.topk(logits, moe.top_k, dim=-1)  # [n, k]
    weights = torch.softmax(top_values, dim=1, dtype=top_values.dtype)
    out = torch.zeros_like(x)
    for expert in torch.unique(experts).tolist():
        tokens, rank = torch.where(experts == expert)
        gate_up = x[tokens] @ w.gate_up[expert] + w.gate_up_bias[expert]
        gate = gate_up[..., ::2].clamp(max=moe.limit)
        up = gate_up[..., 1::2].clamp(min=-moe.limit, max=moe.limit)
        act = (up + 1) * (gate * torch.sigmoid(gate * moe.alpha))
        y = act @ w.down[expert] + w.down_bias[expert]
        out.index_add_(0, tokens, (y * weights[tokens, rank, None]).to(x.dtype))
    return out


class PagedGptOss(PagedModel):
    """gpt-oss forward pass over `StepInputs` on a (hybrid) `KVCache`.

    Build with `PagedGptOss.from_hf(hf_model)`; `layout` gives the engine its KV-cache
    groups (window layers and full layers).
    """

    def __init__(self, shape: ModelShape, layout: KVLayout, embed: torch.Tensor,
                 layers: list[_Layer], final_norm: torch.Tensor, lm_head: torch.Tensor,
                 rotary: Rotary, moe: MoeSettings) -> None:
        self.shape, self.layout, self.moe = shape, layout, moe
        self.embed, self.layers, self.final_norm, self.lm_head = embed, layers, final_norm, \
            lm_head
        self.rotary = rotary
        self.scale = shape.head_size ** -0.5

    @classmethod
    def from_hf(cls, hf_model: Any, *, dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> PagedGptOss:
        """Copy the weights of a `transformers` `GptOssForCausalLM`.

        Raises UnsupportedModelError (a ValueError) for a layer type other than full and
        sliding attention, a rotary embedding that depends on the sequence length, or
        a model that is not gpt-oss.
        """
        config = check_model_type(hf_model, "gpt_oss", "GptOssForCausalLM")
        base = hf_model.model
        shape = shape_of(config)
        try:
            rotary = Rotary.of(base.rotary_emb)
        except ValueError as exc:
            raise UnsupportedModelError(f"gpt-oss: {exc}") from None
        layout = KVLayout.build(
            config.layer_types, config.sliding_window,
            num_kv_heads=shape.num_kv_heads, head_size=shape.head_size,
            dtype_bytes=base.embed_tokens.weight.element_size(), architecture="gpt-oss")
        layers = []
        for layer in base.layers:
            experts, router = layer.mlp.experts, layer.mlp.router
            layers.append(_Layer(
                layer.input_layernorm.weight.detach(), AttentionWeights.of(layer.self_attn),
                layer.self_attn.sinks.detach().float(),
                layer.post_attention_layernorm.weight.detach(),
                router.weight.detach(), router.bias.detach(),
                experts.gate_up_proj.detach(), experts.gate_up_proj_bias.detach(),
                experts.down_proj.detach(), experts.down_proj_bias.detach()))
        moe = MoeSettings(int(config.num_experts_per_tok),
                          float(config.swiglu_alpha),
                          float(config.swiglu_limit))
        model = cls(shape, layout, base.embed_tokens.weight.detach(), layers,
                    base.norm.weight.detach(),
                    hf_model.lm_head.weight.detach(),
                    rotary, moe)
        model.to(dtype=dtype, device=device)
        return model

    def _rotaries(self) -> list[Rotary]:
        return [self.rotary]

    def _float32(self) -> frozenset[str]:
        return frozenset({"sinks"})

    @torch.inference_mode()
    def forward(self, batch: StepInputs, cache: KVCache, *, backend: str = "auto",
                check_indices: bool = True) -> torch.Tensor:
        """Run one step; returns float32 logits `[len(batch.logits_indices), vocab]`."""
        s = self.shape
        eps = s.rms_norm_eps
        h = F.embedding(batch.input_ids, self.embed)  # [n, hidden]
        cos, sin = self.rotary.tables(batch.positions, self.dtype)
        for index, w in enumerate(self.layers):
            x = rms_norm_scaled_first(h, w.input_norm, eps)
            q, k, v = w.attn.project(x, s)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            attn = self.attend(index, q, k, v, cache, batch, self.scale, backend=backend,
                               check_indices=check_indices, sinks=w.sinks)
            h = h + w.attn.output(attn)
            h = h + moe_mlp(rms_norm_scaled_first(h, w.post_norm, eps), w, self.moe)
        h = rms_norm_scaled_first(h[batch.logits_indices], self.final_norm, eps)
        return F.linear(h, self.lm_head).float()


__all__ = ["MoeSettings", "PagedGptOss", "moe_mlp"]
