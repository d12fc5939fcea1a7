"""FP8 KV-cache encoding shared by every backend: names, storage dtype, quantize, dequantize.

vLLM stores an FP8 cache as raw bytes (`torch.uint8`) and keeps the format in a string,
`kv_cache_dtype`, so that one tensor type serves both FP8 formats and kernels pick the
conversion at run time. kvpager does the same, so caches move between kvpager and vLLM code
unchanged. The conversions go through torch's `float8_e4m3fn` / `float8_e5m2` dtypes, which
are bit-exact with the CUDA intrinsics (round to nearest even).

Scaling follows vLLM: a value is written as `quantize(x / scale)` and read back as
`dequantize(q) * scale`, with one float32 scale per cache (`k_scale` for keys, `v_scale` for
values). Writing saturates to the largest finite value of the format (448 for e4m3, 57344 for
e5m2) like CUDA's `__NV_SATFINITE`, instead of producing NaN or inf for an outlier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    Scale = float | torch.Tensor

#: Every `kv_cache_dtype` the ops accept. "fp8" is an alias of "fp8_e4m3", as in vLLM.
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")

#: Canonical FP8 name -> name of the torch dtype that holds the same bits.
_TORCH_FP8 = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}

#: Largest finite value of each format: the saturation bound of `quantize`.
FP8_MAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


def normalize_kv_cache_dtype(kv_cache_dtype: object) -> str:
    """The canonical name: "auto", "fp8_e4m3" or "fp8_e5m2"; raises ValueError otherwise.

    Backends receive only canonical names from `kvpager.ops`, so they never handle "fp8".
    """
    if not isinstance(kv_cache_dtype, str) or kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype must be one of {', '.join(map(repr, KV_CACHE_DTYPES))}, "
            f"got {kv_cache_dtype!r}"
        )
    return "fp8_e4m3" if kv_cache_dtype == "fp8" else kv_cache_dtype


def is_fp8(kv_cache_dtype: str) -> bool:
    """True for an FP8 cache, which is stored as uint8 bytes and needs scales."""
    return normalize_kv_cache_dtype(kv_cache_dtype) != "auto"


def torch_fp8_dtype(kv_cache_dtype: str) -> torch.dtype:
    """The torch float8 dtype whose bits an FP8 cache holds (for `.view` on uint8 tensors)."""
    import torch

    name = normalize_kv_cache_dtype(kv_cache_dtype)
    if name == "auto":
        raise ValueError("kv_cache_dtype 'auto' is not an FP8 format")
    return getattr(torch, _TORCH_FP8[name])


def as_factor(scale: Scale) -> float | torch.Tensor:
    """A scale ready to broadcast against any tensor: a float, or a 0-d float32 tensor.

    A shape-[1] tensor is reshaped to 0-d because only 0-d CPU tensors may be combined with
    CUDA tensors; a tensor scale is never read back to the host (no device sync).
    """
    if isinstance(scale, (int, float)):
        return float(scale)
    return scale.reshape(()).float()


def quantize(x: torch.Tensor, scale: Scale, kv_cache_dtype: str) -> torch.Tensor:
    """Encode `x` (any float dtype, any shape) as FP8 bytes: uint8 of the same shape.

    Computes `x / scale` in float32, saturates to the format's finite range, rounds to
    nearest even. NaN stays NaN.
    """
    import torch

    name = normalize_kv_cache_dtype(kv_cache_dtype)
    bound = FP8_MAX[name]
    scaled = (x.float() / as_factor(scale)).clamp(-bound, bound)
    return scaled.to(torch_fp8_dtype(name)).view(torch.uint8)


def dequantize(q: torch.Tensor, scale: Scale, kv_cache_dtype: str) -> torch.Tensor:
    """Decode FP8 bytes (uint8, any shape) to float32 values times `scale`."""
    return q.view(torch_fp8_dtype(kv_cache_dtype)).float() * as_factor(scale)


__all__ = [
    "FP8_MAX",
    "KV_CACHE_DTYPES",
    "as_factor",
    "dequantize",
    "is_fp8",
    "normalize_kv_cache_dtype",
    "quantize",
    "torch_fp8_dtype",
]
