"""Benchmarks as a library, so that `kvpager bench ...` and `benchmarks/*.py` share them.

- `kvpager.bench.manager`: the memory manager's decode-step timings;
- `kvpager.bench.attention`: decode paged attention per backend against SDPA and a copy
  (`main(argv)` is the command line, `run_attention_benchmark(AttentionBenchConfig)` the
  library call), with an optional calibration file for the simulator;
- `kvpager.bench.record`: the result-file format (machine, versions, command, results);
- `kvpager.bench.timing`: CUDA-event and CPU timing helpers.

Importing this package imports nothing heavy; torch is imported when a kernel benchmark runs.
"""
