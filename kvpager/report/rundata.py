"""Read a simulation run directory back into columns the figures draw from.

A run directory (`kvpager.sim.run.write_run`) holds `metrics.json`, and per strategy
`requests_<strategy>.csv` and `memory_<strategy>.csv`; optionally `events_<strategy>.csv`
(see `EVENT_COLUMNS`). Reports are drawn from these files only, never from live simulator
objects, so that `kvpager report RUN_DIR` redraws any past run and the report of
`kvpager simulate --report` is the same file.

Why not pandas: the package keeps its dependencies to numpy; the files are a few thousand
rows and the `csv` module reads them in milliseconds.

Every string read here (request ids, file names, rejection reasons) came from a trace or a
file name and is untrusted: the HTML writer escapes it, this module only carries it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvpager.core.memory.usage import FIELDS as MEMORY_FIELDS

# "cached" (evictable prefix-cached blocks) is optional: run directories written before it
# was split out of "free" count those blocks as free, and read as zero cached.
OPTIONAL_MEMORY_FIELDS = ("cached",)
MEMORY_COLUMNS = ("time_s", *(f for f in MEMORY_FIELDS if f not in OPTIONAL_MEMORY_FIELDS),
                  "running_seqs", "waiting", "swapped", "prefix_hit_rate")
TIER_COLUMNS = ("prefix_gpu_hit_rate", "prefix_cpu_hit_rate")  # optional
REQUEST_COLUMNS = ("index", "id", "arrival_s", "prompt_tokens", "output_tokens",
                   "first_token_s", "finish_s", "ttft_s", "e2e_s", "preemptions", "status",
                   "reason")
# Optional time-stamped events: `kind` is one of EVENT_KINDS, `count` how many sequence groups
# (or blocks, for swaps, when the writer knows them) the event moved.
EVENT_COLUMNS = ("time_s", "kind", "count")
EVENT_KINDS = ("preempt-swap", "preempt-recompute", "swap-out", "swap-in",
               "kv-send", "kv-receive")  # KV transfers of a disaggregated run, in blocks


@dataclass(frozen=True)
class MemoryColumns:
    """The memory and queue time series of one strategy.

    time_s: float64 [T] simulated seconds of each sample (the sample holds until the next).
    fractions: float64 [T, K] each kind's share of KV capacity, K columns in
        MEMORY_FIELDS order (rows sum to 1).
    running, waiting, swapped: float64 [T] sequences running, groups waiting, groups swapped.
    prefix_hit_rate: float64 [T] cumulative prefix-cache hit rate (0 without a cache).
    tier_hit_rates: float64 [T, 2] the same split by where the hit blocks came from (GPU
        cache, CPU prefix tier), or None for a run directory written before the split
        (columns "prefix_gpu_hit_rate", "prefix_cpu_hit_rate" are optional).
    """

    time_s: np.ndarray
    fractions: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    swapped: np.ndarray
    prefix_hit_rate: np.ndarray
    tier_hit_rates: np.ndarray | None = None


@dataclass(frozen=True)
class RequestColumns:
    """Per-request outcomes of one strategy, in trace order.

    ids: str [N] request ids as written in the trace (untrusted text).
    arrival_s, ttft_s, e2e_s, first_token_s, finish_s: float64 [N], NaN when the request
        did not finish.
    prompt_tokens, output_tokens, preemptions: int64 [N] (output_tokens is what was
        generated, 0 for rejected requests).
    status: str [N] "finished", "rejected" or "pending"; reasons: str [N] why rejected.
    """

    ids: np.ndarray
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    ttft_s: np.ndarray
    e2e_s: np.ndarray
    preemptions: np.ndarray
    status: np.ndarray
    reasons: np.ndarray

    @property
    def finished(self) -> np.ndarray:
        """bool [N]."""
        return self.status == "finished"

    def normalized_latency(self) -> np.ndarray:
        """float64 [finished]: end-to-end latency / generated tokens (s/token), the vLLM
        paper's per-request normalized latency."""
        done = self.finished
        return self.e2e_s[done] / np.maximum(self.output_tokens[done], 1)

    def tpot(self) -> np.ndarray:
        """float64 [finished with > 1 token]: (finish - first token) / (tokens - 1)."""
        multi = self.finished & (self.output_tokens > 1)
        return ((self.finish_s[multi] - self.first_token_s[multi])
                / (self.output_tokens[multi] - 1))


