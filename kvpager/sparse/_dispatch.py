"""Which implementation runs a sparse op: the pure-torch reference or the Triton kernels.

The sparse ops are not methods of `kvpager.backends.base.Backend` (the CUDA backend does
not have them yet), so they carry their own two-way choice, with the same rules as the
registry: `backend="auto"` first reads `$KVPAGER_BACKEND` (used only when it names one of
the choices here, so `KVPAGER_BACKEND=cuda` leaves these ops on auto); auto means the
reference on a CPU device, because the Triton interpreter is a correctness tool hundreds of
times slower than torch, and Triton on a CUDA device when Triton imports. A backend named
explicitly that cannot serve the call raises instead of being swapped for another.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kvpager.backends import ENV_VAR, BackendUnavailableError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
REFERENCE = "reference"
TRITON = "triton"
CHOICES = (AUTO, REFERENCE, TRITON)

_triton_import_error: list[str | None] = []


def _triton_import_reason() -> str | None:
    """Why `import triton` fails here, or None; computed once because imports are slow."""
    if not _triton_import_error:
        try:
            import triton.language  # noqa: F401  (imports triton too)
        except ImportError as exc:
            _triton_import_error.append(f"cannot import triton: {exc}")
        else:
            _triton_import_error.append(None)
    return _triton_import_error[0]


def triton_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on tensors on `device`, or None when they can."""
    reason = _triton_import_reason()
    if reason is not None:
        return reason
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before import)"
    return f"Triton cannot run on {device.type} tensors"


def select_backend(backend: object, device: torch.device) -> str:
    """"reference" or "triton" for one call on `device`; raises for a bad or unusable name."""
    if not isinstance(backend, str) or backend not in CHOICES:
        raise BackendUnavailableError(
            f"backend must be one of {', '.join(CHOICES)}; got {backend!r}"
        )
    if backend == AUTO:
        env = os.environ.get(ENV_VAR, "")
        if env in CHOICES:
            backend = env
    if backend == AUTO:
        if device.type != "cuda":
            return REFERENCE
        return TRITON if triton_reason(device) is None else REFERENCE
    if backend == TRITON:
        reason = triton_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"backend 'triton' cannot run this call: {reason}")
    return backend
