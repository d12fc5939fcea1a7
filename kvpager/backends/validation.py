"""Argument checks shared by every op: the error type, static checks, batched data checks.

Two kinds of checks run before any kernel:

- *static* checks look only at Python values and tensor metadata (dtype, shape, strides,
  device). They cost microseconds, never touch tensor data, and also run inside the fake
  (meta) implementations that `torch.compile` traces.
- *data* checks look at tensor contents (block ids, sequence lengths, slots, tensor scales).
  On a GPU reading a result back to the host waits for the device, so `DataChecks` builds
  every condition on the device first and reads them back with one transfer per device: a
  call costs one device->host sync, or none when the caller passes `check_indices=False`.
  On CPU tensors there is nothing to wait for.

A failed check raises `OpArgumentError` (a `ValueError`) whose message starts with the name
of the argument, before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeGuard

from kvpager.core.errors import KVPagerError

if TYPE_CHECKING:
    import torch


class OpArgumentError(KVPagerError, ValueError):
    """An op argument with a wrong type, dtype, shape, device or value.

    `argument` holds the parameter's name as the op spells it (e.g. "block_tables").
    """

    def __init__(self, argument: str, problem: str) -> None:
        self.argument = argument
        super().__init__(f"{argument} {problem}")


def fail(argument: str, problem: str) -> OpArgumentError:
    """The error to raise: `raise fail("seq_lens", "must be int32, got torch.int64")`."""
    return OpArgumentError(argument, problem)


# ---- static checks -----------------------------------------------------------------------
def is_int(value: object) -> TypeGuard[int | torch.SymInt]:
    """A Python int (not a bool) or a symbolic int from `torch.compile` tracing."""
    import torch

    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(
        value, torch.SymInt
    )


#: Largest value of the int32 that kernels keep sizes, lengths and ids in.
INT32_MAX = 2**31 - 1


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = INT32_MAX
) -> int | torch.SymInt:
    """An int (not a bool) in [minimum, maximum], returned. The default maximum is INT32_MAX:
    kernels hold these values in 32-bit registers, so a larger one would wrap there silently."""
    if not is_int(value):
        raise fail(name, f"must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise fail(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise fail(name, f"must be <= {maximum}, got {value}")
    if minimum is None and maximum is not None and value < -maximum:
        raise fail(name, f"must be >= {-maximum}, got {value}")
    return value


def check_float(name: str, value: object) -> float:
    """A real number (int or float, not a bool) that converts to a float without overflow."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(name, f"must be a float, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise fail(name, f"must fit a float, got an int of {len(str(abs(value)))} "
                         f"digits") from None


def check_real_device(name: str, device: torch.device) -> None:
    """Refuse the meta device where an op must compute: it holds no data to read or write
    (meta tensors do trace through `torch.ops.kvpager.*`, whose fake implementations run
    only the static checks)."""
    if device.type == "meta":
        raise fail(name, "is on the meta device, which holds no data; the ops compute on "
                         "real tensors (meta tensors only trace through torch.ops.kvpager)")


