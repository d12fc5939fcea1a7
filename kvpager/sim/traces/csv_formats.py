"""CSV traces: Azure LLM inference (Splitwise) and length-only tables.

Both are parsed with `str.split` rather than the csv module: the published files hold no
quoting, and the plain split reads the 19,366-row Azure file in a few tens of milliseconds.
A quoted or malformed field simply fails the integer check and is reported by line.

Azure timestamps (`2023-11-16 18:15:46.6805900`, 7 fractional digits) are converted to
integer nanoseconds before subtracting the start, because float seconds since 1970 keep only
~0.2 us of resolution and arrival order must survive exactly.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np

from kvpager.sim.traces.arrivals import ArrivalProcess
from kvpager.sim.traces.build import make_trace
from kvpager.sim.traces.errors import TOKENS_LIMIT, Locator, TraceError
from kvpager.sim.traces.limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_REQUEST_TOKENS,
    parse_count,
    too_large,
)
from kvpager.sim.traces.trace import Trace

AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
LENGTH_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
_EPOCH = dt.date(1970, 1, 1).toordinal()  # int64 ns since 1970 last until 2262
_FIRST, _LAST = "1677-09-21 00:12:43.145224192", "2262-04-11 23:47:16.854775807"
_TIME = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")


class NeedsArrivalsError(TraceError):
    """A length-only CSV read without an arrival process (callers may word the remedy in
    their own terms, e.g. a command-line option)."""


def split_header(text: str) -> tuple[list[str], list[str]]:
    """(header fields, all lines) of a CSV text; a UTF-8 BOM and CR line ends are tolerated."""
    lines = text.lstrip("\ufeff").split("\n")
    return [h.strip() for h in lines[0].rstrip("\r").split(",")], lines


def _rows(lines: list[str], path: str, width: int, names: tuple[str, ...]):
    """(line numbers, rows of `width` fields) of the data lines, skipping blank ones."""
    numbers: list[int] = []
    rows: list[list[str]] = []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        fields = raw.rstrip("\r").split(",")
        if len(fields) < width:
            loc = Locator(path, lines=[*numbers, number])
            raise loc.error(len(rows), names[len(fields)] if len(fields) < len(names) else None,
                            f"missing field: the line has {len(fields)} of {width} columns")
        numbers.append(number)
        rows.append(fields)
    if not rows:
        raise TraceError(path, "no requests: the CSV has a header but no data rows")
    return numbers, rows


def _positive_ints(rows, col: int, loc: Locator, name: str) -> np.ndarray:
    """int64 column `col`: every cell plain ASCII digits, 1..MAX_REQUEST_TOKENS."""
    values = [parse_count(r[col]) for r in rows]
    # the ignore: mypy cannot see that `None in values` keeps None out of min() and max()
    if None in values or not 0 < min(values) <= max(values) <= MAX_REQUEST_TOKENS:  # type: ignore[operator, type-var]
        for k, v in enumerate(values):
            if v is None or v <= 0:
                raise loc.bad(k, name, rows[k][col], "an integer > 0", raw=True)
            if v > MAX_REQUEST_TOKENS:
                raise loc.error(k, name, too_large(rows[k][col], MAX_REQUEST_TOKENS,
                                                   TOKENS_LIMIT))
    return np.array(values, dtype=np.int64)


def read_azure(text: str, path: str) -> Trace:
    """Azure CSV `TIMESTAMP,ContextTokens,GeneratedTokens`; arrival = seconds since the
    earliest timestamp (the first row in the published, sorted files)."""
    _, lines = split_header(text)
    numbers, rows = _rows(lines, path, 3, AZURE_HEADER)
    loc = Locator(path, lines=numbers)
    days: dict[str, int] = {}
    ns = [0] * len(rows)
    for k, r in enumerate(rows):
        stamp = r[0].strip()
        m = _TIME.fullmatch(stamp)
        day = days.get(m.group(1)) if m else None
        if m and day is None:
            try:
                ordinal = dt.date.fromisoformat(m.group(1)).toordinal() - _EPOCH
                day = days[m.group(1)] = ordinal * 86400
            except ValueError:
                day = None
        if (m is None or day is None or int(m.group(2)) > 23 or int(m.group(3)) > 59
                or int(m.group(4)) > 59):
            raise loc.bad(k, "TIMESTAMP", r[0],
                          "a time like '2023-11-16 18:15:46.6805900'", raw=True)
        frac = m.group(5) or ""
        seconds = day + int(m.group(2)) * 3600 + int(m.group(3)) * 60 + int(m.group(4))
        ns[k] = seconds * 1_000_000_000 + int(frac.ljust(9, "0"))
        if not INT64_MIN <= ns[k] <= INT64_MAX:
            raise loc.error(k, "TIMESTAMP", f"{r[0].strip()!r} is outside the range of int64 "
                            f"nanoseconds since 1970 ({_FIRST} .. {_LAST})")
    first = min(ns)
    if max(ns) - first > INT64_MAX:
        k = ns.index(max(ns))
        raise loc.error(k, "TIMESTAMP", f"{rows[k][0].strip()!r} is more than 2^63 ns (292 "
                        "years) after the trace's earliest timestamp")
    arrival = (np.array(ns, dtype=np.int64) - first).astype(np.float64) / 1e9
    prompt = _positive_ints(rows, 1, loc, "ContextTokens")
    output = _positive_ints(rows, 2, loc, "GeneratedTokens")
    return make_trace(loc, "azure-csv", arrival, prompt, output)


def read_lengths(text: str, path: str, arrivals: ArrivalProcess | None) -> Trace:
    """Length-only CSV (`num_prefill_tokens,num_decode_tokens[,...]`, columns found by name)
    with arrival times drawn from `arrivals`, in row order."""
    header, lines = split_header(text)
    if arrivals is None:
        raise NeedsArrivalsError(path, "a length-only CSV has no arrival times: pass an "
                                 "arrival process, e.g. arrivals=PoissonArrivals(rate=5.0, "
                                 "seed=0)")
    cols = [header.index(name) for name in LENGTH_COLUMNS]
    numbers, rows = _rows(lines, path, max(cols) + 1, tuple(header))
    loc = Locator(path, lines=numbers)
    prompt = _positive_ints(rows, cols[0], loc, LENGTH_COLUMNS[0])
    output = _positive_ints(rows, cols[1], loc, LENGTH_COLUMNS[1])
    return make_trace(loc, "lengths-csv", arrivals.times(len(rows)), prompt, output)
