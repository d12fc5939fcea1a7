"""kvpager: the KV cache of LLM serving managed like virtual memory.

Importing this package needs only numpy: torch, Triton, SimPy and Plotly are imported by the
parts that use them (kernels, `KVCache`, the simulator, reports), never here.
"""

from kvpager.core.errors import (
    DoubleFreeError,
    DuplicateSequenceError,
    KVPagerError,
    OutOfBlocksError,
    UnknownBlockError,
    UnknownSequenceError,
    WrongDeviceError,
)

__version__ = "0.1.0"

__all__ = [
    "DoubleFreeError",
    "DuplicateSequenceError",
    "KVPagerError",
    "OutOfBlocksError",
    "UnknownBlockError",
    "UnknownSequenceError",
    "WrongDeviceError",
    "__version__",
]
