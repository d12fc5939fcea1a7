"""A model's KV-cache groups on one GPU of a deployment, and what they hold per request.

`layout(cost, hybrid)` turns the model's layers (`ModelSpec.layer_kinds`) into the specs of
`kvpager.core.groups` that `CacheConfig.groups` takes, with each group's bytes from the cost
model's one per-layer figure (`kvpager.sim.cost_model.layers.layer_kv_bytes`):

- hybrid (default): one kind per group, and kinds split into groups of equal layer counts
  (vLLM's hybrid allocator pads groups to the same layer count, vllm-project/vllm#29303;
  the size rule here is our reading of it: the smallest kind's layer count, or the largest
  when all counts are within 25%), because the manager's one pool pages every group with
  the largest group's block: unequal groups would pad the small groups' pages;
- `hybrid=False`: every attention layer as full attention in one group (what a manager
  without groups allocates); linear-attention layers still keep a state per sequence.

State groups (linear attention) follow the paged ones; the manager gives each sequence whole
pages of the same pool for its state (`kvpager.core.memory.state_pages`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvpager.core.groups import (
    ChunkedLocalSpec,
    FullAttentionSpec,
    MLASpec,
    PagedSpec,
    SlidingWindowSpec,
    StateSpec,
    page_bytes,
    state_pages,
)
from kvpager.sim.config import SimConfig
from kvpager.sim.cost_model import CostModel
from kvpager.sim.cost_model.layers import layer_state_bytes
from kvpager.sim.presets import ModelSpec, get_model


@dataclass(frozen=True)
class KVLayout:
    """The paged groups (one shared pool of `page_bytes` pages per `block_size` tokens) and
    the state groups of a model on one GPU."""

    paged: tuple[PagedSpec, ...]
    states: tuple[StateSpec, ...]
    block_size: int
    hybrid: bool

    @property
    def page_bytes(self) -> int:
        return page_bytes(self.paged, self.block_size)

    @property
    def state_bytes_per_seq(self) -> int:
        return sum(s.bytes_per_seq for s in self.states)

    @property
    def single_full(self) -> bool:
        """One full-attention (or MLA) group and no state: the plain manager's case."""
        return len(self.paged) == 1 and not self.states and not self.paged[0].releases

    def tokens_held(self, spec: PagedSpec, num_tokens: int, step_tokens: int) -> int:
        """Most tokens `spec`'s group holds for a request of `num_tokens` whose steps add up
        to `step_tokens` (a window keeps W - 1 earlier keys plus the step's; a chunk its
        chunk plus the step's)."""
        if isinstance(spec, SlidingWindowSpec):
            return min(num_tokens, spec.window - 1 + step_tokens)
        if isinstance(spec, ChunkedLocalSpec):
            return min(num_tokens, spec.chunk + step_tokens)
        return num_tokens

    def pages_per_request(self, num_tokens: int, step_tokens: int) -> int:
        """Pages a request of `num_tokens` holds at most, every group together (a window's
        held tokens may straddle one more block)."""
        bs = self.block_size
        total = 0
        for spec in self.paged:
            held = self.tokens_held(spec, num_tokens, step_tokens)
            total += min(math.ceil(num_tokens / bs), math.ceil(held / bs) + spec.releases)
        return total

    def bytes_per_request(self, num_tokens: int, step_tokens: int) -> int:
        """Bytes of the pages a request holds at most, its state pages included (whole
        pages, as the manager gives them)."""
        states = sum(state_pages(s, self.page_bytes) for s in self.states)
        return (self.pages_per_request(num_tokens, step_tokens) + states) * self.page_bytes

    def describe(self) -> list[dict]:
        """Per group: type, layers, bytes per token (paged) or per sequence (state)."""
        out: list[dict] = []
        for spec in self.paged:
            row: dict = {"type": spec.kind, "layers": spec.num_layers,
                         "bytes_per_token": spec.bytes_per_token,
                         "page_bytes_per_token": self.page_bytes // self.block_size}
            if isinstance(spec, SlidingWindowSpec):
                row["window"] = spec.window
            if isinstance(spec, ChunkedLocalSpec):
                row["chunk"] = spec.chunk
            out.append(row)
        for state in self.states:
            out.append({"type": "state", "layers": state.num_layers,
                        "bytes_per_seq": state.bytes_per_seq})
        return out


def _split(count: int, size: int) -> list[int]:
    return [min(size, count - i) for i in range(0, count, size)]


def layout(cost: CostModel, block_size: int, hybrid: bool = True) -> KVLayout:
    """The groups of `cost.model` on one of `cost.tp` GPUs (module docstring)."""
    m, tp = get_model(cost.model), cost.tp  # the spec itself (the field is typed as given)
    kvb = cost.kv_element_bytes
    kinds = m.layer_kinds()
    counts: dict[str, int] = {}
    for kind in kinds:
        if kind != "linear":
            key = kind if hybrid or kind == "mla" else "full"
            counts[key] = counts.get(key, 0) + 1
    size = min(counts.values())
    if max(counts.values()) < 1.25 * size:
        size = max(counts.values())
    shape = {"num_kv_heads": max(1, m.num_kv_heads // tp), "head_size": m.head_size,
             "dtype_bytes": kvb}
    paged: list[PagedSpec] = []
    for kind, count in counts.items():
        for n in _split(count, size if hybrid else count):
            if kind == "mla":
                assert m.mla is not None
                paged.append(MLASpec(num_layers=n, latent_dim=m.mla.latent_dim, dtype_bytes=kvb))
            elif kind == "sliding":
                assert m.sliding_window is not None
                paged.append(SlidingWindowSpec(num_layers=n, window=m.sliding_window, **shape))
            elif kind == "chunked":
                assert m.attention_chunk_size is not None
                paged.append(ChunkedLocalSpec(num_layers=n, chunk=m.attention_chunk_size,
                                              **shape))
            else:
                paged.append(FullAttentionSpec(num_layers=n, **shape))
    paged.sort(key=lambda g: g.releases)  # a full group first: group 0 holds every token
    linear = kinds.count("linear")
    states = (StateSpec(state_bytes=layer_state_bytes(m, tp, cost.weight_element_bytes),
                        num_layers=linear),) if linear else ()
    return KVLayout(tuple(paged), states, block_size, hybrid)


def num_pages(cost: CostModel, kv: KVLayout) -> int:
    """Pages of the shared pool: the KV memory in pages of `kv.page_bytes`."""
    return max(0, int(cost.kv_capacity_bytes // kv.page_bytes))


def has_groups_to_merge(model: str | ModelSpec) -> bool:
    """Whether --no-hybrid changes anything: some layer has a window or a chunk."""
    return any(k in ("sliding", "chunked") for k in get_model(model).layer_kinds())


def capacity_fields(cost: CostModel, config: SimConfig) -> dict:
    """metrics.json "capacity" additions: hybrid on or off, the groups, and for a
    multi-group layout the pool's pages (`gpu_blocks`) and the bytes of one."""
    kv = layout(cost, config.block_size, config.hybrid)
    out: dict = {"hybrid": config.hybrid, "kv_groups": kv.describe()}
    if not kv.single_full:
        out["gpu_blocks"] = (config.num_gpu_blocks if config.num_gpu_blocks is not None
                             else num_pages(cost, kv))
        out["page_bytes"] = kv.page_bytes
    return out


__all__ = ["KVLayout", "capacity_fields", "has_groups_to_merge", "layout", "num_pages"]
