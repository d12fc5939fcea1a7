"""FP8 bytes <-> floats inside Triton kernels, with integer bit operations only.

Why not `.to(tl.float8e4nv)`: Triton refuses the e4m3 type on GPUs older than sm_89 (A100
has no FP8 hardware), and the interpreter's float8 emulation is not the cache's encoding.
Bit operations run on every target, in the interpreter too, and give exactly the values of
torch's `float8_e4m3fn` / `float8_e5m2` (see `kvpager.backends.fp8`):

- decode: every FP8 value is exactly representable in float16, so a byte becomes float16 bits
  by shifting. For e5m2 the byte *is* the high byte of the float16. For e4m3 the 7 bits
  below the sign, shifted left by 7, are a float16 whose exponent field is the e4m3 exponent
  (bias 15 instead of 7): the value times 2^-8, subnormals included. Callers fold the 2^8
  into their scale (`E4M3_DECODE_FACTOR`), so decoding costs no multiply.
- encode: round to nearest even on the float32 bit pattern (add half an ulp of the target,
  minus one when the kept lsb is even, then shift), saturating to the largest finite value
  as CUDA's `__NV_SATFINITE` and torch's clamp-then-cast do; values below the smallest
  normal are rounded as integers multiples of the smallest subnormal by the float32 adder.

Format codes used by the kernels' `KV_FP8` constexpr: 0 = no FP8, 1 = e4m3, 2 = e5m2.
"""

from __future__ import annotations

import triton
import triton.language as tl

NOT_FP8, E4M3, E5M2 = 0, 1, 2
FORMAT_CODES = {"auto": NOT_FP8, "fp8_e4m3": E4M3, "fp8_e5m2": E5M2}

#: What a decoded e4m3 value must be multiplied by (its float16 bits carry value * 2^-8).
E4M3_DECODE_FACTOR = 256.0


def decode_factor(fmt: int) -> float:
    """The factor that `decode_fp8`'s output still needs, besides the cache's scale."""
    return E4M3_DECODE_FACTOR if fmt == E4M3 else 1.0


@triton.jit
def decode_fp8(raw, FMT: tl.constexpr):
    """uint8 tile -> float16 tile: e5m2 exactly, e4m3 as value * 2^-8 (NaN stays NaN)."""
    bits = raw.to(tl.uint16)
    if FMT == 2:
        return (bits << 8).to(tl.float16, bitcast=True)
    else:
        half = (((bits & 0x7F) << 7) | ((bits & 0x80) << 8)).to(tl.float16, bitcast=True)
        # 0x7F / 0xFF are e4m3's NaN; the shift above would read them as 1.875 * 2^-8.
        return tl.where((bits & 0x7F) == 0x7F, float("nan"), half)


@triton.jit
def _encode_bits(x, MANT: tl.constexpr, BIAS: tl.constexpr, MAX_VALUE: tl.constexpr,
                 SUBNORMAL_SCALE: tl.constexpr, MIN_NORMAL: tl.constexpr):
    bits = x.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    mag = tl.minimum(tl.abs(x), MAX_VALUE)  # saturate; NaN is handled below
    mag_bits = mag.to(tl.int32, bitcast=True)
    drop: tl.constexpr = 23 - MANT
    keep_odd = (mag_bits >> drop) & 1
    normal = ((mag_bits + ((1 << (drop - 1)) - 1) + keep_odd) >> drop) - ((127 - BIAS) << MANT)
    # Below the smallest normal, codes are integer multiples of the smallest subnormal; adding
    # 2^23 makes the float32 adder round that multiple to nearest even.
    sub = (mag * SUBNORMAL_SCALE + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
    code = tl.where(mag < MIN_NORMAL, sub, normal)
    code = tl.where(x != x, 0x7F, code)
    return (code | sign).to(tl.uint8)


@triton.jit
def encode_fp8(x, FMT: tl.constexpr):
    """float32 tile (already divided by the scale) -> uint8 FP8 codes, saturating, RNE."""
    if FMT == 2:
        return _encode_bits(x, 2, 15, 57344.0, 65536.0, 6.103515625e-05)
    else:
        return _encode_bits(x, 3, 7, 448.0, 512.0, 0.015625)


__all__ = [
    "E4M3",
    "E4M3_DECODE_FACTOR",
    "E5M2",
    "FORMAT_CODES",
    "NOT_FP8",
    "decode_factor",
    "decode_fp8",
    "encode_fp8",
]
