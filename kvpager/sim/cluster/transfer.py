"""Timing a prompt's KV moving from a prefill replica to a decode replica.

The bytes: every layer's K and V of the tokens the decode replica does not hold already
(its prefix hits shorten the transfer), `CostModel.kv_bytes_per_token` per GPU. With tensor
parallelism each of the `tp` GPUs sends its own shard over its own link at the same time,
so the time is one GPU's shard over one GPU's link.

The link: NVLink between GPUs of one node (the GPU preset's `interconnect_bytes_per_s`, per
direction, times the cost model's `interconnect_efficiency`), or a network across nodes
(`--kv-link-gbps`, taken as the achieved rate per GPU), plus a fixed latency per transfer
(`--kv-link-latency-ms`). A prefill replica's link carries one transfer at a time (FIFO).

Layer-wise overlap (Mooncake, DistServe, Splitwise's layer-wise KV push): layer l's KV can
leave once layer l of the prefill is computed, so while the prefill's last step runs (s
seconds) the first (L - 1) / L of it can already be sent. `hidden_seconds` is how much of the
data time that hides: min(data * (L - 1) / L, s * (L - 1) / L); at least the last layer's
share is always exposed. Only a transfer whose destination blocks were ready when the
prefill ended can overlap; one that waited for room on the decode replica starts afterwards.
"""

from __future__ import annotations

from kvpager.sim.cluster.disagg_config import DisaggConfig
from kvpager.sim.cost_model import CostModel


class KVLink:
    """Seconds to move KV tokens between replicas over one kind of link."""

    def __init__(self, cost: CostModel, config: DisaggConfig) -> None:
        self.bytes_per_token = float(cost.kv_bytes_per_token)
        self.layers = cost.model.num_layers  # type: ignore[union-attr]
        self.latency_s = config.link_latency_s
        self.layerwise = config.layerwise
        if config.link_gbps is not None:
            self.kind = "network"
            self.bytes_per_s = config.link_gbps * 1e9 / 8
        else:
            gpu = cost.gpu
            nvlink = gpu.interconnect_bytes_per_s  # type: ignore[union-attr]
            if nvlink is None:
                raise ValueError(f"--kv-link-gbps: GPU {gpu.name} gives no NVLink "  # type: ignore[union-attr]
                                 "bandwidth; give the link's rate with --kv-link-gbps")
            self.kind = "nvlink"
            self.bytes_per_s = nvlink * cost.interconnect_efficiency

    def data_seconds(self, tokens: int) -> float:
        """Seconds the bytes of `tokens` occupy the link (no latency)."""
        return tokens * self.bytes_per_token / self.bytes_per_s

    def hidden_seconds(self, data_s: float, last_prefill_step_s: float) -> float:
        """Seconds of `data_s` that layer-wise overlap hides under the prefill's last step
        (0 without `layerwise`); see the module docstring."""
        if not self.layerwise:
            return 0.0
        share = (self.layers - 1) / self.layers
        return min(data_s, last_prefill_step_s) * share

    def settings(self) -> dict:
        return {"kind": self.kind, "bytes_per_s": self.bytes_per_s,
                "latency_s": self.latency_s, "layerwise": self.layerwise,
                "kv_bytes_per_token_per_gpu": self.bytes_per_token}
