"""What a model's layers are made of, beyond a dense transformer: attention kinds per layer,
mixture-of-experts, multi-head latent attention, linear-attention state.

These are the parts of a `kvpager.sim.presets.ModelSpec` that change memory and step time:

- `layer_types` (transformers' spelling): "full_attention", "sliding_attention" (a window of
  `sliding_window` keys), "chunked_attention" (keys of the query's own chunk of
  `attention_chunk_size`), "linear_attention" (a constant-size recurrent state, Gated
  DeltaNet / Mamba-like). Without a pattern every layer is full attention, or sliding when the
  model gives a window (Mistral-7B: every layer reads the last 4,096 keys), or MLA when it has
  an `MLAShape`.
- `MoEShape`: routed experts (total, active per token), shared experts, and the leading dense
  layers (DeepSeek-V3's first three).
- `MLAShape`: DeepSeek's latent attention: one `kv_lora_rank + qk_rope_head_dim` latent per
  token per layer, no separate K and V, the same on every tensor-parallel rank.
- `LinearAttentionShape`: Gated DeltaNet's heads and causal-convolution width, whence the
  state bytes per sequence.

Every shape checks its fields and raises `SpecError`-compatible `ValueError` naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "linear_attention")


def check_positive(shape: str, name: str, value: object) -> None:
    """`value` must be an int > 0 (bool is not an int here); the error names
    `shape.name`."""
    if type(value) is not int or value <= 0:
        raise ValueError(f"field '{shape}.{name}': expected an integer > 0, got {value!r}")


@dataclass(frozen=True)
class MoEShape:
    """A mixture-of-experts MLP: `num_experts` routed experts of `expert_intermediate_size`
    (gated, 3 matrices each), `experts_per_token` of them per token, plus `num_shared_experts`
    every token passes through (of `shared_intermediate_size`, default the expert's), and a
    router (hidden x num_experts). The first `num_dense_layers` layers have the dense MLP of
    the model's `intermediate_size` instead."""

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    num_shared_experts: int = 0
    shared_intermediate_size: int | None = None
    num_dense_layers: int = 0

    def __post_init__(self) -> None:
        for name in ("num_experts", "experts_per_token", "expert_intermediate_size"):
            check_positive("moe", name, getattr(self, name))
        for name in ("num_shared_experts", "num_dense_layers"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"field 'moe.{name}': expected an integer >= 0, got "
                                 f"{value!r}")
        if self.shared_intermediate_size is not None:
            check_positive("moe", "shared_intermediate_size", self.shared_intermediate_size)
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"field 'moe.experts_per_token': {self.experts_per_token} is "
                             f"more than num_experts = {self.num_experts}")

    @property
    def shared_size(self) -> int:
        """Intermediate width of all shared experts together."""
        width = self.shared_intermediate_size or self.expert_intermediate_size
        return self.num_shared_experts * width

    def expected_distinct_experts(self, tokens: float) -> float:
        """Experts of one layer that `tokens` tokens touch, in expectation, with uniform
        routing: E (1 - (1 - k/E)^tokens). One token: k; many: all E."""
        e, k = self.num_experts, self.experts_per_token
        if tokens <= 0:
            return 0.0
        return e * (1.0 - (1.0 - k / e) ** tokens)


@dataclass(frozen=True)
class MLAShape:
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a rank-`q_lora_rank`
    bottleneck, keys and values through a `kv_lora_rank` latent plus a shared
    `qk_rope_head_dim` rotary key; per head, `qk_nope_head_dim + qk_rope_head_dim` for the
    query/key and `v_head_dim` for the value."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    def __post_init__(self) -> None:
        for f in fields(self):
            check_positive("mla", f.name, getattr(self, f.name))

    @property
    def latent_dim(self) -> int:
        """Elements cached per token per layer (576 for DeepSeek-V3)."""
        return self.kv_lora_rank + self.qk_rope_head_dim