def check_tensor(name: str, value: object) -> torch.Tensor:
    import torch

    if not isinstance(value, torch.Tensor):
        raise fail(name, f"must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise fail(name, f"must have dtype {names}; got {str(t.dtype).removeprefix('torch.')}")


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    """`meaning` spells the dimensions, e.g. "[num_seqs, num_heads, head_size]"."""
    if tuple(t.shape) != tuple(expected):
        raise fail(name, f"must have shape {meaning} = {tuple(expected)}, got {tuple(t.shape)}")


def check_ndim(name: str, t: torch.Tensor, ndim: int, meaning: str) -> None:
    if t.dim() != ndim:
        raise fail(name, f"must be a {ndim}-d tensor {meaning}, got shape {tuple(t.shape)}")


def check_device(name: str, t: torch.Tensor, device: torch.device, other: str) -> None:
    if t.device != device:
        raise fail(name, f"is on {t.device} but {other} is on {device}")


def packed_after(t: torch.Tensor, first: int) -> bool:
    """True when dims `first`.. are laid out contiguously (row-major, no gaps).

    Kernels index those dims with arithmetic on the shape, so only the strides of the leading
    dims (a block stride, a row stride) may be free. Dims of size 1 have no meaningful stride,
    and neither has a tensor without elements (torch gives an empty [4, 0] the strides
    (1, 1)): nothing of it is ever read, so it counts as packed.
    """
    if t.numel() == 0:
        return True
    expected = 1
    for dim in range(t.dim() - 1, first - 1, -1):
        size = t.shape[dim]
        if size != 1 and t.stride(dim) != expected:
            return False
        expected *= size
    return True


def check_packed(name: str, t: torch.Tensor, first: int, why: str) -> None:
    if not packed_after(t, first):
        raise fail(name, f"must be contiguous {why}; got shape {tuple(t.shape)} and strides "
                         f"{tuple(t.stride())} (call .contiguous())")


def check_scale(name: str, value: object, device: torch.device) -> None:
    """A float > 0, or a float32 tensor of one element (0-d or [1]) on `device` or the CPU.

    A tensor's value is checked among the data checks (`check_scale_values`).
    """
    import torch

    if isinstance(value, bool):
        raise fail(name, f"must be a float or a 0-d float32 tensor, got {value!r}")
    if isinstance(value, (int, float)):
        value = check_float(name, value)
        if not math.isfinite(value) or value <= 0:
            raise fail(name, f"must be finite and > 0, got {value!r}")
        return
    if not isinstance(value, torch.Tensor):
        raise fail(name, f"must be a float or a 0-d float32 tensor, got {type(value).__name__}")
    if value.dtype != torch.float32:
        raise fail(name, f"must be a float32 tensor, got {str(value.dtype).removeprefix('torch.')}")
    if value.dim() > 1 or value.numel() != 1:
        raise fail(name, f"must hold one value (shape [] or [1]), got shape {tuple(value.shape)}")
    if value.device.type != "cpu" and value.device != device:
        raise fail(name, f"is on {value.device}; it must be on {device} or the CPU")


def same_tensor_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two tensors may share memory (same storage), used to refuse aliasing."""
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # fake tensors under tracing have no storage
        return False


# ---- data checks -------------------------------------------------------------------------
class DataChecks:
    """Conditions on tensor contents, evaluated on their devices and read back together.

    `require(ok, argument, explain)` takes a 0-d bool tensor and a function that builds the
    message; the message is computed (with further syncs) only when the check fails, so the
    passing path costs a single transfer per device in `verify()`.
    """

    def __init__(self) -> None:
        self._items: list[tuple[torch.Tensor, str, Callable[[], str]]] = []

    def require(self, ok: torch.Tensor, argument: str, explain: Callable[[], str]) -> None:
        self._items.append((ok.reshape(()), argument, explain))

    def verify(self) -> None:
        import torch

        if not self._items:
            return
        flags: list[bool | None] = [None] * len(self._items)
        by_device: dict[torch.device, list[int]] = {}
        for index, (ok, _, _) in enumerate(self._items):
            by_device.setdefault(ok.device, []).append(index)
        for indices in by_device.values():
            values = torch.stack([self._items[i][0] for i in indices]).tolist()
            for i, value in zip(indices, values, strict=True):
                flags[i] = bool(value)
        for flag, (_, argument, explain) in zip(flags, self._items, strict=True):
            if not flag:
                raise fail(argument, explain())


def first_index(mask: torch.Tensor) -> tuple[int, ...]:
    """Index of the first True element of `mask` (only called on the failure path)."""
    return tuple(int(i) for i in mask.nonzero()[0].tolist())


def check_scale_values(checks: DataChecks, name: str, value: object) -> None:
    """Queue the `> 0 and finite` check of a tensor scale (floats were checked statically)."""
    import torch

    if isinstance(value, torch.Tensor):
        ok = torch.isfinite(value).all() & (value > 0).all()
        checks.require(ok, name, lambda: f"must be finite and > 0, got {value.reshape(()).item()}")


def check_block_pairs(
    checks: DataChecks,
    name: str,
    block_mapping: torch.Tensor,
    src_blocks: int,
    dst_blocks: int,
    *,
    disjoint: bool,
) -> None:
    """Queue the checks of a [n, 2] (src, dst) mapping: ids in range, distinct destinations.

    Destinations must be distinct because backends copy pairs in parallel, so two pairs that
    write one block would race. With `disjoint` (copies inside one cache) no block may be both
    a source and a destination, for the same reason.
    """
    import torch

    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    for column, ids, limit in (("source", src, src_blocks), ("destination", dst, dst_blocks)):
        bad = (ids < 0) | (ids >= limit)

        def explain(
            bad: torch.Tensor = bad, ids: torch.Tensor = ids, column: str = column,
            limit: int = limit,
        ) -> str:
            row = first_index(bad)[0]
            return f"row {row} has {column} block {int(ids[row])}, outside 0..{limit - 1}"

        checks.require(~bad.any(), name, explain)
    if dst.numel() > 1:
        ordered = torch.sort(dst).values
        repeated = ordered[1:] == ordered[:-1]
        checks.require(
            ~repeated.any(), name,
            lambda: f"writes destination block {int(ordered[1:][repeated][0])} more than once",
        )
    if disjoint and src.numel() > 0:
        both = torch.isin(dst, src)
        checks.require(
            ~both.any(), name,
            lambda: f"uses block {int(dst[both][0])} both as a source and as a destination",
        )


__all__ = [
    "INT32_MAX",
    "DataChecks",
    "OpArgumentError",
    "check_block_pairs",
    "check_device",
    "check_dtype",
    "check_float",
    "check_int",
    "check_ndim",
    "check_packed",
    "check_real_device",
    "check_scale",
    "check_scale_values",
    "check_shape",
    "check_tensor",
    "fail",
    "first_index",
    "is_int",
    "packed_after",
    "same_tensor_storage",
]
