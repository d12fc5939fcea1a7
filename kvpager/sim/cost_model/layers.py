"""What each layer of a model costs, per GPU of a tensor-parallel group: the one place that
turns a `ModelSpec`'s layers into KV bytes, attention reach, state and expert weights.

- KV bytes per token of one layer (`layer_kv_bytes`): K and V of `max(1, kv_heads / tp)`
  heads (KV heads are split across ranks down to one, replicated beyond), an MLA layer's
  latent (the same on every rank, not split), nothing for a linear-attention layer (its
  state is per sequence). `LayerCosts.kv_token` sums it over the layers: the bytes a
  manager without groups allocates per token; `kvpager.sim.kv_groups` groups the same figure.
- What a query reads (`reach`): every earlier key (full, MLA), the last `sliding_window`, or
  its own `attention_chunk_size` chunk. `decode_context` and `prefill_work` turn a batch
  into the (query, key) pairs of a *full-attention-equivalent* layer, averaged over the
  attention layers, so the step-time formula stays one formula: `attn_pair` (FLOPs per pair,
  all attention layers) and `kv_token` (bytes per key, all attention layers) multiply it.
- State layers: `state_seq` bytes per sequence (read and written once per decode step) and
  `state_flops` per token (the recurrence, outside the projections).
- Experts: a token multiplies its `experts_per_token` experts (`active_params`); a step
  reads every expert some token of the batch is routed to: in expectation
  E (1 - (1 - k/E)^T) per MoE layer for T tokens, uniform routing (`expert_bytes_read`).
  Memory holds every expert (`weight_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kvpager.sim.presets import ModelSpec


def layer_kv_bytes(model: ModelSpec, kind: str, tp: int, kv_bytes: int) -> int:
    """KV bytes one token takes in one layer of `kind` on one of `tp` ranks."""
    if kind == "linear":
        return 0
    if kind == "mla":
        assert model.mla is not None
        return model.mla.latent_dim * kv_bytes
    return 2 * max(1, model.num_kv_heads // tp) * model.head_size * kv_bytes


def layer_state_bytes(model: ModelSpec, tp: int, state_bytes: int) -> int:
    """Bytes of one linear-attention layer's state per sequence on one rank."""
    shape = model.linear_attention
    return 0 if shape is None else shape.state_elements(tp) * state_bytes


def _reach(model: ModelSpec, kind: str) -> int | None:
    """Keys a query of a `kind` layer reads at most (None: all; chunked: negative chunk)."""
    if kind == "sliding":
        return model.sliding_window
    if kind == "chunked":
        assert model.attention_chunk_size is not None
        return -model.attention_chunk_size
    return None


def _chunk_prefix_sum(m: int, chunk: int) -> float:
    """Sum over positions q < m of the keys a chunked query reads, q % chunk + 1."""
    full, rest = divmod(m, chunk)
    return full * chunk * (chunk + 1) / 2 + rest * (rest + 1) / 2


@dataclass(frozen=True)
class LayerCosts:
    """Per-rank costs of `model`'s layers (module docstring). Built by `of`."""

    kv_token: float
    attn_pair_flops: float
    reaches: tuple[tuple[float, int | None], ...]  # (share of attention layers, reach)
    state_seq: float
    state_flops: float
    weight_bytes: float
    streamed_bytes: float
    expert_bytes: float  # one routed expert of one layer, whole (divide by tp per rank)
    moe_layers: int
    active_params: int

    @staticmethod
    def of(model: ModelSpec, tp: int, weight_elem: int, kv_elem: int) -> LayerCosts:
        kinds = model.layer_kinds()
        attention = [k for k in kinds if k != "linear"]
        kv_token = sum(layer_kv_bytes(model, k, tp, kv_elem) for k in kinds)
        heads = model.num_heads // tp
        if model.mla is not None:  # absorbed MLA: scores over the latent, values from it
            per_pair = 2 * heads * (model.mla.latent_dim + model.mla.kv_lora_rank)
        else:
            per_pair = 4 * heads * model.head_size
        counts: dict[int | None, int] = {}
        for k in attention:
            counts[_reach(model, k)] = counts.get(_reach(model, k), 0) + 1
        reaches = tuple((n / len(attention), r) for r, n in counts.items())
        linear = kinds.count("linear")
        shape = model.linear_attention
        state_seq = 2 * linear * layer_state_bytes(model, tp, weight_elem)  # read + write
        state_flops = linear * shape.flops_per_token() / tp if shape is not None else 0.0
        layer_bits = model.weight_bits or 8 * weight_elem
        expert_bits = model.expert_weight_bits or layer_bits
        tables = (1 if model.tie_word_embeddings else 2) * model.embedding_params
        routed = model.routed_expert_params
        other = model.num_params - tables - routed
        weight_bytes = tables * weight_elem + other * layer_bits / 8 + routed * expert_bits / 8
        input_table = 0 if model.tie_word_embeddings else model.embedding_params
        expert_bytes = 0.0
        if model.moe is not None:
            expert_bytes = 3 * model.hidden_size * model.moe.expert_intermediate_size \
                * expert_bits / 8
        streamed = weight_bytes - input_table * weight_elem - routed * expert_bits / 8
        return LayerCosts(kv_token, len(attention) * per_pair, reaches, state_seq, state_flops,
                          weight_bytes, streamed, expert_bytes, model.num_moe_layers,
                          model.active_body_params)

    @property
    def windowed(self) -> bool:
        """Whether some attention layer reads less than every earlier key."""
        return any(r is not None for _s, r in self.reaches)

    def decode_context(self, seq_lens: np.ndarray, steps: int = 1) -> float:
        """Keys the decode batch reads per full-attention-equivalent layer, at the middle
        step of a `steps`-step window: sum over sequences of what each layer kind reads,
        averaged over the attention layers. `seq_lens`: lengths after the window."""
        batch = int(seq_lens.size)
        if not self.windowed:
            return float(seq_lens.sum()) - batch * (steps - 1) / 2
        mid = np.asarray(seq_lens, dtype=np.float64) - (steps - 1) / 2
        total = 0.0
        for share, reach in self.reaches:
            if reach is None:
                read = mid.sum()
            elif reach > 0:
                read = np.minimum(mid, reach).sum()
            else:
                read = (np.mod(np.ceil(mid) - 1, -reach) + 1).sum()
            total += share * float(read)
        return total

    def prefill_work(self, chunk_tokens: int, context_before: int) -> float:
        """(query, key) pairs of a prefill chunk of n new tokens after c computed ones, per
        full-attention-equivalent layer (full: n (c + (n + 1) / 2))."""
        n, c = chunk_tokens, context_before
        if not self.windowed:
            return n * (c + (n + 1) / 2)
        total = 0.0
        for share, reach in self.reaches:
            if reach is None:
                pairs = n * (c + (n + 1) / 2)
            elif reach > 0:  # query at 0-based position q reads min(q + 1, W) keys
                top = min(c + n, reach)  # queries up to here read q + 1
                pairs = (max(0, top - c) * (c + 1 + top) / 2 if top > c else 0.0)
                pairs += max(0, c + n - max(c, reach)) * reach
            else:
                pairs = _chunk_prefix_sum(c + n, -reach) - _chunk_prefix_sum(c, -reach)
            total += share * pairs
        return total

    def expert_bytes_read(self, model: ModelSpec, tokens: int) -> float:
        """Routed-expert bytes one step streams (whole model; divide by tp per rank)."""
        if model.moe is None or tokens <= 0:
            return 0.0
        return self.moe_layers * model.moe.expected_distinct_experts(tokens) * self.expert_bytes
