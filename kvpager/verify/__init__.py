"""GPU verification in one command that fits a short device lease (benchmarks/gpu_verify.py).

- `matrix`: the paged-attention case matrix (shared with tests/backends), its covering order,
  reference comparison and NaN poisoning of unused cache slots;
- `journal`: results.jsonl, flushed per event, and the time budget;
- `runner`: the step loop (estimates, skips, errors kept per step, SIGTERM) and summary.json;
- `supervisor`: runs the steps in a worker process and resumes after a crash or a lost GPU
  context;
- `plan`: the steps in priority order and their size settings (GPU or `--dry-run` on CPU);
- `steps_*`, `speed`, `sanitizer`, `hf_reference`: what the steps do.

Nothing here is imported by `import kvpager`; torch is imported by the steps that need it.
"""
