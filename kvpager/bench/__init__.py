"""Benchmarks runnable from the installed package (`kvpager bench ...`).

`kvpager.bench.manager`: the memory manager's decode-step timings. Kernel benchmarks live
beside it when installed (`kvpager.bench.attention`).
"""
