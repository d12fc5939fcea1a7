"""Decode paged-attention benchmark: `kvpager.bench.attention` as a script.

Usage (on a GPU machine; `--help` lists every option):
    python benchmarks/bench_attention.py                       # the full grid
    python benchmarks/bench_attention.py --preset targets --calibration cal.json
    python benchmarks/bench_attention.py --preset tiny --device cpu --no-record
Results go to benchmarks/results/attention_<gpu>.json unless --out says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kvpager.bench.attention import main

if __name__ == "__main__":
    sys.exit(main(results_dir=Path(__file__).resolve().parent / "results"))
