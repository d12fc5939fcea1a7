"""Simulator: SimPy engine, cost model, cache strategies, traces and metrics."""
