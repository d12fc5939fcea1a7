"""Prefill / decode disaggregation settings, checked once: a bad value raises ValueError
naming its command-line option (`kvpager simulate --prefill-replicas P --decode-replicas D`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Decider kinds: `always`, `threshold:N` (more than N uncached prompt tokens), `cost`.
DECIDERS = ("always", "threshold", "cost")
_THRESHOLD = re.compile(r"threshold:(\d+)")


@dataclass(frozen=True)
class DisaggConfig:
    """Args:
        prefill_replicas, decode_replicas: the two pools (each >= 1).
        decider: "always", "threshold" or "cost" (`parse_decider` reads the option).
        threshold_tokens: for "threshold": disaggregate above this many uncached tokens.
        link_gbps: a network link across nodes, Gbit/s per GPU (None: NVLink within one
            node, the GPU preset's interconnect bandwidth).
        link_latency_s: fixed time per transfer (connection setup, first byte).
        layerwise: overlap the transfer with the prefill, layer by layer.
        keep_prefill_cache: the prefill replicas keep computed prompts as prefix cache
            (False: they run without prefix caching and free the blocks once sent).
    """

    prefill_replicas: int
    decode_replicas: int
    decider: str = "always"
    threshold_tokens: int = 0
    link_gbps: float | None = None
    link_latency_s: float = 0.0
    layerwise: bool = False
    keep_prefill_cache: bool = True

    def __post_init__(self) -> None:
        for option, value in (("--prefill-replicas", self.prefill_replicas),
                              ("--decode-replicas", self.decode_replicas)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} {value!r}: needs at least 1 replica")
        if self.decider not in DECIDERS:
            raise ValueError(f"--pd-decider {self.decider!r}: unknown decider; choose "
                             "always, threshold:N or cost")
        if self.threshold_tokens < 0:
            raise ValueError(f"--pd-decider threshold:{self.threshold_tokens}: N must be an "
                             "integer >= 0")
        if self.link_gbps is not None and not (math.isfinite(self.link_gbps)
                                               and self.link_gbps > 0):
            raise ValueError(f"--kv-link-gbps {self.link_gbps!r}: must be a finite number "
                             "> 0 (Gbit/s)")
        if not (math.isfinite(self.link_latency_s) and self.link_latency_s >= 0):
            raise ValueError(f"--kv-link-latency-ms {self.link_latency_s * 1e3!r}: must be "
                             "a finite number >= 0 (milliseconds)")

    @property
    def replicas(self) -> int:
        return self.prefill_replicas + self.decode_replicas

    @property
    def decider_name(self) -> str:
        return (f"threshold:{self.threshold_tokens}" if self.decider == "threshold"
                else self.decider)

    def to_dict(self) -> dict:
        return {"prefill_replicas": self.prefill_replicas,
                "decode_replicas": self.decode_replicas, "decider": self.decider_name,
                "link": "network" if self.link_gbps is not None else "nvlink",
                "link_gbps": self.link_gbps, "link_latency_s": self.link_latency_s,
                "layerwise": self.layerwise, "keep_prefill_cache": self.keep_prefill_cache}


def parse_decider(text: str) -> tuple[str, int]:
    """`--pd-decider always|threshold:N|cost` as (kind, N); ValueError naming the option."""
    text = text.strip()
    if text in ("always", "cost"):
        return text, 0
    if text.startswith("threshold"):
        match = _THRESHOLD.fullmatch(text)
        if match is None:
            raise ValueError(f"--pd-decider {text!r}: the threshold must be threshold:N "
                             "with N an integer >= 0 (uncached prompt tokens)")
        return "threshold", int(match.group(1))
    raise ValueError(f"--pd-decider {text!r}: unknown decider; choose always, threshold:N "
                     "or cost")


def check_disagg(config, strategies: tuple[str, ...]) -> None:
    """What a disaggregated run cannot combine with (ValueError naming the option)."""
    others = [s for s in strategies if s != "paged"]
    if others:
        raise ValueError(f"--cache {others[0]}: prefill/decode disaggregation runs the paged "
                         "strategy only (it moves KV blocks); use --cache paged")
    if config.has_prefix_tier:
        raise ValueError("--cpu-prefix-cache: the CPU prefix tier is not supported with "
                         "--prefill-replicas / --decode-replicas yet")
