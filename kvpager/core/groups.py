"""KV-cache groups: which tokens each kind of attention layer must keep, per sequence.

A model's layers form *groups* of one attention kind; each group gets its own block tables
(`kvpager.core.memory.hybrid.HybridKVCacheManager`). A spec says two things the memory
layer needs and nothing about tensors:

- what a query at position `p` reads (`first_needed`): every key (full attention, MLA), the
  last `window` keys (sliding window: keys `p - W + 1 .. p`, transformers' convention), or
  the keys of its own chunk (chunked local attention, Llama 4); everything before that can
  be released, because positions only grow;
- how many bytes one token takes in one block of the group (`bytes_per_token`), so that the
  one shared pool can size its common page (`page_bytes`).

A `StateSpec` group (linear attention, Mamba) has no block table: a constant
`state_bytes` per layer per sequence, held in whole pages of the same pool.

Every spec checks its fields at construction and raises `ValueError` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The entry a block table holds for a block released out of a window (or never allocated
#: because a prefix hit made it unnecessary): never a valid block id, never read by a
#: kernel. Kernel tables (`block_tables_array`) show it as their `pad` value.
NULL_BLOCK = -1


def _check_positive_int(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class _AttentionSpec:
    """Fields every paged group has. num_layers: layers of the group (>= 1).
    num_kv_heads, head_size: K and V each hold `num_kv_heads * head_size` elements per token
    per layer. dtype_bytes: bytes per element."""

    num_layers: int = 1
    num_kv_heads: int = 1
    head_size: int = 1
    dtype_bytes: int = 2

    kind = "full"
    releases = False  # whether blocks ahead of `first_needed` are released

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("num_layers", "num_kv_heads", "head_size", "dtype_bytes"):
            _check_positive_int(owner, name, getattr(self, name))

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token takes in the whole group (K and V, every layer)."""
        return 2 * self.num_kv_heads * self.head_size * self.dtype_bytes * self.num_layers

    def first_needed(self, num_tokens: int) -> int:
        """First token position any query at position >= `num_tokens - 1` can still read."""
        return 0


@dataclass(frozen=True)
class FullAttentionSpec(_AttentionSpec):
    """Full attention: every query reads every earlier key."""


@dataclass(frozen=True)
class SlidingWindowSpec(_AttentionSpec):
    """Sliding window of `window` tokens: a query at `p` reads keys `p - window + 1 .. p`."""

    window: int = 0

    kind = "sliding_window"
    releases = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int("SlidingWindowSpec", "window", self.window)

    def first_needed(self, num_tokens: int) -> int:
        return max(0, num_tokens - self.window)


@dataclass(frozen=True)
class ChunkedLocalSpec(_AttentionSpec):
    """Chunked local attention: a query at `p` reads keys of its chunk,
    `p // chunk * chunk .. p`."""

    chunk: int = 0

    kind = "chunked_local"
    releases = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int("ChunkedLocalSpec", "chunk", self.chunk)

    def first_needed(self, num_tokens: int) -> int:
        return max(0, num_tokens - 1) // self.chunk * self.chunk


@dataclass(frozen=True)
class MLASpec(_AttentionSpec):
    """Multi-head latent attention (DeepSeek-V3): one `latent_dim`-element latent per token
    per layer, no separate K and V (so no doubling), replicated on every tensor-parallel
    rank. `num_kv_heads` / `head_size` are unused."""

    latent_dim: int = 576

    kind = "mla"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int("MLASpec", "latent_dim", self.latent_dim)

    @property
    def bytes_per_token(self) -> int:
        return self.latent_dim * self.dtype_bytes * self.num_layers


@dataclass(frozen=True)
class StateSpec:
    """A constant-size recurrent state per sequence and layer (linear attention, Mamba):
    `state_bytes` per layer, `num_layers` layers. No block table, no prefix hits (it keeps
    no checkpoints)."""

    state_bytes: int
    num_layers: int = 1

    kind = "state"
    releases = False

    def __post_init__(self) -> None:
        _check_positive_int("StateSpec", "state_bytes", self.state_bytes)
        _check_positive_int("StateSpec", "num_layers", self.num_layers)

    @property
    def bytes_per_seq(self) -> int:
        return self.state_bytes * self.num_layers


PagedSpec = FullAttentionSpec | SlidingWindowSpec | ChunkedLocalSpec | MLASpec
GroupSpec = PagedSpec | StateSpec
_PAGED = (FullAttentionSpec, SlidingWindowSpec, ChunkedLocalSpec, MLASpec)


