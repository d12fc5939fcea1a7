"""`Trace`: a whole request trace as sorted numpy columns.

Why columns and not a list of request objects: the simulator replays 20,000+ requests and
the whole run, import included, must stay well under 18 s, so the engine reads arrivals and
lengths as arrays (one `searchsorted` finds every arrival up to a time) and never pays for
20,000 Python objects it does not touch. Per-request prefix identity, which can be large
(a Mooncake request carries ~24 block ids, a token-id request thousands of token ids), is
stored once as a ragged CSR pair (`offsets`, `data`) instead of a list of lists.

A `Trace` is immutable: every array is read-only and every transformation (`select`,
`with_arrival_times`, `take`) returns a new one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kvpager.sim.traces.keys import BlockKeyer


class PrefixKind(IntEnum):
    """How a request says which of its prompt tokens it shares with other requests."""

    NONE = 0  #: nothing known: every prompt block is the request's own
    GROUP = 1  #: the first `shared_tokens` tokens equal those of every request in `group`
    HASHES = 2  #: one id per `hash_block_size`-token prompt block (Mooncake `hash_ids`)
    TOKENS = 3  #: the real prompt token ids


def _frozen(a: np.ndarray, dtype: type | str, name: str, n: int | None) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    a.setflags(write=False)
    return a


def take_ragged(
    offsets: np.ndarray, data: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows `order` of a CSR ragged array, vectorized (no per-row Python loop).

    offsets: int64 [R + 1], data: [offsets[-1]], order: int64 [K] -> (int64 [K + 1], [M']).
    """
    lengths = offsets[1:] - offsets[:-1]
    new_len = lengths[order]
    new_off = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(new_len, out=new_off[1:])
    total = int(new_off[-1])
    if total == 0:
        return new_off, data[:0].copy()
    starts = offsets[:-1][order]
    index = np.repeat(starts - new_off[:-1], new_len) + np.arange(total, dtype=np.int64)
    return new_off, data[index]


