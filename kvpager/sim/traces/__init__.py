"""Request traces for the simulator: readers, the columnar `Trace`, prefix keys, writers.

    from kvpager.sim.traces import load_trace, summarize
    trace = load_trace("conversation_trace.jsonl", time_window=(0, 600))
    keys = trace.block_keys(0, block_size=16)   # int64 prefix-cache keys of request 0

Formats (recognised by content): kvpager JSON / JSON Lines, Azure CSV, Mooncake JSON Lines,
length-only CSV (with a generated arrival process) and token-id JSON Lines. Importing this
package needs only numpy.
"""

from kvpager.sim.traces.arrivals import ArrivalProcess, GammaArrivals, PoissonArrivals
from kvpager.sim.traces.errors import TraceError
from kvpager.sim.traces.keys import BlockKeyer
from kvpager.sim.traces.load import ACCEPTED, FORMATS, detect_format, load_trace
from kvpager.sim.traces.summary import LengthStats, TraceSummary, context_fit, summarize
from kvpager.sim.traces.trace import PrefixKind, PrefixTable, Trace
from kvpager.sim.traces.writers import write_json, write_jsonl

__all__ = [
    "ACCEPTED",
    "FORMATS",
    "ArrivalProcess",
    "BlockKeyer",
    "GammaArrivals",
    "LengthStats",
    "PoissonArrivals",
    "PrefixKind",
    "PrefixTable",
    "Trace",
    "TraceError",
    "TraceSummary",
    "context_fit",
    "detect_format",
    "load_trace",
    "summarize",
    "write_json",
    "write_jsonl",
]