def check_groups(groups: object) -> tuple[GroupSpec, ...]:
    """Validate a `CacheConfig.groups` value: a non-empty sequence of specs with at least
    one paged group, a state group only after it (group 0 is the one whose rows the
    scheduler sees). Returns it as a tuple."""
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups:
        raise ValueError(f"groups must be a non-empty sequence of group specs, got {groups!r}")
    out = tuple(groups)
    for i, spec in enumerate(out):
        if not isinstance(spec, (*_PAGED, StateSpec)):
            raise ValueError(f"groups[{i}] must be a group spec (FullAttentionSpec, "
                             f"SlidingWindowSpec, ChunkedLocalSpec, MLASpec, StateSpec), "
                             f"got {spec!r}")
    if isinstance(out[0], StateSpec):
        raise ValueError("groups[0] must be a paged group (attention or MLA): a state group "
                         "has no block table for the scheduler's rows")
    return out


def page_bytes(groups: Sequence[GroupSpec], block_size: int) -> int:
    """Bytes of the common page: the largest block of any paged group (every physical
    block id names one page of this size, whichever group holds it)."""
    return max(g.bytes_per_token * block_size for g in groups if isinstance(g, _PAGED))


def state_pages(spec: StateSpec, page: int) -> int:
    """Pages a state group takes per sequence."""
    return -(-spec.bytes_per_seq // page)


def groups_from_layers(layer_types: Sequence[str], num_layers: int, *,
                       window: int | None = None, chunk: int | None = None,
                       num_kv_heads: int = 1, head_size: int = 1, dtype_bytes: int = 2,
                       state_bytes: int | None = None,
                       layers_per_group: int | None = None) -> tuple[GroupSpec, ...]:
    """Group specs from a per-layer pattern as model configs spell it (`layer_types` of
    transformers: "full_attention", "sliding_attention", "chunked_attention",
    "linear_attention"), one group per kind in order of first appearance.

    `layers_per_group` splits each kind's layers into groups of at most that many (vLLM
    gives every group the same layer count): the one pool's common page is then the block
    of that many layers, not of the largest kind's, so a kind with few layers (Gemma 3's 10
    global layers beside 52 local ones) does not pay for pages sized for the other.

    Raises ValueError when the pattern's length is not `num_layers`, a kind is unknown, or
    its window / chunk / state size (or `layers_per_group`) is missing or not a positive
    int.
    """
    _check_positive_int("groups_from_layers", "num_layers", num_layers)
    if layers_per_group is not None:
        _check_positive_int("groups_from_layers", "layers_per_group", layers_per_group)
    if len(layer_types) != num_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries but num_layers is "
                         f"{num_layers}: the pattern must name every layer once")
    counts: dict[str, int] = {}
    for i, kind in enumerate(layer_types):
        if kind not in ("full_attention", "sliding_attention", "chunked_attention",
                        "linear_attention"):
            raise ValueError(f"layer_types[{i}] = {kind!r} is not a supported attention "
                             "type (full_attention, sliding_attention, chunked_attention, "
                             "linear_attention)")
        counts[kind] = counts.get(kind, 0) + 1
    shape = {"num_kv_heads": num_kv_heads, "head_size": head_size, "dtype_bytes": dtype_bytes}
    out: list[GroupSpec] = []
    split: list[tuple[str, int]] = []
    for kind, total in counts.items():
        step = total if layers_per_group is None or kind == "linear_attention" \
            else layers_per_group
        split += [(kind, min(step, total - at)) for at in range(0, total, step)]
    for kind, n in split:
        if kind == "full_attention":
            out.append(FullAttentionSpec(num_layers=n, **shape))
        elif kind == "sliding_attention":
            if window is None:
                raise ValueError("window must be given for sliding_attention layers")
            out.append(SlidingWindowSpec(num_layers=n, window=window, **shape))
        elif kind == "chunked_attention":
            if chunk is None:
                raise ValueError("chunk must be given for chunked_attention layers")
            out.append(ChunkedLocalSpec(num_layers=n, chunk=chunk, **shape))
        else:
            if state_bytes is None:
                raise ValueError("state_bytes must be given for linear_attention layers")
            out.append(StateSpec(state_bytes=state_bytes, num_layers=n))
    out.sort(key=lambda g: isinstance(g, StateSpec))  # paged groups first
    return tuple(out)
