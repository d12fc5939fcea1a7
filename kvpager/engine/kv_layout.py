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
              num_kv_heads: int, head_size: int, dtype_bytes: int, architecture: str,
              layers_per_group: int | None = None) -> KVLayout:
        """From a config's `layer_types`: one group per kind, or groups of at most
        `layers_per_group` layers of one kind (`groups_from_layers`: equal groups shrink the
        common page when the kinds' layer counts differ, as Gemma 3's 5 : 1 do). Raises
        UnsupportedModelError for an attention type the engine has no kernel path for, or a
        window that is not a positive int; ValueError for a bad `layers_per_group`."""
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
            head_size=head_size, dtype_bytes=dtype_bytes, layers_per_group=layers_per_group)
            if not isinstance(g, StateSpec))
        # A kind's groups are consecutive, in the order of its layers; each holds `step`
        # layers (the last one the rest), so a layer's rank within its kind places it.
        layer_group, layer_slot, seen = [], [], dict.fromkeys(SERVED_LAYER_TYPES.values(), 0)
        for kind in layer_types:
            spec_kind = SERVED_LAYER_TYPES[kind]
            first = next(g for g, spec in enumerate(groups) if spec.kind == spec_kind)
            step = groups[first].num_layers
            rank = seen[spec_kind]
            seen[spec_kind] += 1
            layer_group.append(first + rank // step)
            layer_slot.append(rank % step)
        window = tuple(sliding_window if kind == "sliding_attention" else None
                       for kind in layer_types)
        return cls(groups, tuple(layer_group), tuple(layer_slot), window)

    @classmethod
    def full(cls, num_layers: int, *, num_kv_heads: int, head_size: int,
             dtype_bytes: int) -> KVLayout:
        """Every layer full attention: one group, slot = layer."""
        return cls.build(["full_attention"] * num_layers, None, num_kv_heads=num_kv_heads,
                         head_size=head_size, dtype_bytes=dtype_bytes, architecture="llama")

    def regrouped(self, layers_per_group: int | None) -> KVLayout:
        """The same layers in groups of at most `layers_per_group` layers of one kind
        (None: one group per kind)."""
        spec = self.groups[0]
        windows = {w for w in self.layer_window if w is not None}
        return KVLayout.build(
            ["full_attention" if w is None else "sliding_attention" for w in self.layer_window],
            windows.pop() if windows else None, num_kv_heads=spec.num_kv_heads,
            head_size=spec.head_size, dtype_bytes=spec.dtype_bytes, architecture="the model",
            layers_per_group=layers_per_group)

    @property
    def hybrid(self) -> bool:
        """Whether the model needs a `HybridKVCacheManager`: several groups, or a window."""
        return len(self.groups) > 1 or any(isinstance(g, SlidingWindowSpec)
                                           for g in self.groups)

    @property
    def num_slots(self) -> int:
        return max(self.layer_slot) + 1


__all__ = ["SERVED_LAYER_TYPES", "KVLayout", "UnsupportedModelError"]
