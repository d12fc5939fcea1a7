"""The simulator replays a token-id trace's output ids, so a later turn that repeats an
earlier answer hits the blocks that answer filled during decode."""

from __future__ import annotations

import json

import numpy as np
from test_engine import ConstantCost

from kvpager.sim import SimConfig
from kvpager.sim.engine import Simulation
from kvpager.sim.run import resolve
from kvpager.sim.traces import load_trace


def write_conversation(path, with_outputs: bool) -> None:
    rng = np.random.default_rng(5)
    first, answer, more = (rng.integers(0, 30000, n).tolist() for n in (20, 24, 6))
    turns = [(first, answer, 0), (first + answer + more, [9] * 4, 100 * 10**9)]  # after turn 1
    with path.open("w") as f:
        for prompt, output, t_ns in turns:
            rec = {"input_toks": len(prompt), "output_toks": len(output),
                   "arrival_time_ns": t_ns, "input_tok_ids": prompt}
            if with_outputs:
                rec["output_tok_ids"] = output
            f.write(json.dumps(rec) + "\n")


def hit_blocks(path) -> int:
    trace = load_trace(path)
    config = resolve(SimConfig(block_size=4, prefix_caching=True, max_window_steps=8))
    sim = Simulation(trace, config, "paged", ConstantCost(200))
    sim.run()
    return sim.manager.prefix_cache.hit_blocks


def test_a_later_turn_hits_the_blocks_an_answer_filled(tmp_path):
    with_out, without = tmp_path / "with.jsonl", tmp_path / "without.jsonl"
    write_conversation(with_out, True)
    write_conversation(without, False)
    assert load_trace(with_out).output_token_ids(0).tolist()[:3] == json.loads(
        with_out.read_text().splitlines()[0])["output_tok_ids"][:3]
    # turn 1 holds KV for 20 + 23 tokens: 10 full blocks; prompt-only caching shares 5
    assert hit_blocks(without) == 5
    assert hit_blocks(with_out) == 10


def test_output_ids_of_the_wrong_length_name_the_record(tmp_path):
    import pytest

    from kvpager.sim.traces import TraceError

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"input_toks": 2, "output_toks": 3, "arrival_time_ns": 0,
                                "input_tok_ids": [1, 2], "output_tok_ids": [1]}) + "\n")
    with pytest.raises(TraceError, match=r"output_tok_ids.*1 token ids, but output_toks = 3"):
        load_trace(path)
