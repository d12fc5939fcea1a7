"""Which KV-cache group and which cache tensors each layer of a model uses.

A model whose layers all attend fully has one group and the plain `KVCacheManager`. A hybrid
model (gpt-oss: sliding window and full layers alternating; Gemma 3: five local to one
global) has one group per attention kind (`kvpager.core.groups.groups_from_layers`, in order
of first appearance) and a `HybridKVCacheManager`, so that window layers release the blocks
before their window.

The cache follows the manager's page design (docs/architecture.md): one pool of pages, a
physical block id names one page whichever group holds it, and a page of group g holds the
K/V of all of g's layers for `block_size` tokens. The `KVCache` therefore has one pair of
K/V tensors per *slot*, as many slots as the largest group has layers, and the j-th layer of
every group uses slot j: layers of different groups share tensors but never a block, since a
block belongs to one group at a time. Copy, swap and release of a page then move or free
exactly that page in every slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvpager.core.groups import (
    FullAttentionSpec,
    PagedSpec,
    SlidingWindowSpec,
    StateSpec,
    groups_from_layers,
)

#: transformers' `layer_types` names the engine serves, and the group spec kind of each.
SERVED_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding_window"}


class UnsupportedModelError(ValueError):
    """A model the engine cannot serve: the message names the architecture, the config
    field or layer, and why. Raised before anything is built."""


@dataclass(frozen=True)
class KVLayout:
    """Per layer: its KV-cache group, its cache slot, and its sliding window (None: full).

    groups: the group specs (the manager's `CacheConfig.groups` when `hybrid`).
    num_slots: K/V tensor pairs the cache needs (layers of the largest group).
    """

    groups: tuple[PagedSpec, ...]
    layer_group: tuple[int, ...]
    layer_slot: tuple[int, ...]
    layer_window: tuple[int | None, ...]

    @classmethod
    def build(cls, layer_types: Sequence[str], sliding_window: int | None, *,
              num_kv_heads: int, head_size: int, dtype_bytes: int,
              architecture: str) -> KVLayout:
        """From a config's `layer_types`. Raises UnsupportedModelError for an attention type
        the engine has no kernel path for, or a window that is not a positive int."""
        for i, kind in enumerate(layer_types):
            if kind not in SERVED_LAYER_TYPES:
                raise UnsupportedModelError(
                    f"{architecture}: layer_types[{i}] = {kind!r} is not served by the engine "
                    f"(its models read the paged cache with full or sliding-window attention "
                    f"only: {sorted(SERVED_LAYER_TYPES)})")
        if "sliding_attention" in layer_types and (
                isinstance(sliding_window, bool) or not isinstance(sliding_window, int)
                or sliding_window < 1):
            raise UnsupportedModelError(f"{architecture}: config.sliding_window must be a "
                                        f"positive int for sliding_attention layers, got "
                                        f"{sliding_window!r}")
        groups = tuple(g for g in groups_from_layers(
            layer_types, len(layer_types), window=sliding_window, num_kv_heads=num_kv_heads,
            head_size=head_size, dtype_bytes=dtype_bytes) if not isinstance(g, StateSpec))
        kinds = [g.kind for g in groups]
        layer_group, layer_slot, counts = [], [], [0] * len(groups)
        for kind in layer_types:
            g = kinds.index(SERVED_LAYER_TYPES[kind])
            layer_group.append(g)
            layer_slot.append(counts[g])
            counts[g] += 1
        window = tuple(sliding_window if kind == "sliding_attention" else None
                       for kind in layer_types)
        return cls(groups, tuple(layer_group), tuple(layer_slot), window)

    @classmethod
    def full(cls, num_layers: int, *, num_kv_heads: int, head_size: int,
             dtype_bytes: int) -> KVLayout:
        """Every layer full attention: one group, slot = layer."""
        spec = FullAttentionSpec(num_layers=num_layers, num_kv_heads=num_kv_heads,
                                 head_size=head_size, dtype_bytes=dtype_bytes)
        return cls((spec,), (0,) * num_layers, tuple(range(num_layers)), (None,) * num_layers)

    @property
    def hybrid(self) -> bool:
        """Whether the model needs a `HybridKVCacheManager`: several groups, or a window."""
        return len(self.groups) > 1 or any(isinstance(g, SlidingWindowSpec)
                                           for g in self.groups)

    @property
    def num_slots(self) -> int:
        return max(self.layer_slot) + 1


__all__ = ["SERVED_LAYER_TYPES", "KVLayout", "UnsupportedModelError"]