@dataclass(frozen=True)
class EventColumns:
    """Time-stamped preemption and swap events of one strategy.

    time_s: float64 [E]; kind: str [E] (EVENT_KINDS); count: float64 [E].
    exact: True when read from an events file; False when derived from the sampled
        swapped-queue length (changes between samples, so a lower bound at sample
        resolution, and recompute preemptions are invisible).
    """

    time_s: np.ndarray
    kind: np.ndarray
    count: np.ndarray
    exact: bool


@dataclass(frozen=True)
class ReplicaColumns:
    """The replicas of a cluster run, one strategy (`replicas_<strategy>.csv` and
    `load_<strategy>.csv`, written when a run has several replicas).

    memory: per replica (index order), its memory and queue samples (`tier_hit_rates` None).
    load_time_s: float64 [A] arrival times; in_flight: float64 [A, R] requests in flight on
        each replica just before that arrival was routed (empty without `load_*.csv`).
    """

    memory: list[MemoryColumns]
    load_time_s: np.ndarray
    in_flight: np.ndarray


@dataclass(frozen=True)
class RunData:
    """Everything a report draws: `metrics.json` plus each strategy's columns."""

    path: Path
    metrics: dict
    strategies: tuple[str, ...]
    memory: dict[str, MemoryColumns] = field(default_factory=dict)
    requests: dict[str, RequestColumns] = field(default_factory=dict)
    events: dict[str, EventColumns] = field(default_factory=dict)
    replicas: dict[str, ReplicaColumns] = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return self.metrics.get("config", {})

    @property
    def prefix_caching(self) -> bool:
        """True when the run used a prefix cache or any strategy recorded hits."""
        if self.config.get("prefix_caching"):
            return True
        return any(m.prefix_hit_rate.size and float(np.nanmax(m.prefix_hit_rate)) > 0
                   for m in self.memory.values())


def read_metrics(path: Path) -> dict:
    """`metrics.json` of a run directory, checked for the keys reports use."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    strategies = metrics.get("strategies")
    if not isinstance(strategies, dict) or not strategies:
        raise ValueError(f"{path}: field 'strategies' must be a non-empty object of "
                         "per-strategy metrics")
    for name, value in strategies.items():
        if not isinstance(value, dict):
            raise ValueError(f"{path}: strategies.{name} must be an object")
    return metrics


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory written by `kvpager simulate` (or `kvpager.sim.run.simulate`).

    Raises ValueError naming the file, line and column for missing or malformed content,
    and FileNotFoundError naming the path when the directory or a file is absent.
    """
    root = Path(run_dir)
    if not root.exists():
        raise FileNotFoundError(2, "no such run directory", str(root))
    if not root.is_dir():
        raise ValueError(f"{root}: expected a run directory (with metrics.json), got a file")
    metrics_path = root / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(2, "no metrics.json in the run directory (write one with "
                                   "`kvpager simulate TRACE --out DIR`)", str(metrics_path))
    metrics = read_metrics(metrics_path)
    names = tuple(str(n) for n in metrics["strategies"])
    memory, requests, events = {}, {}, {}
    for name in names:
        memory[name] = _read_memory(root / f"memory_{name}.csv")
        requests[name] = _read_requests(root / f"requests_{name}.csv")
        events_path = root / f"events_{name}.csv"
        events[name] = (_read_events(events_path) if events_path.is_file()
                        else derive_swap_events(memory[name]))
    replicas = {name: _read_replicas(root, name) for name in names
                if (root / f"replicas_{name}.csv").is_file()}
    return RunData(root, metrics, names, memory, requests, events, replicas)


def derive_swap_events(memory: MemoryColumns) -> EventColumns:
    """Swap-out / swap-in events from changes of the sampled swapped-queue length.

    Without an events file this is the best the run directory tells: a rise of the swapped
    queue between two samples means at least that many groups were swapped out, a fall that
    many swapped in. Stamped at the later sample.
    """
    swapped = memory.swapped
    if swapped.size < 2:
        return EventColumns(np.zeros(0), np.zeros(0, dtype=str), np.zeros(0), exact=False)
    delta = np.diff(swapped)
    where = np.nonzero(delta)[0]
    kind = np.where(delta[where] > 0, "swap-out", "swap-in")
    return EventColumns(memory.time_s[where + 1], kind.astype(str),
                        np.abs(delta[where]).astype(np.float64), exact=False)


# ---- CSV readers ------------------------------------------------------------------------
def _rows(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(2, "missing from the run directory", str(path))
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header with "
                             f"{', '.join(required)}")
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {', '.join(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line} has {len(row)} fields, the header "
                                 f"has {len(header)}")
            rows.append(row)
    return header, rows


