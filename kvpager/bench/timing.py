"""Timing GPU kernels so that the figure is the kernel's, not Python's or the L2 cache's.

On CUDA (`time_cuda`):
- the call is captured once in a CUDA graph when it allows it (Triton, CUDA, SDPA, copies:
  no host sync), so replaying it costs a few microseconds of CPU and the GPU never waits
  for Python to launch the next kernel; calls that sync (the reference backend) are timed
  eagerly and the record says so;
- before each timed call a buffer twice the size of the largest L2 (256 MiB) is zeroed, so
  small shapes are read from HBM as in a real decode step, where the previous layer's
  weights have long evicted this layer's KV cache;
- start and end are CUDA events around that one call; the median of the repeats is the
  figure, after warm-up calls that also compile and autotune.
On the CPU (`time_cpu`): `time.perf_counter` around each call, median of the repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Bytes zeroed between timed calls: more than any GPU's L2 (H100 50 MiB, H200 60 MiB,
#: B200 126 MiB) and long enough (~50 us at 5 TB/s) to cover a kernel launch.
FLUSH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, minimum and the number of timed repeats; `method` says how
    ("cuda-graph" or "cuda-eager" with L2 flushed, or "cpu")."""

    median_s: float
    min_s: float
    repeats: int
    method: str

    def as_dict(self) -> dict:
        return {"us_per_call": round(self.median_s * 1e6, 3),
                "us_per_call_min": round(self.min_s * 1e6, 3),
                "repeats": self.repeats, "timing": self.method}


def time_cpu(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5) -> Timing:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), repeats, "cpu")


def _capture(fn: Callable[[], object]):
    """A CUDA graph of one call of `fn`, or None when the call cannot be captured."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            fn()
    except RuntimeError:  # a host sync or an allocation the capture refuses
        torch.cuda.synchronize()
        return None
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    return graph


def time_cuda(
    fn: Callable[[], object], *, warmup: int = 3, repeats: int = 20, use_graph: bool = True,
    flush: torch.Tensor | None = None,
) -> Timing:
    """Median seconds of one call of `fn` on the current CUDA device (see module docstring).

    flush: a preallocated uint8 CUDA tensor to zero between calls (FLUSH_BYTES by default).
    """
    import torch

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(max(warmup, 1)):  # at least one call outside any capture: compiles
        fn()
    torch.cuda.synchronize()
    graph = _capture(fn) if use_graph else None
    run = graph.replay if graph is not None else fn
    if flush is None:
        flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends, strict=True):
        flush.zero_()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends, strict=True)]
    method = "cuda-graph" if graph is not None else "cuda-eager"
    return Timing(statistics.median(times), min(times), repeats, method + ", L2 flushed")


__all__ = ["FLUSH_BYTES", "Timing", "time_cpu", "time_cuda"]
