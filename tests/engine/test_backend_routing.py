"""The engine sends every cache and attention op to the backend it was given: decode
attention goes through `paged_attention`, writes through `reshape_and_cache`, and the
manager's plans through `copy_blocks` / `swap_blocks`, none of it silently elsewhere."""

from __future__ import annotations

import pytest
from engine_helpers import make_engine
from hf_reference import make_prompts

from kvpager import backends
from kvpager.engine import SamplingParams


@pytest.fixture
def spy(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "spy", "spy_backend")
    monkeypatch.setattr(backends, "_loaded", {})
    return backends.get("spy")


def test_every_op_goes_to_the_chosen_backend(hf_model, spy):
    prompts = make_prompts((5, 11, 17, 24, 10), seed=11)
    params = [SamplingParams(max_tokens=12)] * 4 + [SamplingParams(max_tokens=12,
                                                                   beam_width=3)]
    want = make_engine(hf_model).generate(prompts, params)
    engine = make_engine(hf_model, backend="spy", num_gpu_blocks=10, num_cpu_blocks=32,
                         preemption="swap")
    assert engine.backend == "spy"
    forwards = []
    forward = engine.model.forward
    engine.model.forward = lambda *a, **k: forwards.append(1) or forward(*a, **k)
    got = engine.generate(prompts, params)
    def tokens(outputs):
        return [[c.token_ids for c in o.outputs] for o in outputs]

    assert tokens(got) == tokens(want)
    layers = 2
    # One write per layer per forward pass (a step may only move blocks and run none).
    assert spy.calls["reshape_and_cache"] == layers * len(forwards) > 0
    assert spy.calls["paged_attention_v1"] + spy.calls["paged_attention_v2"] > 0
    assert spy.calls["copy_blocks"] > 0 and engine.stats.cow_copies > 0
    # Each swap moves K and V of every layer: 2 calls per layer per swap direction used.
    assert spy.calls["swap_blocks"] > 0 and engine.stats.swapped_out > 0
    assert spy.calls["swap_blocks"] % (2 * layers) == 0
