"""FewestSearch: the smallest met count, by bisection or k-section, with its evidence."""

from __future__ import annotations

import pytest

from kvpager.plan.search import FewestSearch


def run(search: FewestSearch, threshold: int, k: int = 1) -> list[list[int]]:
    """Drive the search against `met = count >= threshold`; return the rounds' probes."""
    rounds = []
    while not search.done:
        counts = search.next_counts(k)
        assert counts, "a search that is not done must ask for a probe"
        rounds.append(counts)
        for c in counts:
            search.record(c, c >= threshold)
    return rounds


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("max_count", [1, 2, 7, 16, 33])
def test_the_answer_is_the_threshold_and_its_predecessor_was_probed(max_count, k):
    for threshold in range(1, max_count + 2):
        search = FewestSearch(max_count)
        rounds = run(search, threshold, k)
        probed = [c for r in rounds for c in r]
        assert len(probed) == len(set(probed))  # nothing probed twice
        assert rounds[0][-1] == max_count  # the maximum first
        if threshold > max_count:
            assert search.answer is None and max_count in probed
            assert k > 1 or probed == [max_count]  # nothing smaller is tried
        else:
            assert search.answer == threshold
            assert threshold == 1 or search.results[threshold - 1] is False


def test_bisection_takes_about_log2_rounds():
    search = FewestSearch(64)
    rounds = run(search, 23)
    assert search.answer == 23 and len(rounds) <= 1 + 6
    wider = FewestSearch(64)
    assert len(run(wider, 23, k=3)) < len(rounds)  # more probes a round, fewer rounds


def test_a_non_monotone_probe_still_ends_on_met_above_not_met():
    search = FewestSearch(8)
    search.record(8, True)
    search.record(4, True)
    search.record(6, False)  # more replicas did worse (routing noise)
    assert search.hi == 4 and search.lo == 0 and not search.done
    search.record(2, False)
    search.record(3, False)
    assert search.done and search.answer == 4


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="max_count"):
        FewestSearch(0)
    with pytest.raises(ValueError, match="outside"):
        FewestSearch(4).record(5, True)
