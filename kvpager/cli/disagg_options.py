"""The options of prefill / decode disaggregation (`kvpager simulate --prefill-replicas P
--decode-replicas D`), the `DisaggConfig` they describe, and the lines the table prints."""

from __future__ import annotations

from typing import Annotated

import typer

from kvpager.sim.cluster.disagg_config import DisaggConfig, parse_decider

PrefillReplicas = Annotated[int | None, typer.Option(
    help="Prefill replicas of a disaggregated cluster (with --decode-replicas; the router "
         "chooses within each pool).")]
DecodeReplicas = Annotated[int | None, typer.Option(
    help="Decode replicas of a disaggregated cluster (with --prefill-replicas).")]
PdDecider = Annotated[str, typer.Option(
    "--pd-decider", metavar="always|threshold:N|cost",
    help="Which requests prefill on the prefill pool: all, those with more than N prompt "
         "tokens the decode replica does not hold, or where the cost model says the decode "
         "replica's saved prefill outweighs the transfer and queueing.")]
KvLinkGbps = Annotated[float | None, typer.Option(
    help="KV transfers over a network across nodes at this rate, Gbit/s per GPU (default: "
         "NVLink within a node, from the GPU preset).")]
KvLinkLatencyMs = Annotated[float, typer.Option(
    help="Fixed latency of each KV transfer, milliseconds.")]
KvLayerwise = Annotated[bool, typer.Option(
    help="Overlap the KV transfer with the prefill, layer by layer.")]
PrefillKeepCache = Annotated[bool, typer.Option(
    help="Prefill replicas keep computed prompts as prefix cache (--no-prefill-keep-cache: "
         "they free the blocks once sent).")]


def disagg_config(*, prefill_replicas: int | None, decode_replicas: int | None,
                  replicas: int, decider: str, link_gbps: float | None, latency_ms: float,
                  layerwise: bool, keep_cache: bool) -> DisaggConfig | None:
    """The `DisaggConfig` the options describe, None when neither pool is given (ValueError
    naming the option for a bad or missing value)."""
    if prefill_replicas is None and decode_replicas is None:
        return None
    if prefill_replicas is None:
        raise ValueError("--decode-replicas: give --prefill-replicas too")
    if decode_replicas is None:
        raise ValueError("--prefill-replicas: give --decode-replicas too")
    if replicas != 1:
        raise ValueError("--replicas: give either --replicas or --prefill-replicas and "
                         "--decode-replicas, not both")
    kind, threshold = parse_decider(decider)
    return DisaggConfig(prefill_replicas, decode_replicas, kind, threshold, link_gbps,
                        latency_ms / 1e3, layerwise, keep_cache)


def disagg_lines(metrics: dict) -> list[str]:
    """What the transfers cost, per strategy (none without disaggregation)."""
    lines = []
    for name, m in metrics["strategies"].items():
        d = m.get("disaggregation")
        if not d:
            continue
        req, tr, waits = d["requests"], d["transfer"], d["decode_waits"]
        sec = tr["seconds"]
        mean = "-" if sec["mean"] is None else f"{sec['mean'] * 1e3:.2f} ms"
        p99 = "-" if sec["p99"] is None else f"{sec['p99'] * 1e3:.2f} ms"
        lines.append(
            f"{name}: {d['prefill_replicas']} prefill + {d['decode_replicas']} decode "
            f"replicas, decider {d['decider']}: {req['disaggregated']:,} requests "
            f"disaggregated, {req['local']:,} prefilled where they decode; KV moved "
            f"{tr['bytes'] / (1 << 30):,.1f} GiB over {d['link']['kind']} "
            f"({d['link']['bytes_per_s'] / 1e9:,.1f} GB/s), prompt-ready to KV-arrived mean "
            f"{mean}, p99 {p99}; {waits['requests']:,} requests waited for room on a decode "
            "replica")
    return lines
