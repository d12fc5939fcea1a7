"""Argument checks shared by the sparse ops.

Every check raises `ValueError` whose message starts with the argument's name, before any
tensor is allocated or any kernel runs: a caller who passes a wrong layout learns which
argument to fix instead of reading a shape error from deep inside torch or Triton.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INT32_MAX = 2**31 - 1


def check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = INT32_MAX
) -> int:
    """`value` as an int; bools and floats are refused because they hide caller bugs.

    The default maximum is INT32_MAX: the kernels keep these values in 32-bit integers, and
    the reference's int64 arithmetic on a larger one would overflow (or differ from them).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int | Sequence[int],
    dtypes: Sequence[torch.dtype],
) -> torch.Tensor:
    """`value` as a tensor with one of the allowed ranks and dtypes."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if value.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name} must be {want}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{name} must have dtype {allowed}; got {value.dtype}")
    return value


def check_same_device(named: dict[str, torch.Tensor]) -> torch.device:
    """The one device every tensor in `named` lives on; never the meta device, which holds
    no data for the ops to read (they read lengths back to the host)."""
    items = list(named.items())
    first_name, first = items[0]
    for name, tensor in items[1:]:
        if tensor.device != first.device:
            raise ValueError(
                f"{name} is on {tensor.device} but {first_name} is on {first.device}; "
                "all tensors of one call must share a device"
            )
    if first.device.type == "meta":
        raise ValueError(f"{first_name} is on the meta device, which holds no data; the "
                         "sparse ops compute on real tensors")
    return first.device


def check_range(
    name: str, tensor: torch.Tensor, *, low: int | None = None, high: int | None = None
) -> None:
    """Every element of `tensor` in `[low, high]` (inclusive); one host sync when non-empty.

    Values are checked on the host because an out-of-range length makes a kernel read or
    write outside its buffers, which on a GPU is silent corruption rather than an error.
    """
    if tensor.numel() == 0:
        return
    import torch

    lo_val, hi_val = (int(x) for x in torch.stack(torch.aminmax(tensor)).tolist())
    if low is not None and lo_val < low:
        raise ValueError(f"{name} must be >= {low} everywhere, found {lo_val}")
    if high is not None and hi_val > high:
        raise ValueError(f"{name} must be <= {high} everywhere, found {hi_val}")
