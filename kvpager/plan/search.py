"""The fewest count meeting a target, by bisection (k-section) over counts.

A probe of `count` says whether that many servers meet the target. More servers never make
a fleet worse at the same load (assumed: the search's answer is the smallest met count
whose next-smaller probed count was not met, the evidence the plan prints), so the answer
is found in about log2(max_count) rounds. With k probes per round (parallel workers), a
round cuts the open interval into k + 1 parts.

    search = FewestSearch(max_count=16)
    while not search.done:
        for count in search.next_counts(k=1):
            search.record(count, met=probe(count))
    search.answer   # None: not met up to 16
"""

from __future__ import annotations


class FewestSearch:
    """The smallest count in 1..max_count whose probe is met (see the module docstring).

    The first round always probes `max_count`: when even that is not met, the search ends
    there ("not met up to max_count") without probing anything smaller.
    """

    def __init__(self, max_count: int) -> None:
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"max_count must be an integer >= 1, got {max_count!r}")
        self.max_count = max_count
        self.results: dict[int, bool] = {}  # count -> met

    @property
    def hi(self) -> int | None:
        """The smallest count probed and met (None: none yet)."""
        met = [c for c, ok in self.results.items() if ok]
        return min(met) if met else None

    @property
    def lo(self) -> int:
        """The largest count probed and not met below `hi` (0: none; zero servers never
        meet a target)."""
        hi = self.hi
        failed = [c for c, ok in self.results.items() if not ok and (hi is None or c < hi)]
        return max(failed, default=0)

    @property
    def done(self) -> bool:
        hi = self.hi
        if hi is None:
            return self.max_count in self.results
        return hi - self.lo <= 1

    @property
    def answer(self) -> int | None:
        """The fewest count met, once `done` (None while searching or when none is)."""
        return self.hi if self.done else None

    def next_counts(self, k: int = 1) -> list[int]:
        """Up to `k` counts to probe next, not probed before, ascending (empty when done)."""
        if self.done:
            return []
        k = max(1, k)
        lo, hi = self.lo, self.hi
        first = [] if hi is not None else [self.max_count]
        top = self.max_count if hi is None else hi
        inner = k - len(first)
        picks = {lo + (top - lo) * j // (inner + 1) for j in range(1, inner + 1)}
        counts = {c for c in picks if lo < c < top} | set(first)
        return sorted(c for c in counts if c not in self.results)

    def record(self, count: int, met: bool) -> None:
        if not 1 <= count <= self.max_count:
            raise ValueError(f"count {count} is outside 1..{self.max_count}")
        self.results[count] = bool(met)
