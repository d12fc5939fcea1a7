"""A sweep over CPU prefix tier sizes: the spec's checks, its values and its load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvpager.sim import SimConfig
from kvpager.sweep import SweepSpec

MOONCAKE = str(Path(__file__).resolve().parents[2] / "examples" / "mooncake_conv_sample.jsonl")
PREFIX = SimConfig(prefix_caching=True)


@pytest.mark.parametrize(("kwargs", "expect"), [
    ({"config": SimConfig(), "rate_scales": (1,)}, "needs prefix caching"),
    ({"strategies": ("paged", "orca-max"), "rate_scales": (1,)}, "paged strategy only"),
    ({"rates": (1, 2)}, "one load"),
    ({"rate_scales": (1,), "cpu_prefix_caches": (0, -1)}, "-1 must be a number"),
    ({"rate_scales": (1,), "cpu_prefix_caches": (math.nan,)}, "nan must be a number"),
    ({"rate_scales": (1,), "cpu_prefix_caches": ()}, "at least one size"),
])
def test_tier_sweep_spec_refuses(kwargs, expect):
    kw = {"config": PREFIX, "strategies": ("paged",), "cpu_prefix_caches": (0, 64)} | kwargs
    with pytest.raises(ValueError, match="cpu_prefix_caches") as err:
        SweepSpec(MOONCAKE, **kw)
    assert expect in str(err.value)


def test_tier_sweep_values_configs_and_load():
    spec = SweepSpec(MOONCAKE, PREFIX, ("paged",), rate_scales=(2,),
                     cpu_prefix_caches=(math.inf, 64, 0, 64))
    assert spec.axis == "cpu_prefix_cache"
    assert spec.values == (0.0, 64.0, math.inf)
    assert spec.config_at(64.0).cpu_prefix_cache_gib == 64.0
    assert spec.to_dict()["values"] == [0.0, 64.0, "unlimited"]
    assert spec.to_dict()["rate_scales"] == [2.0]
    native = SweepSpec(MOONCAKE, PREFIX, ("paged",), rate_scales=(1,), limit=30).load(1)
    scaled = SweepSpec(MOONCAKE, PREFIX, ("paged",), rate_scales=(2,), limit=30,
                       cpu_prefix_caches=(0, 1)).load(1.0)  # every tier: the one load
    assert scaled.arrival[-1] == pytest.approx(native.arrival[-1] / 2)
    rate = SweepSpec(MOONCAKE, PREFIX, ("paged",), rates=(1.0,))
    assert rate.axis == "rate" and rate.config_at(1.0) is PREFIX
