"""What the engine asks of a model: `PagedModel`, the base of PagedLlama, PagedGptOss and
PagedGemma3.

A paged model holds plain weight tensors copied from a `transformers` model object, a
`ModelShape` (the cache geometry) and a `KVLayout` (each layer's KV-cache group, cache slot
and window), and runs one step's `StepInputs` against a `KVCache`, returning float32 logits.
"""

from __future__ import annotations

import torch

from kvpager.cache import KVCache
from kvpager.engine.attention import StepInputs, paged_self_attention
from kvpager.engine.kv_layout import KVLayout
from kvpager.engine.layers import AttentionWeights, ModelShape, Rotary, convert


class PagedModel:
    """Base of the engine's models. Subclasses set `shape`, `layout`, `embed` (the input
    embedding, whose dtype and device are the model's) and `layers` (one object of weight
    tensors per layer), and implement `forward`."""

    shape: ModelShape
    layout: KVLayout
    embed: torch.Tensor
    layers: list

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def forward(self, batch: StepInputs, cache: KVCache, *, backend: str = "auto",
                check_indices: bool = True) -> torch.Tensor:
        """Run one step; returns float32 logits `[len(batch.logits_indices), vocab]`."""
        raise NotImplementedError

    def _rotaries(self) -> list[Rotary]:
        """Rotary tables to move with the model (their frequencies stay float32)."""
        return []

    def to(self, *, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> PagedModel:
        """Convert every weight in place (rotary frequencies stay float32; tensors a
        subclass keeps in float32, such as attention sinks, are named in `_float32`);
        returns self."""
        keep = self._float32()

        def convert_all(owner: object) -> None:
            for name, value in list(vars(owner).items()):
                if isinstance(value, torch.Tensor):
                    setattr(owner, name, convert(value, None if name in keep else dtype,
                                                 device))
                elif isinstance(value, AttentionWeights):
                    convert_all(value)

        for owner in [self, *self.layers]:
            convert_all(owner)
        for rotary in self._rotaries():
            rotary.to(device)
        return self

    def _float32(self) -> frozenset[str]:
        """Names of tensors `to` keeps in float32."""
        return frozenset()

    def regroup(self, layers_per_group: int | None) -> None:
        """Use KV-cache groups of at most `layers_per_group` layers of one kind (None: one
        group per kind), before an engine builds its cache on `layout`."""
        self.layout = self.layout.regrouped(layers_per_group)

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               cache: KVCache, batch: StepInputs, scale: float, *, backend: str,
               check_indices: bool, sinks: torch.Tensor | None = None) -> torch.Tensor:
        """Layer `index`'s paged attention through its group's tables and its cache slot."""
        layout = self.layout
        return paged_self_attention(
            q, k, v, layout.layer_slot[index], cache, batch, scale, backend=backend,
            check_indices=check_indices, group=layout.layer_group[index],
            sliding_window=layout.layer_window[index], sinks=sinks)


__all__ = ["PagedModel"]
