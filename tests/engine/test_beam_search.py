"""Beam search through the paged cache: transformers' results, with forks that share blocks
and copy only the partial block a beam writes into."""

from __future__ import annotations

import pytest
from engine_helpers import BLOCK_SIZE, make_engine
from hf_reference import hf_beams, make_prompts

from kvpager.core.memory.block_table import num_blocks_for
from kvpager.engine import SamplingParams

MAX_NEW = 12
WIDTH = 4


def assert_same_beams(got, want) -> None:
    assert [list(c.token_ids) for c in got.outputs] == [tokens for tokens, _ in want]
    for completion, (_, score) in zip(got.outputs, want, strict=True):
        assert completion.score == pytest.approx(score, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("length", [13, 20, 6])
def test_width_4_returns_transformers_beams(hf_model, length):
    prompt = make_prompts((length,), seed=3)[0]
    (best,) = hf_beams(hf_model, prompt, MAX_NEW, WIDTH, num_return=1)
    engine = make_engine(hf_model)
    got = engine.generate([prompt], SamplingParams(max_tokens=MAX_NEW, beam_width=WIDTH))[0]
    assert list(got.outputs[0].token_ids) == best[0]  # the best sequence
    assert got.outputs[0].score == pytest.approx(best[1], rel=1e-5, abs=1e-5)
    # ... and every other finished beam, in order (num_return_sequences=4).
    assert_same_beams(got, hf_beams(hf_model, prompt, MAX_NEW, WIDTH, num_return=WIDTH))
    assert engine.manager.num_used_blocks() == 0


# (prompt, eos id, length_penalty, early_stopping): eos ids that the beams actually produce,
# so hypotheses finish early and the stopping rules decide; the first case stops before
# max_tokens (asserted below), the second scores short hypotheses up with a negative penalty.
SETTINGS = [
    (2, 11, 1.0, True),
    (1, 116, -1.0, False),
    (0, 11, 0.0, True),
    (2, 88, 2.0, "never"),
    (1, 88, 0.5, False),
]


@pytest.mark.parametrize("prompt_index, eos, length_penalty, early_stopping", SETTINGS)
def test_stopping_rules_and_length_penalty_match_transformers(
        hf_model, prompt_index, eos, length_penalty, early_stopping):
    prompt = make_prompts((13, 20, 6), seed=3)[prompt_index]
    want = hf_beams(hf_model, prompt, MAX_NEW, WIDTH, WIDTH, length_penalty, early_stopping,
                    eos=(eos,))
    params = SamplingParams(max_tokens=MAX_NEW, beam_width=WIDTH, eos_token_id=eos,
                            length_penalty=length_penalty, early_stopping=early_stopping)
    engine = make_engine(hf_model)
    got = engine.generate([prompt], params)[0]
    assert_same_beams(got, want)
    stopped = [c for c in got.outputs if c.finish_reason == "stop"]
    assert all(c.token_ids[-1] == eos for c in stopped)
    if (prompt_index, eos) == (2, 11):  # every beam finished: the search ended early
        assert len(stopped) == WIDTH and engine.stats.steps < MAX_NEW


def expected_copies(engine) -> int:
    """Copy-on-write copies the next decode step must make, derived from the block tables:
    a sequence writes its next token into its last block when that block is partly full;
    if c decoding sequences write into the same block and nobody else holds it, the first
    c - 1 copy it and the last writes in place; if someone else holds it, all c copy."""
    m = engine.manager
    writers: dict[int, int] = {}
    for group in engine.scheduler.running:
        for seq in group.seqs:
            n = m.num_tokens(seq.seq_id)
            if seq.decoding and n % BLOCK_SIZE:
                block = m.block_table(seq.seq_id)[n // BLOCK_SIZE]
                writers[block] = writers.get(block, 0) + 1
    return sum(c if m.gpu.ref_count(b) > c else c - 1 for b, c in writers.items())


def test_beams_fork_by_reference_and_copy_only_on_write(hf_model):
    prompt = make_prompts((13, 20), seed=3)[1]
    engine = make_engine(hf_model)
    engine.add_request("beam", prompt, SamplingParams(max_tokens=MAX_NEW, beam_width=WIDTH))
    per_step = []
    while engine.has_unfinished():
        want = expected_copies(engine)
        before = engine.stats.cow_copies
        engine.step()
        per_step.append((engine.stats.cow_copies - before, want))
    assert [got for got, _ in per_step] == [want for _, want in per_step]
    stats = engine.stats
    assert stats.cow_copies > 0
    # A fork shares all the parent's blocks; afterwards at most its partial last block is
    # copied, so copies never exceed forks, and everything else shared is memory saved.
    assert stats.cow_copies <= stats.forks
    assert stats.blocks_saved_by_sharing == stats.fork_shared_blocks - stats.cow_copies > 0
    # Copying whole sequences would hold WIDTH private copies of the longest sequence.
    whole_copies = WIDTH * num_blocks_for(len(prompt) + MAX_NEW - 1, BLOCK_SIZE)
    assert stats.peak_blocks_used < whole_copies
    assert engine.manager.num_used_blocks() == 0
