"""`summarize`: the numbers `kvpager trace info` prints about a trace.

Prefix-sharing potential is the fraction of full prompt blocks (at a KV block size) whose
key was already produced by an earlier request (or an earlier block): the hit rate an
*unbounded* prefix cache would reach replaying the trace in arrival order. It is an upper
bound for any real cache, and 0 for traces without prefix identity (Azure, length-only),
which say nothing about shared content, not that there is none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kvpager.sim.traces.keys import BlockKeyer
from kvpager.sim.traces.trace import PrefixKind, Trace


@dataclass(frozen=True)
class LengthStats:
    """Token-count distribution; percentiles by linear interpolation (numpy's default)."""

    mean: float
    min: int
    p50: float
    p90: float
    p99: float
    max: int
    total: int

    @classmethod
    def of(cls, values: np.ndarray) -> LengthStats:
        p50, p90, p99 = np.percentile(values, [50, 90, 99]).tolist()
        return cls(float(values.mean()), int(values.min()), p50, p90, p99, int(values.max()),
                   int(values.sum()))


@dataclass(frozen=True)
class TraceSummary:
    """What a capacity planner checks before simulating a trace (see `summarize`)."""

    source: str
    format: str
    requests: int
    duration_s: float
    rate_per_s: float | None
    interarrival_mean_s: float | None
    interarrival_cv: float | None
    prompt: LengthStats
    output: LengthStats
    parallel_sampling_requests: int
    beam_search_requests: int
    prefix_kinds: dict[str, int]
    block_size: int
    prompt_blocks: int
    reusable_blocks: int
    reusable_fraction: float

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (nested dicts for the length stats)."""
        return asdict(self)

    def to_text(self) -> str:
        """Aligned human-readable lines."""
        def opt(v: float | None, fmt: str) -> str:
            return "n/a" if v is None else format(v, fmt)

        def lengths(s: LengthStats) -> str:
            return (f"mean {s.mean:,.1f}  p50 {s.p50:,.0f}  p90 {s.p90:,.0f}  p99 {s.p99:,.0f}"
                    f"  min {s.min:,}  max {s.max:,}  total {s.total:,}")

        kinds = ", ".join(f"{k} {v:,}" for k, v in self.prefix_kinds.items() if v) or "none"
        rows = [
            ("trace", f"{self.source} ({self.format})"),
            ("requests", f"{self.requests:,}"),
            ("duration", f"{self.duration_s:,.1f} s"),
            ("rate", f"{opt(self.rate_per_s, '.3f')} req/s"),
            ("inter-arrival", f"mean {opt(self.interarrival_mean_s, '.4f')} s, "
                              f"CV {opt(self.interarrival_cv, '.3f')}"),
            ("prompt tokens", lengths(self.prompt)),
            ("output tokens", lengths(self.output)),
            ("parallel / beam", f"{self.parallel_sampling_requests:,} with n > 1, "
                                f"{self.beam_search_requests:,} with beam_width > 1"),
            ("prefix identity", kinds),
            ("prefix sharing", f"{self.reusable_blocks:,} of {self.prompt_blocks:,} full "
                               f"{self.block_size}-token prompt blocks reusable "
                               f"({100 * self.reusable_fraction:.1f}%) with an unbounded cache"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def reusable_blocks(trace: Trace, block_size: int) -> tuple[int, int]:
    """(full prompt blocks, blocks whose key an earlier block already had).

    Counted per prefix node (`BlockKeyer.coverage`): a request covering the first c blocks
    of a node reuses min(c, the most any earlier request covered), which sums to the
    duplicates among all keys without building them (memory: one int per node).
    """
    keyer = BlockKeyer(trace, block_size)
    total = int((trace.prompt_tokens // block_size).sum())
    most: dict[int, int] = {}
    reusable = 0
    for i in np.flatnonzero(trace.prefix.kind != PrefixKind.NONE).tolist():
        for node, blocks in keyer.coverage(i):
            before = most.get(node, 0)
            reusable += min(before, blocks)
            if blocks > before:
                most[node] = blocks
    return total, reusable


def summarize(trace: Trace, block_size: int = 16) -> TraceSummary:
    """Counts, timing, length distributions and prefix-sharing potential of a trace.

    rate_per_s = requests / (last arrival - first arrival); inter-arrival CV = population
    standard deviation / mean of the gaps (1 for Poisson arrivals); both None when
    undefined (fewer than 2 requests, or all arriving at once).
    """
    if type(block_size) is not int or block_size <= 0:
        raise ValueError(f"block_size: expected an integer > 0, got {block_size!r}")
    count = len(trace)
    gaps = np.diff(trace.arrival)
    duration = trace.duration
    # the mean gap is the span over the gaps (summing gaps near 1e308 would overflow), and
    # the CV the spread of the gaps in units of that mean (squares of 1e308 would too)
    mean_gap = duration / len(gaps) if len(gaps) else None
    cv = float(np.std(gaps / mean_gap)) if mean_gap else None
    total, reusable = reusable_blocks(trace, block_size)
    kinds = np.bincount(trace.prefix.kind, minlength=len(PrefixKind))
    return TraceSummary(
        source=trace.source, format=trace.format, requests=count, duration_s=duration,
        rate_per_s=count / duration if duration > 0 else None,
        interarrival_mean_s=mean_gap, interarrival_cv=cv,
        prompt=LengthStats.of(trace.prompt_tokens), output=LengthStats.of(trace.output_tokens),
        parallel_sampling_requests=int((trace.n > 1).sum()),
        beam_search_requests=int((trace.beam_width > 1).sum()),
        prefix_kinds={k.name.lower(): int(kinds[k]) for k in PrefixKind},
        block_size=block_size, prompt_blocks=total, reusable_blocks=reusable,
        reusable_fraction=reusable / total if total else 0.0,
    )


def context_fit(trace: Trace, max_model_len: int) -> dict[str, int | float]:
    """How many requests a deployment of `max_model_len` tokens refuses, as `simulate` does
    with `--long-prompts reject`: prompt + requested output past the limit (which includes
    every prompt that reaches it). {"max_model_len", "over_limit", "over_limit_fraction",
    "prompt_reaches_limit", "longest_prompt", "longest_total"}."""
    if type(max_model_len) is not int or max_model_len <= 0:
        raise ValueError(f"max_model_len: expected an integer > 0, got {max_model_len!r}")
    prompt = np.asarray(trace.prompt_tokens, dtype=np.int64)
    total = prompt + np.asarray(trace.output_tokens, dtype=np.int64)
    over = int(((total > max_model_len) | (prompt >= max_model_len)).sum())
    return {"max_model_len": max_model_len, "over_limit": over,
            "over_limit_fraction": over / len(trace) if len(trace) else 0.0,
            "prompt_reaches_limit": int((prompt >= max_model_len).sum()),
            "longest_prompt": int(prompt.max()) if prompt.size else 0,
            "longest_total": int(total.max()) if total.size else 0}
