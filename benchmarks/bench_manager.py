"""Time one decode step of the memory manager, and the memory of a large pool.

The scenarios live in `kvpager.bench.manager` (also run by `kvpager bench manager`); this
script runs them all and records the results in `benchmarks/results/manager.json`.

Usage: python benchmarks/bench_manager.py [--steps N] [--repeats R] [--no-record]
"""

from __future__ import annotations

import argparse

from kvpager.bench.manager import run

try:
    from benchmarks._common import record
except ImportError:  # run as a script from benchmarks/
    from _common import record  # type: ignore[no-redef]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    results = run(args.steps, args.repeats)
    for name, value in results.items():
        print(f"{name:>16}: {value}")
    if not args.no_record:
        print("recorded", record("manager", results))


if __name__ == "__main__":
    main()
