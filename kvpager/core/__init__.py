"""The library's core, numpy only: the memory layer, the scheduling layer, and what they share.

- `kvpager.core.memory`: block pools, block tables, copy-on-write, swapping, prefix caching
  and the manager that answers with plans (vLLM v1's `core/`, SGLang's `mem_cache/`).
- `kvpager.core.sched`: requests, continuous batching and preemption over any manager that
  keeps the `kvpager.core.protocol.KVManager` contract (vLLM v1's `core/sched/`).
- Shared by both: `config` (CacheConfig, SchedulerConfig), `plans` (what a manager answers),
  `protocol` (the scheduler's contract with a manager), `rows` (per-sequence columns) and
  `errors`.

Nothing under `kvpager.core` imports torch, Triton, SimPy or Plotly; the scheduling layer
imports nothing from the memory layer (tests/test_imports.py checks both). The torch-bound
parts (`kvpager.ops`, `kvpager.cache`, `kvpager.backends`) live outside it.
"""
