"""The beam-search state machine on hand-made log-probabilities, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kvpager.engine import BeamSearch, SamplingParams

EOS = 3


def logits(*rows: list[float]) -> torch.Tensor:
    """Logits whose log_softmax is log(p) for each row of probabilities p."""
    return torch.tensor([[math.log(p) for p in row] for row in rows])


def search(width=2, max_new=3, length_penalty=1.0, early_stopping=False) -> BeamSearch:
    params = SamplingParams(beam_width=width, length_penalty=length_penalty,
                            early_stopping=early_stopping)
    return BeamSearch(params, (EOS,), max_new)


def test_first_step_takes_the_best_tokens_of_the_prompt():
    s = search()
    step = s.step(logits([0.5, 0.3, 0.15, 0.05]))
    assert (step.parents, step.tokens, step.done) == ([0, 0], [0, 1], False)
    assert s.beams == [(0,), (1,)]
    assert s.scores.tolist() == pytest.approx([math.log(0.5), math.log(0.3)])


def test_an_eos_in_the_top_width_finishes_and_running_beams_refill_from_the_rest():
    s = search()
    s.step(logits([0.5, 0.3, 0.15, 0.05]))
    # beam (0,): eos at 0.35 total, (0,1) 0.06; beam (1,): (1,0) 0.18, (1,1) 0.075.
    step = s.step(logits([0.1, 0.12, 0.08, 0.7], [0.6, 0.25, 0.1, 0.05]))
    assert (step.parents, step.tokens) == ([1, 1], [0, 1])  # beam 0 is dropped, 1 forked
    assert s.beams == [(1, 0), (1, 1)]
    (hyp,) = s.results()
    assert hyp.tokens == (0, EOS)
    assert hyp.logprob == pytest.approx(math.log(0.35))
    assert hyp.score == pytest.approx(math.log(0.35) / 2)  # length 2 counts the eos


def test_an_eos_ranked_below_width_is_neither_a_hypothesis_nor_a_beam():
    s = search()
    s.step(logits([0.5, 0.3, 0.15, 0.05]))
    # totals (0,0) .25 (0,1) .15 (1,0) .12 (0,eos) .09995: the eos candidate ranks fourth.
    step = s.step(logits([0.5, 0.3, 0.0001, 0.1999], [0.4, 0.3, 0.2, 0.1]))
    assert (step.parents, step.tokens, step.done) == ([0, 0], [0, 1], False)
    assert s.results() == []


def test_the_length_limit_ends_every_candidate_and_keeps_the_best_width():
    s = search(max_new=2, length_penalty=0.0)
    s.step(logits([0.5, 0.3, 0.15, 0.05]))
    step = s.step(logits([0.4, 0.3, 0.2, 0.1], [0.9, 0.05, 0.03, 0.02]))
    assert step.done
    # totals .2 .15 .1 .05 from beam 0, .27 .015 from beam 1: the top two are (1,0), (0,0);
    # with penalty 0 a hypothesis scores its plain sum of log-probabilities.
    got = [(h.tokens, h.score) for h in s.results()]
    assert got == [((1, 0), pytest.approx(math.log(0.27))),
                   ((0, 0), pytest.approx(math.log(0.2)))]


def _two_hypotheses_at_different_lengths(early_stopping):
    """Step 2 finishes (1,eos) = .4365, score log(.4365)/2 = -0.414; step 3 finishes
    (0,0,eos) = .192, score log(.192)/3 = -0.550, while (0,0,0) = .24 keeps running with
    log(.24)/3 = -0.476: better than the worst hypothesis."""
    s = search(width=2, max_new=10, early_stopping=early_stopping)
    s.step(logits([0.5, 0.45, 0.04, 0.01]))
    assert not s.step(logits([0.96, 0.02, 0.012, 0.008], [0.01, 0.01, 0.01, 0.97])).done
    assert s.beams == [(0, 0), (0, 1)]
    step = s.step(logits([0.5, 0.06, 0.04, 0.4], [0.25, 0.25, 0.25, 0.25]))
    assert [(h.tokens, round(h.score, 3)) for h in s.results()] == [
        ((1, EOS), round(math.log(0.4365) / 2, 3)), ((0, 0, EOS), round(math.log(0.192) / 3, 3))]
    assert s.scores[0].item() == pytest.approx(math.log(0.24))
    return step


def test_early_stopping_true_stops_as_soon_as_width_hypotheses_finished():
    assert _two_hypotheses_at_different_lengths(True).done


def test_early_stopping_false_continues_while_the_best_beam_can_still_win():
    assert not _two_hypotheses_at_different_lengths(False).done


def test_heuristic_stops_when_the_best_running_beam_cannot_win():
    def run(early_stopping):
        s = search(width=2, max_new=10, early_stopping=early_stopping)
        s.step(logits([0.4, 0.35, 0.15, 0.1]))
        # (0,eos) .32 finishes: log(.32)/2 = -0.570; (1,1) .315 and (0,2) .04 run on.
        assert not s.step(logits([0.05, 0.05, 0.1, 0.8], [0.02, 0.9, 0.03, 0.05])).done
        # (1,1,eos) .29925 finishes: log(.29925)/3 = -0.402; best running (0,2,0) = .028.
        step = s.step(logits([0.01, 0.01, 0.03, 0.95], [0.7, 0.1, 0.1, 0.1]))
        assert [h.tokens for h in s.results()] == [(1, 1, EOS), (0, EOS)]
        assert s.scores[0].item() == pytest.approx(math.log(0.028))
        return step.done

    # At its current length 3: log(.028)/3 = -1.19 < -0.570, no improvement is possible.
    assert run(False)
    # "never" judges it at the longest length instead: log(.028)/10 = -0.358 > -0.570.
    assert not run("never")


def test_misuse_is_refused():
    s = search(max_new=1)
    with pytest.raises(ValueError, match=r"logits must be \[1, vocab\]"):
        s.step(torch.zeros(2, 4))
    s.step(logits([0.5, 0.3, 0.15, 0.05]))
    with pytest.raises(ValueError, match="finished beam search"):
        s.step(logits([0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]))
