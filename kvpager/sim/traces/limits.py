"""The largest numbers a trace may hold, and the checks that keep every reader inside them.

Why limits at all: a trace is input from another tool, and one absurd record (a 10^9-token
prompt, a beam width of 2^40) must be refused by name before it costs memory or time, not
overflow an int32/int64 column or take minutes to key. The limits are far above any real
deployment:

- `MAX_REQUEST_TOKENS` (2^24 = 16,777,216) tokens of prompt, and of output, per request:
  more than ten times the longest context of any served model today; a request longer than
  the simulated model's `max_model_len` is still read and then rejected by the simulation
  with a reason, as a serving engine would.
- `MAX_WIDTH` (2^31 - 1): `n` and `beam_width` are int32 columns.
- Azure timestamps: int64 nanoseconds since 1970, i.e. 1677-09-21 .. 2262-04-11.
"""

from __future__ import annotations

import math
import re

MAX_REQUEST_TOKENS = 1 << 24
MAX_WIDTH = (1 << 31) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

#: A CSV integer cell: ASCII digits only (`str.isdigit()` also accepts '²' and other
#: Unicode digits that `int()` refuses), at most 19 of them (int64 has 19 digits).
_DIGITS = re.compile(r"[0-9]+")


def parse_count(text: str) -> int | None:
    """The integer a CSV cell spells in plain ASCII digits (surrounding blanks allowed),
    or None: no sign, no underscores, no exponent, no Unicode digits. More than 19 digits
    (beyond int64) read as `INT64_MAX + 1`, so that range checks refuse them without
    converting thousands of digits."""
    cell = text.strip()
    if not _DIGITS.fullmatch(cell):
        return None
    return int(cell) if len(cell) <= 19 else INT64_MAX + 1


def is_count(value: object, low: int, high: int) -> bool:
    """`value` is a JSON integer (not a bool) with low <= value <= high."""
    return type(value) is int and low <= value <= high


def above(value: object, high: int) -> bool:
    """`value` is an integer above `high` (a limit problem, not a type problem)."""
    return type(value) is int and value > high


def too_large(value: int | str, high: int, what: str) -> str:
    """The message for an integer (or a CSV cell of digits) above its limit."""
    text = str(value).strip()
    shown = text if len(text) <= 30 else f"an integer of {len(text)} digits"
    return f"{shown} is above the limit of {high:,} {what}"


def finite_seconds(value: object, per_second: float = 1.0) -> float | None:
    """A JSON time (int or float, >= 0) as float seconds, or None when it is not a finite
    number >= 0 (an int too large for a float is not finite)."""
    if type(value) is not int and type(value) is not float:
        return None
    try:
        seconds = float(value) / per_second
    except OverflowError:
        return None
    return seconds if 0 <= seconds < math.inf else None
