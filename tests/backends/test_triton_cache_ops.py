"""The Triton cache writes and state merging on the CPU (interpreted), against the reference
and against values computed by hand or by plain softmax."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import triton
import triton.language as tl

import kvpager.ops as ops
from kvpager.backends.triton import BACKEND
from kvpager.backends.triton.fp8_codec import FORMAT_CODES, decode_factor, decode_fp8, encode_fp8

CPU = torch.device("cpu")
_reason = BACKEND.unavailable_reason() or BACKEND.device_reason(CPU)
pytestmark = pytest.mark.skipif(
    _reason is not None, reason=f"{_reason} (test_triton_gpu.py runs the kernels on CUDA)"
)

FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
       "fp8_e5m2": torch.float8_e5m2}


def _tokens(num_tokens: int, num_kv_heads: int, head_size: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    key = (torch.randn(num_tokens, num_kv_heads, head_size, generator=gen) * 3).to(dtype)
    value = (torch.randn(num_tokens, num_kv_heads, head_size, generator=gen) * 3).to(dtype)
    return key, value


@pytest.mark.parametrize(("dtype", "kv_cache_dtype", "head_size", "block_size"), [
    (torch.float16, "auto", 80, 16),
    (torch.bfloat16, "auto", 64, 12),  # any block size: the cache ops are not attention
    (torch.float32, "auto", 120, 8),
    (torch.float16, "fp8", 64, 16),
    (torch.bfloat16, "fp8_e4m3", 128, 32),
    (torch.float32, "fp8_e5m2", 96, 5),
])
@pytest.mark.parametrize("tensor_scales", [False, True])
def test_reshape_and_cache_is_bit_exact_with_the_reference(
    dtype, kv_cache_dtype, head_size, block_size, tensor_scales
) -> None:
    """Slots shuffled over the cache, two padding slots (-1), scales that are not powers of
    two (so the division's rounding matters), caches pre-filled with a pattern that the
    skipped and untouched slots must keep."""
    num_tokens, num_kv_heads, num_blocks = 23, 3, 8
    key, value = _tokens(num_tokens, num_kv_heads, head_size, dtype, seed=head_size)
    key[0, 0, :4] = torch.tensor([1e6, -1e6, 0.0, -0.0])  # saturation and signed zeros
    slots = torch.randperm(num_blocks * block_size, generator=torch.Generator().manual_seed(1))
    slots = slots[:num_tokens].clone()
    slots[[4, 17]] = -1
    k_scale, v_scale = 0.37, 1.3
    if tensor_scales:
        k_scale, v_scale = torch.tensor(k_scale), torch.tensor([v_scale])
    results = []
    for backend in ("reference", "triton"):
        kc, vc = ops.allocate_kv_cache(num_blocks, num_kv_heads, head_size, block_size,
                                       dtype=dtype, kv_cache_dtype=kv_cache_dtype)
        kc.view(-1).copy_(torch.arange(kc.numel()) % 7)
        vc.view(-1).copy_(torch.arange(vc.numel()) % 5)
        ops.reshape_and_cache(key, value, kc, vc, slots, kv_cache_dtype, k_scale, v_scale,
                              backend=backend)
        results.append((kc, vc))
    (ref_k, ref_v), (got_k, got_v) = results
    assert torch.equal(got_k.view(torch.uint8), ref_k.view(torch.uint8))
    assert torch.equal(got_v.view(torch.uint8), ref_v.view(torch.uint8))


def test_reshape_and_cache_fp8_values_by_hand() -> None:
    """Where each byte lands and what it decodes to, without the reference: key element d of
    a token at slot s is key_cache[s // bs, h, d // 16, s % bs, d % 16]."""
    head_size, block_size = 32, 8
    key = torch.zeros(2, 1, head_size)
    value = torch.zeros(2, 1, head_size)
    key[0, 0, 17] = 3.0  # / k_scale 0.5 = 6: exact in e4m3
    key[1, 0, 0] = 1000.0  # / 0.5 = 2000: saturates to 448
    value[0, 0, 5] = -0.8125  # / v_scale 0.25 = -3.25: exact
    value[1, 0, 1] = 0.1  # / 0.25 = 0.4: between 0.375 and 0.40625, nearer 0.40625
    kc, vc = ops.allocate_kv_cache(3, 1, head_size, block_size, dtype=torch.float32,
                                   kv_cache_dtype="fp8_e4m3")
    ops.reshape_and_cache(key, value, kc, vc, torch.tensor([13, 2]), "fp8_e4m3", 0.5, 0.25,
                          backend="triton")
    decoded_k = kc.view(torch.float8_e4m3fn).float()
    decoded_v = vc.view(torch.float8_e4m3fn).float()
    assert decoded_k[1, 0, 1, 5, 1] == 6.0  # slot 13: block 1, offset 5; d 17: chunk 1, lane 1
    assert decoded_k[0, 0, 0, 2, 0] == 448.0  # slot 2: block 0, offset 2
    assert decoded_v[1, 0, 5, 5] == -3.25
    assert decoded_v[0, 0, 1, 2] == 0.40625
    assert decoded_k.count_nonzero() == 2 and decoded_v.count_nonzero() == 2


def _split_attention(num_tokens: int, num_heads: int, head_size: int, seed: int):
    """Logits over 12 keys split into a prefix (keys 0-6) and a suffix (7-11): each part's
    softmax output and LSE [H, N], and the softmax over all 12 keys."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_heads, 12, generator=gen, dtype=torch.float64) * 4
    values = torch.randn(num_tokens, num_heads, 12, head_size, generator=gen,
                         dtype=torch.float64)

    def attend(part: slice):
        weights = torch.softmax(logits[..., part], -1)
        out = (weights[..., None] * values[..., part, :]).sum(-2)
        return out, torch.logsumexp(logits[..., part], -1).t().contiguous()

    (p_out, p_lse), (s_out, s_lse) = attend(slice(0, 7)), attend(slice(7, 12))
    full_out, full_lse = attend(slice(0, 12))
    return p_out, p_lse, s_out, s_lse, full_out, full_lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_size", [64, 80])
def test_merge_attn_states_equals_attention_over_the_union(dtype, head_size) -> None:
    p_out, p_lse, s_out, s_lse, full_out, full_lse = _split_attention(5, 3, head_size, seed=2)
    output = torch.empty(5, 3, head_size, dtype=dtype)
    output_lse = torch.empty(3, 5)
    ops.merge_attn_states(output, p_out.to(dtype), p_lse.float(), s_out.to(dtype),
                          s_lse.float(), output_lse, backend="triton")
    atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(output.double(), full_out, atol=atol, rtol=atol)
    torch.testing.assert_close(output_lse.double(), full_lse, atol=1e-5, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")
def test_merge_attn_states_empty_parts_and_aliasing() -> None:
    """+inf and -inf LSEs mark empty parts whose (NaN) outputs are never read; both parts
    empty gives 0 and -inf; `output` may be the prefix tensor itself."""
    p_out, p_lse, s_out, s_lse, _, _ = _split_attention(4, 2, 32, seed=3)
    p_out, s_out = p_out.float(), s_out.float()
    p_lse, s_lse = p_lse.float(), s_lse.float()
    # token 0: prefix empty (+inf); token 1: suffix empty (-inf); token 2: both empty
    p_lse[:, 0] = float("inf")
    p_out[0] = float("nan")
    s_lse[:, 1] = float("-inf")
    s_out[1] = float("nan")
    p_lse[:, 2], s_lse[:, 2] = float("-inf"), float("inf")
    p_out[2], s_out[2] = float("nan"), float("nan")
    want = p_out.clone()
    want_lse = torch.empty(2, 4)
    ops.merge_attn_states(want, p_out.clone(), p_lse, s_out, s_lse, want_lse,
                          backend="reference")
    output_lse = torch.empty(2, 4)
    ops.merge_attn_states(p_out, p_out, p_lse, s_out, s_lse, output_lse, backend="triton")
    assert torch.equal(p_out[0], s_out[0]) and torch.equal(output_lse[:, 0], s_lse[:, 0])
    assert p_out[1].isfinite().all() and torch.equal(output_lse[:, 1], p_lse[:, 1])
    assert p_out[2].eq(0).all() and output_lse[:, 2].eq(float("-inf")).all()
    torch.testing.assert_close(p_out, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(output_lse, want_lse, atol=1e-6, rtol=1e-6)


def test_merge_attn_states_without_output_lse() -> None:
    p_out, p_lse, s_out, s_lse, full_out, _ = _split_attention(3, 2, 64, seed=4)
    output = torch.empty(3, 2, 64)
    ops.merge_attn_states(output, p_out.float(), p_lse.float(), s_out.float(), s_lse.float(),
                          backend="triton")
    torch.testing.assert_close(output.double(), full_out, atol=1e-5, rtol=1e-5)


def test_copy_and_swap_blocks_move_whole_blocks() -> None:
    """Served by the reference's torch code (documented): dst blocks equal src blocks, all
    other blocks untouched, for every layer."""
    gen = torch.Generator().manual_seed(5)
    keys = [torch.randn(6, 2, 4, 8, 8, generator=gen).half() for _ in range(2)]
    values = [torch.randn(6, 2, 32, 8, generator=gen).half() for _ in range(2)]
    before = [t.clone() for t in keys + values]
    ops.copy_blocks(keys, values, torch.tensor([[0, 3], [5, 1]]), backend="triton")
    for old, new in zip(before, keys + values, strict=True):
        assert torch.equal(new[3], old[0]) and torch.equal(new[1], old[5])
        assert torch.equal(new[[0, 2, 4, 5]], old[[0, 2, 4, 5]])
    swap_space = torch.zeros(3, 2, 32, 8, dtype=torch.float16)
    ops.swap_blocks(values[0], swap_space, torch.tensor([[2, 0], [4, 2]]), backend="triton")
    assert torch.equal(swap_space[0], values[0][2]) and torch.equal(swap_space[2], values[0][4])
    assert swap_space[1].eq(0).all()


@triton.jit
def _codec_kernel(codes_ptr, decoded_ptr, x_ptr, encoded_ptr, n, FMT: tl.constexpr,
                  BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(decoded_ptr + i, decode_fp8(tl.load(codes_ptr + i), FMT).to(tl.float32))
    for first in range(0, n, BLOCK):
        j = first + i
        x = tl.load(x_ptr + j, mask=j < n)
        tl.store(encoded_ptr + j, encode_fp8(x, FMT), mask=j < n)


@pytest.mark.parametrize("kv_cache_dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_codec_against_torch_float8(kv_cache_dtype) -> None:
    """Every byte decodes to torch's value (e4m3 as value * 2^-8, NaN as NaN), and encoding
    every finite value, every midpoint between neighbours, the floats just beside each
    midpoint, out-of-range values and random floats gives torch's round-to-nearest-even
    byte after clamping to the format's range."""
    fmt = FORMAT_CODES[kv_cache_dtype]
    torch_dtype = FP8[kv_cache_dtype]
    bound = torch.finfo(torch_dtype).max
    codes = torch.arange(256, dtype=torch.uint8)
    exact = codes.view(torch_dtype).float()
    finite = exact[exact.isfinite()].unique()
    mids = (finite[1:] + finite[:-1]) / 2
    gen = torch.Generator().manual_seed(9)
    x = torch.cat([
        finite, mids, torch.nextafter(mids, torch.tensor(float("inf"))),
        torch.nextafter(mids, torch.tensor(float("-inf"))),
        torch.tensor([bound * 1.01, -bound * 4, float("inf"), float("-inf"), 1e-30, -0.0]),
        torch.randn(4000, generator=gen) * 10.0 ** torch.randint(-6, 5, (4000,), generator=gen),
    ])
    decoded = torch.empty(256)
    encoded = torch.empty(x.numel(), dtype=torch.uint8)
    _codec_kernel[(1,)](codes, decoded, x, encoded, x.numel(), FMT=fmt, BLOCK=256)
    decoded = decoded * decode_factor(fmt)
    assert torch.equal(decoded.isnan(), exact.isnan())
    assert torch.equal(decoded[~exact.isnan()], exact[~exact.isnan()])
    want = x.clamp(-bound, bound).to(torch_dtype).view(torch.uint8)
    assert torch.equal(encoded, want), x[encoded != want][:8]
