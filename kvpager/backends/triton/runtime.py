"""How the Triton kernels run in this process: compiled for a GPU, or interpreted on the CPU.

Triton decides when a kernel module is imported: `@triton.jit` returns an interpreted
function if `TRITON_INTERPRET=1` is set at that moment, a compiled one otherwise, and the
choice cannot change afterwards. The backend therefore records the mode when it imports its
kernels, and `device_reason` judges CPU tensors by that record, not by the variable's value
now.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    Scale = float | torch.Tensor

INTERPRET_ENV = "TRITON_INTERPRET"

_state: dict[str, object] = {}


def import_error() -> str | None:
    """Why `import triton` fails here, or None; computed once (the import is slow)."""
    if "import_error" not in _state:
        try:
            import triton.language  # noqa: F401  (imports triton too)
        except ImportError as exc:
            _state["import_error"] = f"cannot import triton: {exc}"
        else:
            _state["import_error"] = None
    return _state["import_error"]  # type: ignore[return-value]


def kernels_imported() -> None:
    """Record the mode in which the kernel modules were just imported."""
    _state.setdefault("interpreted", interpret_requested())


def interpret_requested() -> bool:
    return os.environ.get(INTERPRET_ENV) == "1"


def interpreted() -> bool:
    """True when the kernels run (or, not imported yet, will run) in the interpreter."""
    if "interpreted" in _state:
        return bool(_state["interpreted"])
    return interpret_requested()


def cpu_reason() -> str | None:
    """Why the kernels cannot take CPU tensors in this process, or None when they can."""
    if interpreted():
        return None
    if "interpreted" in _state and interpret_requested():
        return ("the Triton kernels were imported before TRITON_INTERPRET=1 was set; they "
                "run on CPU tensors only when it is set before the first Triton call")
    return ("Triton runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
            "before the first Triton call (a correctness tool, far slower than the "
            "reference backend)")


def scale_argument(scale: Scale, device: torch.device) -> tuple[float | torch.Tensor, bool]:
    """(kernel argument, is a pointer) for k_scale / v_scale.

    A float is passed by value. A tensor scale stays a tensor, so the kernel reads it on the
    device and the call never waits for the GPU (and can be captured in a CUDA graph); a CPU
    tensor is copied to the cache's device first.
    """
    import torch

    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(1)
        if scale.device != device:
            scale = scale.to(device, non_blocking=True)
        return scale, True
    return float(scale), False


def scale_arguments(
    fp8: bool, k_scale: Scale, v_scale: Scale, device: torch.device
) -> tuple[float | torch.Tensor, bool, float | torch.Tensor, bool]:
    """(k argument, k is a pointer, v argument, v is a pointer) of a kernel launch: the
    scales as `scale_argument` passes them for an FP8 cache, 1.0 by value for an "auto" one
    (which ignores them)."""
    if not fp8:
        return 1.0, False, 1.0, False
    return (*scale_argument(k_scale, device), *scale_argument(v_scale, device))


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


__all__ = [
    "INTERPRET_ENV",
    "cpu_reason",
    "import_error",
    "interpret_requested",
    "interpreted",
    "kernels_imported",
    "next_power_of_2",
    "scale_argument",
    "scale_arguments",
]
