"""Simulator: replay request traces through the library's scheduler and memory managers.

Importing `kvpager.sim` needs only numpy; running a simulation needs SimPy (the `sim` extra).

    from kvpager.sim import SimConfig, simulate
    from kvpager.sim.traces import load_trace
    metrics = simulate(load_trace("trace.json"), SimConfig(model="llama-2-13b"))
"""

from kvpager.sim.config import DEFAULT_STRATEGIES, STRATEGIES, SimConfig


def simulate(*args, **kwargs):
    """`kvpager.sim.run.simulate` (imported on first use: it needs SimPy)."""
    from kvpager.sim.run import simulate as _simulate

    return _simulate(*args, **kwargs)


__all__ = ["DEFAULT_STRATEGIES", "STRATEGIES", "SimConfig", "simulate"]
