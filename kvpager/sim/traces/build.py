"""Shared last steps of every reader: ragged integer lists to CSR, ids, and the Trace.

The fast paths here are vectorized over the whole file; only when they detect a problem
does a slow per-record pass run, to name the first offending record in the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

from kvpager.sim.traces.errors import Locator, show
from kvpager.sim.traces.trace import PrefixTable, Trace


def ragged_ints(
    rows: Sequence[list], records: Sequence[int], loc: Locator, field: str,
    *, allow_str: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets int64 [R + 1], data int64 [M]) of R lists of JSON integers.

    `records[r]` is the 0-based record of row r, for the error. With `allow_str`, strings
    (and integers) are accepted as opaque labels and interned to dense ints 0..K-1 in order
    of first appearance: identity survives, the original spelling does not.
    """
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)), out=offsets[1:])
    flat = list(chain.from_iterable(rows))
    types = set(map(type, flat))
    if types <= {int}:
        try:
            return offsets, np.array(flat, dtype=np.int64)
        except OverflowError:
            pass  # the slow pass below names the value
    elif allow_str and types <= {int, str}:
        intern: dict[object, int] = {}
        return offsets, np.fromiter(
            (intern.setdefault(v, len(intern)) for v in flat), dtype=np.int64, count=len(flat))
    expected = "integers or strings" if allow_str else "integers"
    ok = (int, str) if allow_str else (int,)
    for r, row in enumerate(rows):
        for pos, v in enumerate(row):
            if type(v) not in ok or (type(v) is int and not -(2**63) <= v < 2**63):
                raise loc.error(records[r], field,
                                f"expected a list of {expected}, got {show(v)} at position {pos}")
    raise AssertionError("unreachable: a bad value was detected but not found")  # pragma: no cover


def check_unique_ids(ids: list[str], explicit: list[bool], loc: Locator) -> None:
    """Ids name sequences in the manager, so two requests may not share one."""
    if len(set(ids)) == len(ids):
        return
    first: dict[str, int] = {}
    for k, rid in enumerate(ids):
        if rid in first:
            how = "" if explicit[k] else " (a record without 'id' is named by its 0-based index)"
            raise loc.error(k, "id", f"duplicate id {rid!r}, first used by record "
                            f"{first[rid] + 1}{how}")
        first[rid] = k


def make_trace(
    loc: Locator,
    fmt: str,
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    *,
    n: np.ndarray | None = None,
    beam: np.ndarray | None = None,
    ids: list[str] | None = None,
    prefix: PrefixTable | None = None,
) -> Trace:
    """The sorted Trace of columns in file order (R records)."""
    count = len(arrival)
    record = np.arange(count, dtype=np.int64)
    line = np.asarray(loc.lines, dtype=np.int64) if loc.lines is not None else np.zeros(count)
    ones = np.ones(count, dtype=np.int32)
    return Trace.from_unsorted(
        arrival=arrival, prompt_tokens=prompt, output_tokens=output,
        n=ones if n is None else n, beam_width=ones if beam is None else beam,
        record=record, line=line,
        ids=np.array([str(k) for k in range(count)] if ids is None else ids, dtype=np.str_),
        prefix=PrefixTable.none(count) if prefix is None else prefix,
        source=loc.path, format=fmt,
    )
