"""A model's parameter count recomputed from its shapes, so that a typo in a preset (or a
spec file's count that does not follow from its shapes) cannot go unnoticed.

The counts are per architecture family, with switches for what the families differ in:
biases, extra norms, attention sinks, an output gate, router and expert biases. Attention
layers of every kind (full, sliding, chunked) have the same weights; MLA and linear-attention
(Gated DeltaNet) layers have their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # import cycle at run time: presets imports this module
    from kvpager.sim.presets import ModelSpec


@dataclass(frozen=True)
class Quirks:
    """What an architecture family adds to a Llama-style decoder layer.

    gated_mlp: SwiGLU (3 matrices) rather than a plain 2-matrix MLP (OPT).
    biases: LayerNorm with bias and biases on every projection (OPT).
    attention_bias: biases on q, k, v, o only (gpt-oss).
    norms_per_layer: RMSNorm vectors per layer (2; Gemma 2/3: 4).
    qk_norm: a head_size RMSNorm on queries and on keys (Gemma 3, Qwen3).
    sinks: one learned attention-sink logit per head (gpt-oss).
    output_gate: the query projection also produces a sigmoid gate (Qwen3-Next).
    router_bias: a bias (or score-correction bias) per expert (gpt-oss, DeepSeek-V3).
    expert_biases: biases inside every expert (gpt-oss).
    shared_expert_gate: a hidden x 1 gate on the shared expert (Qwen3-Next).
    learned_positions: rows of a learned position table (OPT: 2048 + 2).
    """

    gated_mlp: bool = True
    biases: bool = False
    attention_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    sinks: bool = False
    output_gate: bool = False
    router_bias: bool = False
    expert_biases: bool = False
    shared_expert_gate: bool = False
    learned_positions: int = 0


def _attention(m: ModelSpec, q: Quirks) -> int:
    h, d = m.hidden_size, m.head_size
    q_out, kv_out = m.num_heads * d, m.num_kv_heads * d
    n = h * q_out * (2 if q.output_gate else 1) + 2 * h * kv_out + q_out * h
    if q.biases or q.attention_bias:
        n += q_out + 2 * kv_out + h
    if q.qk_norm:
        n += 2 * d
    if q.sinks:
        n += m.num_heads
    return n


def _mla(m: ModelSpec) -> int:
    a, h, heads = m.mla, m.hidden_size, m.num_heads
    assert a is not None
    qk = a.qk_nope_head_dim + a.qk_rope_head_dim
    return (h * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * heads * qk
            + h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
            + a.kv_lora_rank * heads * (a.qk_nope_head_dim + a.v_head_dim)
            + heads * a.v_head_dim * h)


def _linear_attention(m: ModelSpec) -> int:
    s, h = m.linear_attention, m.hidden_size
    assert s is not None
    conv_dim = 2 * s.key_dim + s.value_dim
    return (h * (2 * s.key_dim + 2 * s.value_dim) + h * 2 * s.num_value_heads
            + conv_dim * s.conv_kernel + 2 * s.num_value_heads + s.value_head_dim
            + s.value_dim * h)


def _dense_mlp(m: ModelSpec, q: Quirks) -> int:
    h, inter = m.hidden_size, m.intermediate_size
    n = (3 if q.gated_mlp else 2) * h * inter
    if q.biases:
        n += inter + h
    return n


def _moe_mlp(m: ModelSpec, q: Quirks) -> int:
    e, h = m.moe, m.hidden_size
    assert e is not None
    n = h * e.num_experts + (e.num_experts if q.router_bias else 0)
    n += e.num_experts * 3 * h * e.expert_intermediate_size
    if q.expert_biases:
        n += e.num_experts * (2 * e.expert_intermediate_size + h)
    n += 3 * h * e.shared_size + (h if q.shared_expert_gate and e.num_shared_experts else 0)
    return n


def estimated_params(m: ModelSpec, quirks: Quirks = Quirks()) -> int:
    """Every weight of `m` once (tied tables once), from its shapes and `quirks`."""
    h = m.hidden_size
    norm = h * (2 if quirks.biases else 1)
    total = 0
    for i, kind in enumerate(m.layer_kinds()):
        if kind == "linear":
            total += _linear_attention(m)
        elif kind == "mla":
            total += _mla(m)
        else:
            total += _attention(m, quirks)
        moe_layer = m.moe is not None and i >= m.moe.num_dense_layers
        total += _moe_mlp(m, quirks) if moe_layer else _dense_mlp(m, quirks)
        total += quirks.norms_per_layer * norm
    tables = (1 if m.tie_word_embeddings else 2) * m.embedding_params
    return total + norm + tables + quirks.learned_positions * h
