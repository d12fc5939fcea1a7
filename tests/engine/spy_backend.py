"""A kernel backend for tests: counts the calls it gets and computes them with the
reference backend, so a test can see which ops an engine sends to the backend it chose."""

from __future__ import annotations

from collections import Counter

from kvpager.backends.base import Backend
from kvpager.backends.reference import BACKEND as REFERENCE

OPS = ("paged_attention_v1", "paged_attention_v2", "reshape_and_cache", "copy_blocks",
       "swap_blocks", "merge_attn_states")


class SpyBackend(Backend):
    """Every op: count it, then run the reference implementation."""

    name = "spy"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def device_reason(self, device):
        return REFERENCE.device_reason(device)

    def capability_reason(self, **config):
        return REFERENCE.capability_reason(**config)


def _forward(op: str):
    def call(self, *args, **kwargs):
        self.calls[op] += 1
        return getattr(REFERENCE, op)(*args, **kwargs)

    call.__name__ = op
    return call


for _op in OPS:
    setattr(SpyBackend, _op, _forward(_op))
SpyBackend.__abstractmethods__ = frozenset()

BACKEND = SpyBackend()