def _floats(path: Path, header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    j = header.index(name)
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        text = row[j].strip()
        if text == "":
            out[i] = math.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise ValueError(f"{path}: line {i + 2}, column {name!r}: expected a number, got "
                             f"{text[:40]!r}") from None
    return out


def _ints(path: Path, header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    values = _floats(path, header, rows, name)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: line {i + 2}, column {name!r}: expected an integer, got "
                         f"{rows[i][header.index(name)][:40]!r}")
    return values.astype(np.int64)


def _strings(header: list[str], rows: list[list[str]], name: str) -> np.ndarray:
    j = header.index(name)
    return np.asarray([row[j] for row in rows], dtype=object).astype(str) if rows \
        else np.zeros(0, dtype=str)


def _read_memory(path: Path) -> MemoryColumns:
    header, rows = _rows(path, MEMORY_COLUMNS)
    col = {c: _floats(path, header, rows, c) for c in MEMORY_COLUMNS}
    for name in OPTIONAL_MEMORY_FIELDS:
        col[name] = _floats(path, header, rows, name) if name in header \
            else np.zeros(len(rows))
    fractions = np.stack([col[f] for f in MEMORY_FIELDS], axis=1) if rows \
        else np.zeros((0, len(MEMORY_FIELDS)))
    tiers = None
    if all(c in header for c in TIER_COLUMNS):
        tiers = np.stack([_floats(path, header, rows, c) for c in TIER_COLUMNS], axis=1) \
            if rows else np.zeros((0, 2))
    return MemoryColumns(col["time_s"], fractions, col["running_seqs"], col["waiting"],
                         col["swapped"], col["prefix_hit_rate"], tiers)


def _read_replicas(root: Path, name: str) -> ReplicaColumns:
    """Each replica's series from `replicas_<name>.csv` (rows grouped by a `replica`
    column), and the in-flight samples of `load_<name>.csv` when present."""
    path = root / f"replicas_{name}.csv"
    header, rows = _rows(path, ("replica", *MEMORY_COLUMNS))
    index = _ints(path, header, rows, "replica")
    col = {c: _floats(path, header, rows, c) for c in (*MEMORY_COLUMNS, *MEMORY_FIELDS)
           if c in header}
    fractions = np.stack([col.get(f, np.zeros(len(rows))) for f in MEMORY_FIELDS], axis=1) \
        if rows else np.zeros((0, len(MEMORY_FIELDS)))
    memory = []
    for r in range(int(index.max()) + 1 if rows else 0):
        m = index == r
        memory.append(MemoryColumns(col["time_s"][m], fractions[m], col["running_seqs"][m],
                                    col["waiting"][m], col["swapped"][m],
                                    col["prefix_hit_rate"][m]))
    load = root / f"load_{name}.csv"
    if not load.is_file():
        return ReplicaColumns(memory, np.zeros(0), np.zeros((0, len(memory))))
    lh, lrows = _rows(load, ("time_s",))
    names = [c for c in lh if c.startswith("in_flight_")]
    in_flight = np.stack([_floats(load, lh, lrows, c) for c in names], axis=1) \
        if lrows and names else np.zeros((0, len(names)))
    return ReplicaColumns(memory, _floats(load, lh, lrows, "time_s"), in_flight)


def _read_requests(path: Path) -> RequestColumns:
    header, rows = _rows(path, REQUEST_COLUMNS)
    f = {c: _floats(path, header, rows, c)
         for c in ("arrival_s", "first_token_s", "finish_s", "ttft_s", "e2e_s")}
    i = {c: _ints(path, header, rows, c)
         for c in ("prompt_tokens", "output_tokens", "preemptions")}
    return RequestColumns(
        ids=_strings(header, rows, "id"), arrival_s=f["arrival_s"],
        prompt_tokens=i["prompt_tokens"], output_tokens=i["output_tokens"],
        first_token_s=f["first_token_s"], finish_s=f["finish_s"], ttft_s=f["ttft_s"],
        e2e_s=f["e2e_s"], preemptions=i["preemptions"],
        status=_strings(header, rows, "status"), reasons=_strings(header, rows, "reason"))


def _read_events(path: Path) -> EventColumns:
    header, rows = _rows(path, EVENT_COLUMNS)
    kind = _strings(header, rows, "kind")
    unknown = sorted(set(kind.tolist()) - set(EVENT_KINDS))
    if unknown:
        raise ValueError(f"{path}: column 'kind': unknown event kind {unknown[0][:40]!r}; "
                         f"expected one of {', '.join(EVENT_KINDS)}")
    return EventColumns(_floats(path, header, rows, "time_s"), kind,
                        _floats(path, header, rows, "count"), exact=True)
