"""The one error a trace file can cause, and how it names where the problem is.

A trace is usually thousands of records written by another tool; "bad value" is useless
unless it says which file, which record and which field, so every reader raises through
`Locator`, which knows how its format numbers records (line numbers for CSV and JSON Lines,
list indices for JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kvpager.core.errors import KVPagerError
from kvpager.sim.traces.limits import too_large

_MAX_SHOWN = 40
#: What the limits of `kvpager.sim.traces.limits` are, in the words of an error message.
TOKENS_LIMIT = "tokens per request (kvpager.sim.traces.limits.MAX_REQUEST_TOKENS)"
WIDTH_LIMIT = "sequences per request (int32)"


class TraceError(KVPagerError, ValueError):
    """A trace file that cannot be read: the one-line message names the file, the record and
    the field, e.g. ``conv.csv: record 17 (line 18): field 'GeneratedTokens': expected an
    integer > 0, got 'abc'``.

    Attributes keep the parts for callers that want them (a CLI exit code, a test): `path`,
    `record` (1-based, or None for file-level problems) and `field` (or None).
    """

    def __init__(
        self,
        path: str,
        message: str,
        *,
        record: int | None = None,
        where: str | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.record, self.field, self.detail = path, record, field, message
        parts = [path]
        if record is not None:
            parts.append(f"record {record}" + (f" ({where})" if where else ""))
        if field is not None:
            parts.append(f"field '{field}'")
        parts.append(message)
        super().__init__(": ".join(parts))


def show(value: object, *, raw: bool = False) -> str:
    """A short rendering of an offending value: JSON spelling for parsed JSON values (so
    `null` and `true` read as in the file), Python quotes for raw CSV text."""
    if raw:
        text = repr(value)
    else:
        try:
            text = json.dumps(value, allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            text = f"a {type(value).__name__}"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


@dataclass(frozen=True)
class Locator:
    """Turns a 0-based record position into the words of an error message.

    `lines[k]` is the 1-based line of record k for line formats (CSV, JSON Lines); `None`
    for a JSON document, where records are named by their index in the list (`container`
    is the key holding the list, e.g. "requests", or "" for a top-level list).
    """

    path: str
    lines: list[int] | None = None
    container: str = ""

    def where(self, k: int) -> str:
        if self.lines is not None:
            return f"line {self.lines[k]}"
        return f"{self.container}[{k}]" if self.container else f"index {k}"

    def error(self, k: int, field: str | None, message: str) -> TraceError:
        return TraceError(self.path, message, record=k + 1, where=self.where(k), field=field)

    def count(
        self, k: int, field: str, value: object, high: int, what: str,
        expected: str = "an integer > 0", *, raw: bool = False,
    ) -> TraceError:
        """The error for a count outside 1..high: above the limit, or not a count at all."""
        if type(value) is int and value > high:
            return self.error(k, field, too_large(value, high, what))
        return self.bad(k, field, value, expected, raw=raw)

    def bad(
        self, k: int, field: str, value: object, expected: str, *, raw: bool = False
    ) -> TraceError:
        """The error for a present value of the wrong type or range, or a missing field."""
        if value is MISSING:
            return self.error(k, field, "missing field")
        return self.error(k, field, f"expected {expected}, got {show(value, raw=raw)}")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


#: Sentinel for `dict.get` so that a field holding JSON null is told apart from an absent one.
MISSING = _Missing()
