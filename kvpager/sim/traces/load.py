"""`load_trace`: read any supported trace file, recognised by its content.

Detection order: text starting with `[` or `{` is JSON / JSON Lines and its schema is told
by the first record's fields; anything else is CSV and is told by its header. The file
extension is never consulted, so `trace.txt` holding Mooncake lines loads as Mooncake.
"""

from __future__ import annotations

import os
from pathlib import Path

from kvpager.sim.traces.arrivals import ArrivalProcess
from kvpager.sim.traces.csv_formats import (
    AZURE_HEADER,
    LENGTH_COLUMNS,
    read_azure,
    read_lengths,
    split_header,
)
from kvpager.sim.traces.errors import TraceError, show
from kvpager.sim.traces.json_container import parse_records
from kvpager.sim.traces.kvpager_format import read_kvpager
from kvpager.sim.traces.mooncake import read_mooncake
from kvpager.sim.traces.tokens import read_tokens
from kvpager.sim.traces.trace import Trace, check_selection

#: Schema names accepted by `load_trace(format=...)`, besides "auto".
FORMATS = ("kvpager", "mooncake", "tokens", "azure", "lengths")

ACCEPTED = (
    "accepted formats: kvpager JSON / JSON Lines (arrival_time, prompt_tokens, "
    "output_tokens), Mooncake JSON Lines (timestamp, input_length, output_length, hash_ids), "
    "token-id JSON Lines (input_toks, output_toks, arrival_time_ns, input_tok_ids), Azure CSV "
    "(header TIMESTAMP,ContextTokens,GeneratedTokens), length-only CSV (header "
    "num_prefill_tokens,num_decode_tokens)"
)

# A JSON schema is recognised by any one of its distinctive fields, checked in this order.
_JSON_SCHEMAS = (
    ("mooncake", ("input_length", "hash_ids")),
    ("tokens", ("input_toks", "input_tok_ids", "arrival_time_ns")),
    ("kvpager", ("arrival_time", "prompt_tokens", "output_tokens")),
)
_JSON_READERS = {"kvpager": read_kvpager, "mooncake": read_mooncake, "tokens": read_tokens}


def read_text(path: str | os.PathLike) -> str:
    """The file's text, or a TraceError saying why it cannot be a trace."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise TraceError(name, "no such file") from None
    except IsADirectoryError:
        raise TraceError(name, "is a directory, not a trace file") from None
    except OSError as exc:
        raise TraceError(name, f"cannot read the file: {exc.strerror or exc}") from None
    if not data.strip():
        raise TraceError(name, "empty file")
    try:
        return data.decode("utf-8-sig")  # a leading BOM is not content
    except UnicodeDecodeError as exc:
        raise TraceError(name, f"not UTF-8 text (bad byte at offset {exc.start}); "
                               f"{ACCEPTED}") from None


def _json_schema(name: str, first: object) -> str:
    if isinstance(first, dict):
        for schema, keys in _JSON_SCHEMAS:
            if any(key in first for key in keys):
                return schema
        fields = ", ".join(list(first)[:6]) or "none"
        raise TraceError(name, f"unknown trace format: first record has fields {fields}; "
                               f"{ACCEPTED}")
    raise TraceError(name, f"unknown trace format: first record is {show(first)}, not an "
                           f"object; {ACCEPTED}")


def _csv_schema(name: str, header: list[str]) -> str:
    if tuple(header[:3]) == AZURE_HEADER:
        return "azure"
    if all(col in header for col in LENGTH_COLUMNS):
        return "lengths"
    # A header holding some of a format's columns is that format with a column missing.
    for schema, columns, how in (("Azure", AZURE_HEADER, "first three columns "),
                                 ("length-only", LENGTH_COLUMNS, "columns ")):
        if any(col in header for col in columns):
            lacking = [col for col in columns if col not in header]
            if lacking:
                raise TraceError(name, f"{schema} CSV header {','.join(header)[:60]!r} lacks "
                                       f"the column(s) {', '.join(lacking)}; expected the "
                                       f"{how}{','.join(columns)}")
            raise TraceError(name, f"{schema} CSV header {','.join(header)[:60]!r}: expected "
                                   f"the {how}{','.join(columns)} in this order")
    shown = ",".join(header)[:60]
    raise TraceError(name, f"unknown trace format: not JSON, and the first line {shown!r} is "
                           f"no known CSV header; {ACCEPTED}")


def load_trace(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    arrivals: ArrivalProcess | None = None,
    time_window: tuple[float, float] | None = None,
    limit: int | None = None,
    rate_scale: float = 1.0,
) -> Trace:
    """Read a trace file into a sorted `Trace`.

    format: "auto" (detect from content) or one of `FORMATS` to insist on a schema.
    arrivals: an arrival process (`PoissonArrivals`, `GammaArrivals`) giving the requests
        new arrival times in their arrival order; required for length-only CSV files.
    time_window, limit, rate_scale: applied after loading, in that order (`Trace.select`).

    Raises TraceError (a ValueError) naming the file, record and field for bad content,
    and ValueError naming the argument for bad arguments, before reading anything.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format: expected 'auto' or one of {', '.join(FORMATS)}, got "
                         f"{format!r}")
    if arrivals is not None and not callable(getattr(arrivals, "times", None)):
        raise ValueError(f"arrivals: expected an arrival process with a times(count) method, "
                         f"got {type(arrivals).__name__}")
    check_selection(time_window, limit, rate_scale)
    name = os.fspath(path)
    text = read_text(name)
    head = text.lstrip("\ufeff \t\r\n")[:1]
    if head in ("[", "{"):
        if format in ("azure", "lengths"):
            raise TraceError(name, f"format {format!r} is CSV, but the file holds JSON")
        records, loc, container = parse_records(name, text)
        schema = _json_schema(name, records[0]) if format == "auto" else format
        trace = _JSON_READERS[schema](records, loc, container)
    else:
        header, _ = split_header(text)
        schema = _csv_schema(name, header) if format == "auto" else format
        if schema == "azure":
            if tuple(header[:3]) != AZURE_HEADER:
                raise TraceError(name, f"expected the header {','.join(AZURE_HEADER)}")
            trace = read_azure(text, name)
        elif schema == "lengths":
            missing = [c for c in LENGTH_COLUMNS if c not in header]
            if missing:
                raise TraceError(name, f"the header lacks column(s) {', '.join(missing)}")
            trace = read_lengths(text, name, arrivals)
            arrivals = None
        else:
            raise TraceError(name, f"format {schema!r} is JSON, but the file is not JSON")
    if arrivals is not None:
        trace = trace.with_arrival_times(arrivals.times(len(trace)))
    return trace.select(time_window=time_window, limit=limit, rate_scale=rate_scale)


def detect_format(path: str | os.PathLike) -> str:
    """The format name `load_trace` would report (e.g. "mooncake-jsonl", "azure-csv"),
    judged from the content; a length-only CSV is recognised without an arrival process."""
    name = os.fspath(path)
    text = read_text(name)
    if text.lstrip("\ufeff \t\r\n")[:1] in ("[", "{"):
        records, _, container = parse_records(name, text)
        return f"{_json_schema(name, records[0])}-{container}"
    header, _ = split_header(text)
    return f"{_csv_schema(name, header)}-csv"
