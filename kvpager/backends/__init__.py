"""Lazy registry of kernel backends.

Importing this package imports no backend and no torch: a backend module is imported the first
time it is asked for, and a backend that cannot run here (no Triton, no GPU, no nvcc) is
reported with the reason instead of raising at import.

Each backend module defines `BACKEND`, an instance of `kvpager.backends.base.Backend`.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from kvpager.backends.base import Backend

#: Backend name -> module that defines `BACKEND`, in the order "auto" tries them.
_MODULES: dict[str, str] = {
    "cuda": "kvpager.backends.cuda",
    "triton": "kvpager.backends.triton",
    "reference": "kvpager.backends.reference",
}
AUTO = "auto"
ENV_VAR = "KVPAGER_BACKEND"

_loaded: dict[str, Backend | str] = {}


class BackendUnavailableError(ValueError):
    """An unknown backend name, or one that cannot run here; the message lists the options."""


def names() -> list[str]:
    """Every backend kvpager knows, available here or not, in auto-selection order."""
    return list(_MODULES)


def _load(name: str) -> Backend | str:
    """The backend object, or a one-line reason why it cannot be used on this machine."""
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name])
            backend = module.BACKEND
            reason = backend.unavailable_reason()
            _loaded[name] = backend if reason is None else reason
        except ImportError as exc:  # a missing optional dependency is a reason, not a crash
            _loaded[name] = f"cannot import {_MODULES[name]}: {exc}"
    return _loaded[name]


def _reason(name: str) -> str | None:
    backend = _load(name)
    if isinstance(backend, str):
        return backend
    try:
        return backend.usable_reason()
    except Exception as exc:  # a listing must not raise
        return f"cannot tell whether it is usable here: {type(exc).__name__}: {exc}"


def status() -> dict[str, str | None]:
    """Backend name -> None when it is usable here as things stand, else the reason why not
    (a missing package, no GPU, Triton on a CPU without TRITON_INTERPRET=1, ...)."""
    return {name: _reason(name) for name in _MODULES}


def available() -> list[str]:
    """Names of the backends usable on this machine as things stand, in auto-selection order:
    each can run some call here (a backend listed may still refuse a particular device or
    configuration; the error says why). `status()` gives the reason for the others."""
    return [name for name, reason in status().items() if reason is None]


def _explain(extra: str = "") -> str:
    lines = [f"{name}: {'available' if r is None else 'unavailable (' + r + ')'}"
             for name, r in status().items()]
    return (extra + "; " if extra else "") + "backends: " + "; ".join(lines)


def get(name: str) -> Backend:
    """The backend called `name`; raises `BackendUnavailableError` saying what is available."""
    if name not in _MODULES:
        raise BackendUnavailableError(
            _explain(f"unknown backend {name!r} (choose from {', '.join([AUTO, *_MODULES])})")
        )
    backend = _load(name)
    if isinstance(backend, str):
        raise BackendUnavailableError(_explain(f"backend {name!r} is unavailable: {backend}"))
    return backend


def default_name() -> str:
    """The backend name used when a call passes `backend="auto"`: `$KVPAGER_BACKEND` or auto."""
    return os.environ.get(ENV_VAR, AUTO) or AUTO


def resolve(
    name: str | None,
    device: torch.device,
    *,
    head_size: int | None = None,
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    kv_cache_dtype: str = "auto",
    mla: bool = False,
) -> Backend:
    """Pick the backend for one call.

    `name` None or "auto" (after `$KVPAGER_BACKEND`) takes the first backend, in the order
    cuda, triton, reference, that runs here, accepts `device` and (when given) the attention
    configuration. On a CPU device auto means the reference backend: the Triton interpreter is
    a correctness tool, hundreds of times slower than torch, and is used only when asked for by
    name. A named backend that cannot serve the call raises; it is never swapped for another.
    `mla`: the call is `paged_mla_decode`, which only some backends implement.
    """
    if name is None or name == AUTO:
        name = default_name()
    def reason_for(backend: Backend) -> str | None:
        reason = backend.device_reason(device)
        if reason is None and mla:
            reason = backend.mla_reason()
        if reason is None and head_size is not None and block_size is not None and (
                dtype is not None):
            reason = backend.capability_reason(
                head_size=head_size, block_size=block_size, dtype=dtype,
                kv_cache_dtype=kv_cache_dtype,
            )
        return reason

    if name != AUTO:
        backend = get(name)
        reason = reason_for(backend)
        if reason is not None:
            raise BackendUnavailableError(
                _explain(f"backend {name!r} cannot run this call: {reason}")
            )
        return backend

    candidates = ["reference"] if device.type == "cpu" else list(_MODULES)
    why_not: list[str] = []
    for candidate in candidates:
        loaded = _load(candidate)
        if isinstance(loaded, str):
            why_not.append(f"{candidate}: {loaded}")
            continue
        backend = loaded
        reason = reason_for(backend)
        if reason is None:
            return backend
        why_not.append(f"{candidate}: {reason}")
    raise BackendUnavailableError(
        f"no backend can run this call on {device}: " + "; ".join(why_not)
    )


__all__ = [
    "AUTO",
    "ENV_VAR",
    "BackendUnavailableError",
    "available",
    "default_name",
    "get",
    "names",
    "resolve",
    "status",
]
