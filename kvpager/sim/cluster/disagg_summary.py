"""The `disaggregation` section of a disaggregated run's metrics: how many requests went
through the prefill pool, the KV moved, transfer and wait times, and the links' load."""

from __future__ import annotations

import numpy as np

from kvpager.sim.cluster.disagg_config import DisaggConfig
from kvpager.sim.cluster.transfer import KVLink


def transfer_summary(disagg: DisaggConfig, link: KVLink, tp: int, disaggregated: np.ndarray,
                     moved_tokens: np.ndarray, transfer_s: np.ndarray, wait_s: np.ndarray,
                     decode_waits: int, link_busy_s: float, makespan: float) -> dict:
    """Per-request arrays indexed like the trace: `disaggregated` bool, `moved_tokens`
    int64 (tokens sent), `transfer_s` / `wait_s` float64 (prompt computed -> KV arrived /
    -> decode room reserved; NaN where none). Bytes count every GPU of a tp group."""
    moved = disaggregated & np.isfinite(transfer_s)
    tokens = moved_tokens[moved]
    busy = makespan * disagg.prefill_replicas
    return disagg.to_dict() | {
        "link": link.settings(),
        "requests": {"disaggregated": int(disaggregated.sum()),
                     "local": int((~disaggregated).sum()), "transferred": int(moved.sum())},
        "transfer": {
            "tokens": int(tokens.sum()),
            "bytes": float(tokens.sum() * link.bytes_per_token * tp),
            "link_busy_s": link_busy_s,
            "link_utilization": link_busy_s / busy if busy > 0 else 0.0,
            "seconds": _stats(transfer_s[moved])},
        "decode_waits": {"requests": decode_waits, "seconds": _stats(wait_s[moved])},
    }


def _stats(x: np.ndarray) -> dict:
    if not x.size:
        return {"mean": None, "p50": None, "p99": None, "max": None}
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max())}