@dataclass(frozen=True, eq=False)
class PrefixTable:
    """Prefix identity of every request, one row per request (same order as the `Trace`).

    kind: int8 [N], a `PrefixKind`.
    group: int64 [N], index into `group_labels` for GROUP rows, -1 otherwise.
    shared_tokens: int64 [N], GROUP rows: how many leading prompt tokens the group shares.
    hash_block_size: int64 [N], HASHES rows: tokens per hashed block (512 for Mooncake).
    offsets: int64 [N + 1], data: int64 [M]: CSR rows holding the block hash ids (HASHES) or
    the prompt token ids (TOKENS); empty rows for the other kinds.
    group_labels: the `prefix_group` values as they were written in the file.
    out_offsets: int64 [N + 1], out_data: int64 [M']: CSR rows of the output token ids, for
    formats that carry them (an empty row: not given). A simulator replays them so that
    blocks filled while decoding are prefix-cached by content, as a real engine's are.
    """

    kind: np.ndarray
    group: np.ndarray
    shared_tokens: np.ndarray
    hash_block_size: np.ndarray
    offsets: np.ndarray
    data: np.ndarray
    group_labels: tuple[str | int, ...] = ()
    out_offsets: np.ndarray | None = None
    out_data: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.kind)
        put = object.__setattr__
        out_offsets, out_data = self.out_offsets, self.out_data
        if out_offsets is None:
            out_offsets, out_data = np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if out_data is None:
            raise ValueError("prefix.out_data: missing, but prefix.out_offsets is given")
        out_offsets = _frozen(out_offsets, np.int64, "prefix.out_offsets", n + 1)
        put(self, "out_offsets", out_offsets)
        put(self, "out_data", _frozen(out_data, np.int64, "prefix.out_data",
                                      int(out_offsets[-1])))
        put(self, "kind", _frozen(self.kind, np.int8, "prefix.kind", n))
        put(self, "group", _frozen(self.group, np.int64, "prefix.group", n))
        put(self, "shared_tokens", _frozen(self.shared_tokens, np.int64, "shared_tokens", n))
        put(self, "hash_block_size", _frozen(self.hash_block_size, np.int64, "hbs", n))
        put(self, "offsets", _frozen(self.offsets, np.int64, "prefix.offsets", n + 1))
        put(self, "data", _frozen(self.data, np.int64, "prefix.data", int(self.offsets[-1])))

    @classmethod
    def none(cls, n: int) -> PrefixTable:
        """A table saying nothing is shared, for formats without prefix identity."""
        zeros = np.zeros(n, dtype=np.int64)
        return cls(
            np.zeros(n, np.int8), np.full(n, -1, np.int64), zeros, zeros,
            np.zeros(n + 1, np.int64), np.zeros(0, np.int64),
        )

    @property
    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(out_offsets, out_data), which construction fills in when they are not given."""
        if self.out_offsets is None or self.out_data is None:
            raise ValueError("prefix: out_offsets / out_data unset (set by __post_init__)")
        return self.out_offsets, self.out_data

    def take(self, order: np.ndarray) -> PrefixTable:
        offsets, data = take_ragged(self.offsets, self.data, order)
        out_offsets, out_data = take_ragged(*self.outputs, order)
        return PrefixTable(
            self.kind[order], self.group[order], self.shared_tokens[order],
            self.hash_block_size[order], offsets, data, self.group_labels,
            out_offsets, out_data,
        )

    def row(self, i: int) -> np.ndarray:
        """The CSR row of request i: int64 [k] hash ids or token ids (empty for other kinds)."""
        return self.data[self.offsets[i] : self.offsets[i + 1]]


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests sorted by arrival (stable: ties keep file order), as read-only columns.

    arrival: float64 [N] seconds from the trace start, non-decreasing.
    prompt_tokens, output_tokens: int64 [N], both > 0.
    n: int32 [N] parallel samples; beam_width: int32 [N]; at most one of them > 1 per row.
    record: int64 [N] 0-based position of the request in its source file (for messages).
    line: int64 [N] 1-based line in the source file, 0 for JSON documents (no line per record).
    ids: str [N] the request ids (the file's `id`, else the 0-based record position).
    prefix: per-request prefix identity (`PrefixTable`).
    source, format: the file it came from and the detected format name, for messages.
    """

    arrival: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    n: np.ndarray
    beam_width: np.ndarray
    record: np.ndarray
    line: np.ndarray
    ids: np.ndarray
    prefix: PrefixTable
    source: str = ""
    format: str = ""
    _keyers: dict[int, BlockKeyer] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.arrival)
        put = object.__setattr__
        put(self, "arrival", _frozen(self.arrival, np.float64, "arrival", n))
        for name in ("prompt_tokens", "output_tokens", "record", "line"):
            put(self, name, _frozen(getattr(self, name), np.int64, name, n))
        for name in ("n", "beam_width"):
            put(self, name, _frozen(getattr(self, name), np.int32, name, n))
        put(self, "ids", _frozen(self.ids, np.str_, "ids", n))
        if len(self.prefix.kind) != n:
            raise ValueError(f"prefix: expected {n} rows, got {len(self.prefix.kind)}")
        if n > 1 and bool(np.any(self.arrival[1:] < self.arrival[:-1])):
            raise ValueError("arrival: must be sorted ascending (build with Trace.from_unsorted)")

    @classmethod
    def from_unsorted(
        cls,
        *,
        arrival: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        n: np.ndarray,
        beam_width: np.ndarray,
        record: np.ndarray,
        line: np.ndarray,
        ids: np.ndarray,
        prefix: PrefixTable,
        source: str = "",
        format: str = "",
    ) -> Trace:
        """A Trace from columns in file order: sorts by arrival, keeping file order for ties
        (so a replay is deterministic however the file was written)."""
        cols = {
            "arrival": np.asarray(arrival, dtype=np.float64),
            "prompt_tokens": np.asarray(prompt_tokens), "output_tokens": np.asarray(output_tokens),
            "n": np.asarray(n), "beam_width": np.asarray(beam_width),
            "record": np.asarray(record), "line": np.asarray(line), "ids": np.asarray(ids),
        }
        order = np.argsort(cols["arrival"], kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            cols = {k: v[order] for k, v in cols.items()}
            prefix = prefix.take(order)
        return cls(prefix=prefix, source=source, format=format, **cols)

    @classmethod
    def from_columns(
        cls,
        arrival: Sequence[float] | np.ndarray,
        prompt_tokens: Sequence[int] | np.ndarray,
        output_tokens: Sequence[int] | np.ndarray,
        *,
        n: Sequence[int] | np.ndarray | None = None,
        beam_width: Sequence[int] | np.ndarray | None = None,
        source: str = "<columns>",
    ) -> Trace:
        """A trace built in code (no prefix identity), e.g. for what-if studies:
        `Trace.from_columns([0.0, 0.5], [512, 128], [128, 64])`."""
        size = len(arrival)
        ones = np.ones(size, dtype=np.int32)
        index = np.arange(size, dtype=np.int64)
        return cls.from_unsorted(
            arrival=np.asarray(arrival, dtype=np.float64),
            prompt_tokens=np.asarray(prompt_tokens), output_tokens=np.asarray(output_tokens),
            n=ones if n is None else np.asarray(n), beam_width=ones if beam_width is None
            else np.asarray(beam_width), record=index, line=np.zeros(size, dtype=np.int64),
            ids=index.astype(str), prefix=PrefixTable.none(size), source=source,
            format="columns")

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def duration(self) -> float:
        """Seconds from the first to the last arrival (0.0 for fewer than two requests)."""
        return float(self.arrival[-1] - self.arrival[0]) if len(self) > 1 else 0.0

    def describe(self, i: int) -> str:
        """Where request i came from, for messages:
        "conv.csv: record 18 (line 19), id '17'" (JSON documents: "(index 17)")."""
        rec = int(self.record[i])
        where = f"line {int(self.line[i])}" if self.line[i] > 0 else f"index {rec}"
        return f"{self.source}: record {rec + 1} ({where}), id '{self.ids[i]}'"

    def take(self, order: Sequence[int] | np.ndarray) -> Trace:
        """Requests `order` (indices into this trace) as a new Trace; `order` must keep
        arrivals non-decreasing (a subset in ascending index order always does)."""
        order = np.asarray(order, dtype=np.int64)
        return Trace(
            arrival=self.arrival[order], prompt_tokens=self.prompt_tokens[order],
            output_tokens=self.output_tokens[order], n=self.n[order],
            beam_width=self.beam_width[order], record=self.record[order],
            line=self.line[order], ids=self.ids[order], prefix=self.prefix.take(order),
            source=self.source, format=self.format,
        )

    def select(
        self,
        *,
        time_window: tuple[float, float] | None = None,
        limit: int | None = None,
        rate_scale: float = 1.0,
    ) -> Trace:
        """A sub-trace, applied in this order:

        1. `time_window=(start, end)`: requests with `start <= arrival < end` (seconds of
           this trace), re-based so that `start` becomes time 0;
        2. `limit`: the first `limit` requests by arrival;
        3. `rate_scale`: arrival times divided by it, so 2.0 offers the same requests at twice
           the rate (half the gaps) and 0.5 stretches the trace to half the rate.
        """
        lo_hi = check_selection(time_window, limit, rate_scale)
        trace, shift = self, 0.0
        if lo_hi is not None:
            lo, hi = lo_hi
            first, stop = np.searchsorted(self.arrival, [lo, hi], side="left")
            if first == stop:
                raise ValueError(
                    f"time_window: [{lo}, {hi}) selects no request; the trace's arrivals span "
                    f"{self.arrival[0]:.3f}..{self.arrival[-1]:.3f} s")
            trace, shift = self.take(np.arange(first, stop)), lo
        if limit is not None and limit < len(trace):
            trace = trace.take(np.arange(limit))
        if shift == 0.0 and rate_scale == 1.0:
            return trace
        with np.errstate(over="ignore"):
            arrival = (trace.arrival - shift) / rate_scale
        if not bool(np.all(np.isfinite(arrival))):
            raise ValueError(f"rate_scale: {rate_scale!r} stretches the arrival times of "
                             f"{self.source or 'the trace'} (up to {self.arrival[-1]:.3g} s) "
                             "past the largest float")
        return trace.with_arrival_times(arrival)

    def with_arrival_times(self, arrival: np.ndarray) -> Trace:
        """The same requests at new arrival times (float64 [N], seconds, finite, >= 0), e.g.
        from a generated arrival process; re-sorted, ties in the current order."""
        arrival = np.asarray(arrival, dtype=np.float64)
        if arrival.shape != self.arrival.shape:
            raise ValueError(f"arrival: expected shape {self.arrival.shape}, got {arrival.shape}")
        if not bool(np.all(np.isfinite(arrival))) or bool(np.any(arrival < 0)):
            raise ValueError("arrival: every time must be finite and >= 0")
        return Trace.from_unsorted(
            arrival=arrival, prefix=self.prefix, prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens, n=self.n, beam_width=self.beam_width,
            record=self.record, line=self.line, ids=self.ids, source=self.source,
            format=self.format,
        )

    def keyer(self, block_size: int) -> BlockKeyer:
        """The (cached) `BlockKeyer` of this trace at a KV block size."""
        from kvpager.sim.traces.keys import BlockKeyer

        keyer = self._keyers.get(block_size)
        if keyer is None:
            keyer = self._keyers[block_size] = BlockKeyer(self, block_size)
        return keyer

    def block_keys(self, i: int, block_size: int) -> np.ndarray:
        """Prefix-cache keys of request i's full prompt blocks: int64 [prompt // block_size].

        Equal keys (within this trace and block size) imply equal token prefixes; see
        `kvpager.sim.traces.keys` for the construction.
        """
        return self.keyer(block_size).keys(i)

    def output_token_ids(self, i: int) -> np.ndarray | None:
        """The output token ids of request i (int64 [output_tokens]) when the trace carries
        them, else None."""
        out_offsets, out_data = self.prefix.outputs
        row = out_data[out_offsets[i] : out_offsets[i + 1]]
        return row if row.size else None

    def prompt_token_ids(self, i: int) -> np.ndarray | None:
        """The real prompt token ids of request i (int64 [prompt_tokens]) for token-id
        traces, else None: a manager may hash real tokens itself instead of using keys."""
        if self.prefix.kind[i] != PrefixKind.TOKENS:
            return None
        return self.prefix.row(i)


def check_selection(
    time_window: tuple[float, float] | None, limit: int | None, rate_scale: float
) -> tuple[float, float] | None:
    """Validate `Trace.select` arguments (ValueError naming the argument); returns the
    window as floats."""
    if not (isinstance(rate_scale, (int, float)) and not isinstance(rate_scale, bool)
            and math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"rate_scale: expected a finite number > 0, got {rate_scale!r}")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ValueError(f"limit: expected an integer >= 1 or None, got {limit!r}")
    if time_window is None:
        return None
    try:
        lo, hi = (float(x) for x in time_window)
    except (TypeError, ValueError):
        raise ValueError(
            f"time_window: expected (start, end) in seconds, got {time_window!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
        raise ValueError(f"time_window: expected finite 0 <= start < end, got {time_window!r}")
    return lo, hi