@dataclass(frozen=True)
class LinearAttentionShape:
    """Gated DeltaNet (Qwen3-Next): `num_key_heads` x `key_head_dim` keys (and queries),
    `num_value_heads` x `value_head_dim` values, a causal convolution of `conv_kernel` taps
    over q, k and v."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int

    def __post_init__(self) -> None:
        for f in fields(self):
            check_positive("linear_attention", f.name, getattr(self, f.name))

    @property
    def key_dim(self) -> int:
        return self.num_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.num_value_heads * self.value_head_dim

    def state_elements(self, tp: int = 1) -> int:
        """Elements of one layer's state per sequence on one of `tp` ranks: the recurrent
        state (value heads x key dim x value dim) and the convolution's last `conv_kernel - 1`
        inputs of q, k and v; heads are split across ranks."""
        heads = max(1, self.num_value_heads // tp)
        recurrent = heads * self.key_head_dim * self.value_head_dim
        conv = (self.conv_kernel - 1) * (2 * self.key_dim + self.value_dim) // tp
        return recurrent + conv

    def flops_per_token(self) -> int:
        """FLOPs of one layer's state update and readout per token (outside the projections):
        about 4 multiply-adds per state element (decay, delta, update, read)."""
        return 8 * self.num_value_heads * self.key_head_dim * self.value_head_dim


_SHAPES: dict[str, type] = {"moe": MoEShape, "mla": MLAShape,
                            "linear_attention": LinearAttentionShape}


def shape_from_json(owner: str, name: str, value: object) -> object:
    """A shape dataclass from its JSON object (spec files), naming unknown and missing
    fields as `name.field`."""
    cls = _SHAPES[name]
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{owner}: field '{name}': expected an object of "
                         f"{', '.join(f.name for f in fields(cls))}, got {value!r}")
    known = [f.name for f in fields(cls)]
    for key in value:
        if key not in known:
            raise ValueError(f"{owner}: field '{name}.{key}': unknown field; expected "
                             f"{', '.join(known)}")
    try:
        return cls(**value)
    except TypeError:
        missing = next(f for f in known if f not in value)
        raise ValueError(f"{owner}: field '{name}.{missing}': missing field") from None
    except ValueError as exc:
        raise ValueError(f"{owner}: {exc}") from None


def check_layer_types(owner: str, layer_types: object, num_layers: int) -> tuple[str, ...]:
    """The per-layer pattern as a tuple, each entry one of `LAYER_TYPES`, one per layer."""
    if isinstance(layer_types, (str, bytes)) or not isinstance(layer_types, (list, tuple)):
        raise ValueError(f"{owner}: field 'layer_types': expected a list of "
                         f"{', '.join(LAYER_TYPES)}, got {layer_types!r}")
    for i, kind in enumerate(layer_types):
        if kind not in LAYER_TYPES:
            raise ValueError(f"{owner}: field 'layer_types[{i}]': unknown attention type "
                             f"{kind!r}; expected one of {', '.join(LAYER_TYPES)}")
    if len(layer_types) != num_layers:
        raise ValueError(f"{owner}: field 'layer_types': {len(layer_types)} entries but "
                         f"num_layers = {num_layers}: the pattern must name every layer once")
    return tuple(layer_types)


def alternating(first: str, second: str, num_layers: int) -> tuple[str, ...]:
    """`first, second, first, ...` over `num_layers` layers (gpt-oss, Gemma 2)."""
    return tuple(first if i % 2 == 0 else second for i in range(num_layers))


def every_nth(kind: str, n: int, other: str, num_layers: int) -> tuple[str, ...]:
    """`kind` at layers n-1, 2n-1, ...; `other` elsewhere (Gemma 3: every 6th full; Llama 4
    and Qwen3-Next: every 4th full)."""
    return tuple(kind if (i + 1) % n == 0 else other for i in range(num_layers))
