"""A seeded, time-bounded mutation fuzzer of the trace readers and `kvpager simulate`.

Each case mutates a small valid trace of one format (text-level: bytes, lines, numbers,
nesting; or record-level: one field set to an extreme or ill-typed value), writes it, and
checks the contract of issue 12:

- `load_trace` (auto-detected, and with the format named) returns a `Trace` or raises
  `TraceError` whose message starts with the file name; a loaded trace also summarizes,
  without numpy warnings (an overflow is a wrong number);
- `kvpager simulate` on it (every `cli_every`-th case, tiny and fast) exits 0 or 2, never
  1, prints no traceback, and its error line names the file.

Anything else is a finding: (case, format, mutation, what happened), reproducible from the
seed and the case number (`--case N` re-creates one file).

    python tools/fuzz_traces.py --seconds 300 --seed 1     # by hand, minutes
    python tools/fuzz_traces.py --case 1234 --seed 1 --keep /tmp/case.json

The test suite runs it for a few seconds (tests/sim/test_trace_fuzz.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

EXTREMES: list[object] = [
    0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1,
    10**400, 10**4000, 1e308, -0.0, 0.5, 1e-320, float("inf"), float("nan"), True, False,
    None, "", "12", "²", "١٢", [], [1], {}, {"a": 1}, [[[[[]]]]], "x" * 1000,
]
NUMBER_TEXTS = ["0", "-1", "9" * 19, "9223372036854775808", "9" * 5000, "1e999", "NaN",
                "-Infinity", "1.5", "²", "١", "1_000", "+5", " 7 ", "0x10", "", "1e5"]


def _seeds() -> dict[str, str]:
    """One small valid trace per format (a few records, every optional feature)."""
    kv = [
        {"arrival_time": 0.0, "prompt_tokens": 40, "output_tokens": 5, "id": "a"},
        {"arrival_time": 0.5, "prompt_tokens": 64, "output_tokens": 3, "n": 2,
         "prefix_group": "sys", "prefix_tokens": 32},
        {"arrival_time": 1.0, "prompt_tokens": 48, "output_tokens": 4, "beam_width": 2,
         "block_hashes": [7, 8], "hash_block_size": 32},
        {"arrival_time": 1.2, "prompt_tokens": 6, "output_tokens": 2,
         "prompt_token_ids": [1, 2, 3, 4, 5, 6]},
    ]
    moon = [{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [1, 2]},
            {"timestamp": 250, "input_length": 300, "output_length": 2, "hash_ids": [1]}]
    toks = [{"arrival_time_ns": 0, "input_toks": 4, "output_toks": 2,
             "input_tok_ids": [5, 6, 7, 8], "output_tok_ids": [1, 2]},
            {"arrival_time_ns": 10**8, "input_toks": 3, "output_toks": 1,
             "input_tok_ids": [5, 6, 7], "output_tok_ids": [3]}]
    return {
        "kvpager.json": json.dumps(kv, indent=1),
        "kvpager-requests.json": json.dumps({"requests": kv}),
        "kvpager.jsonl": "".join(json.dumps(r) + "\n" for r in kv),
        "mooncake.jsonl": "".join(json.dumps(r) + "\n" for r in moon),
        "tokens.jsonl": "".join(json.dumps(r) + "\n" for r in toks),
        "azure.csv": "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:15:46.6805900,374,44\n"
                     "2023-11-16 18:15:50.0000000,120,9\n"
                     "2023-11-16 18:15:51.5,80,3\n",
        "lengths.csv": "num_prefill_tokens,num_decode_tokens,other\n100,20,x\n30,4,y\n",
    }


SEEDS = _seeds()


# ---- mutations ----------------------------------------------------------------------------
def _flip_bytes(rng: random.Random, text: str) -> str:
    data = bytearray(text.encode("utf-8"))
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return data.decode("utf-8", errors="surrogateescape")


def _lines(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    op = rng.choice(["drop", "dup", "swap", "blank", "cut"])
    if op == "drop":
        del lines[i]
    elif op == "dup":
        lines.insert(i, lines[i])
    elif op == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif op == "blank":
        lines.insert(i, rng.choice(["", "   ", "\r", "\ufeff"]))
    else:
        lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    return "\n".join(lines)


def _number(rng: random.Random, text: str) -> str:
    import re

    spots = [m.span() for m in re.finditer(r"-?[0-9][0-9.e+-]*", text)]
    if not spots:
        return text
    lo, hi = rng.choice(spots)
    return text[:lo] + rng.choice(NUMBER_TEXTS) + text[hi:]


def _nest(rng: random.Random, text: str) -> str:
    depth = rng.choice([50, 1000, 100_000])
    payload = rng.choice(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth])
    if text.lstrip().startswith("["):
        return "[" + payload + "," + text.lstrip()[1:]
    return text + payload + "\n"


def _truncate(rng: random.Random, text: str) -> str:
    return text[: rng.randrange(len(text) + 1)]


def _record_field(rng: random.Random, text: str) -> str:
    """One field of one record (JSON formats) or one cell (CSV) set to an extreme value."""
    if text.startswith(("TIMESTAMP", "num_")):
        lines = text.split("\n")
        row = rng.randrange(1, len(lines) - 1)
        cells = lines[row].split(",")
        col = rng.randrange(len(cells))
        cells[col] = rng.choice(NUMBER_TEXTS + ["1677-09-21 00:00:00", "2262-04-12 00:00:00",
                                                "9999-12-31 23:59:59.9999999", "2023-02-30 1:2:3"])
        lines[row] = ",".join(cells)
        return "\n".join(lines)
    jsonl = not text.lstrip().startswith(("[", '{"requests"'))
    if jsonl:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        doc = json.loads(text)
        records = doc["requests"] if isinstance(doc, dict) else doc
    rec = rng.choice(records)
    fields = list(rec) + ["n", "beam_width", "prefix_group", "prefix_tokens", "block_hashes",
                          "hash_block_size", "prompt_token_ids", "id"]
    key = rng.choice(fields)
    value = rng.choice(EXTREMES)
    if isinstance(rec.get(key), list) and rng.random() < 0.5 and rec[key]:
        rec[key] = list(rec[key])
        rec[key][rng.randrange(len(rec[key]))] = value
    else:
        rec[key] = value
    dump = json.dumps  # allow_nan: NaN / Infinity spelled as Python's json reads them
    if jsonl:
        return "".join(dump(r) + "\n" for r in records)
    return dump({"requests": records} if isinstance(doc, dict) else records)


MUTATIONS = {"flip": _flip_bytes, "lines": _lines, "number": _number, "nest": _nest,
             "truncate": _truncate, "field": _record_field}


@dataclass
class Case:
    index: int
    seed_name: str
    mutations: list[str]
    text: str


def make_case(seed: int, index: int) -> Case:
    """Case `index` of fuzz run `seed`: the same file every time."""
    rng = random.Random(f"{seed}:{index}")
    name = rng.choice(sorted(SEEDS))
    text = SEEDS[name]
    applied = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutation = rng.choice(sorted(MUTATIONS))
        try:
            text = MUTATIONS[mutation](rng, text)
        except (ValueError, IndexError, KeyError, TypeError, AttributeError, RecursionError):
            continue  # an earlier mutation left nothing this one can work on
        applied.append(mutation)
    return Case(index, name, applied, text)


# ---- checks -------------------------------------------------------------------------------
def check_load(path: Path) -> list[str]:
    """Problems of the library on one file (empty when it honours the contract)."""
    from kvpager.sim.traces import (
        FORMATS,
        PoissonArrivals,
        TraceError,
        detect_format,
        load_trace,
        summarize,
    )

    problems = []
    name = str(path)
    calls = [("auto", {}), ("auto+arrivals", {"arrivals": PoissonArrivals(2.0, seed=0)})]
    calls += [(f, {"format": f, "arrivals": PoissonArrivals(2.0, seed=0)}) for f in FORMATS]
    for label, kwargs in calls:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an overflow warning is a wrong number
                trace = load_trace(name, **kwargs)
                summarize(trace, block_size=16)
        except TraceError as exc:
            if not str(exc).startswith(name):
                problems.append(f"load[{label}]: message does not start with the file: {exc}")
        except Exception as exc:  # every other exception is a finding
            problems.append(f"load[{label}]: {type(exc).__name__}: {exc}"[:300] + "\n"
                            + "".join(traceback.format_exc(limit=-3))[-800:])
    try:
        detect_format(name)
    except TraceError:
        pass
    except Exception as exc:
        problems.append(f"detect_format: {type(exc).__name__}: {exc}"[:300])
    return problems


def check_cli(path: Path, out: Path, retime: bool) -> list[str]:
    """Problems of `kvpager simulate` (the file's own arrival times, or re-timed by
    --arrival-rate, which length-only CSVs need) and `kvpager trace info` on one file:
    exit 1, a traceback, a warning, or an error line that does not name the file."""
    from typer.testing import CliRunner

    from kvpager.cli.app import app

    runs = [["simulate", str(path), "--cache", "paged", "--cache", "orca-max", "--limit", "6",
             "--prefix-caching", "--out", str(out)] + (["--arrival-rate", "2"] if retime else []),
            ["trace", "info", str(path)]]
    problems = []
    for args in runs:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = CliRunner().invoke(app, args)
        text, what = result.output, " ".join(args[:2])
        if result.exit_code not in (0, 2):
            problems.append(f"{what} exit {result.exit_code}: {text.strip()[-400:]}")
        if "Traceback" in text or "Warning" in text or (
                result.exc_info and result.exc_info[0] is not SystemExit):
            problems.append(f"{what} traceback or warning: {text.strip()[-400:]}")
        if result.exit_code == 2 and path.name not in text:
            problems.append(f"{what} message does not name the file: {text.strip()[-400:]}")
    return problems


def fuzz(seed: int = 0, seconds: float = 3.0, cli_every: int = 10,
         max_cases: int | None = None, workdir: Path | None = None) -> tuple[int, list[dict]]:
    """Run cases 0, 1, 2, ... of `seed` until `seconds` pass (or `max_cases`); returns
    (cases run, findings)."""
    findings: list[dict] = []
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory(prefix="kvp-fuzz-", dir=workdir) as tmp:
        root = Path(tmp)
        index = 0
        while time.monotonic() < deadline and (max_cases is None or index < max_cases):
            case = make_case(seed, index)
            suffix = Path(case.seed_name).suffix
            path = root / f"case{index}{suffix}"
            path.write_bytes(case.text.encode("utf-8", errors="surrogateescape"))
            problems = check_load(path)
            if index % cli_every == 0:
                problems += check_cli(path, root / f"run{index}",
                                      retime=index % (2 * cli_every) == 0)
            for problem in problems:
                findings.append({"case": index, "seed_file": case.seed_name,
                                 "mutations": case.mutations, "problem": problem})
            path.unlink()
            index += 1
    return index, findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cli-every", type=int, default=10,
                        help="run `kvpager simulate` on every N-th case")
    parser.add_argument("--case", type=int, help="write case N to --keep and check only it")
    parser.add_argument("--keep", type=Path, help="where --case writes its file")
    args = parser.parse_args(argv)
    if args.case is not None:
        case = make_case(args.seed, args.case)
        target = args.keep or Path(f"case{args.case}{Path(case.seed_name).suffix}")
        target.write_bytes(case.text.encode("utf-8", errors="surrogateescape"))
        print(f"case {args.case}: {case.seed_name} + {case.mutations} -> {target}")
        out = Path(tempfile.mkdtemp())
        problems = check_load(target) + check_cli(target, out / "a", retime=False) + \
            check_cli(target, out / "b", retime=True)
        for problem in problems:
            print("  ", problem)
        return 0
    cases, findings = fuzz(args.seed, args.seconds, args.cli_every)
    for f in findings:
        print(json.dumps(f))
    print(f"{cases} cases, {len(findings)} findings (seed {args.seed})", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
