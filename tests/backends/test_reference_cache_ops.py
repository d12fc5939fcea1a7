"""reshape_and_cache, copy_blocks and swap_blocks of the reference backend."""

from __future__ import annotations

import pytest
import torch

import kvpager.ops as ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _key_at(key_cache: torch.Tensor, slot: int, head: int, block_size: int) -> torch.Tensor:
    """A slot's head vector by the layout formula: element d at [b, h, d // x, o, d % x]."""
    x = key_cache.shape[-1]
    block, offset = divmod(slot, block_size)
    d = torch.arange(key_cache.shape[2] * x)
    return key_cache[block, head, d // x, offset, d % x]


def _value_at(value_cache: torch.Tensor, slot: int, head: int, block_size: int) -> torch.Tensor:
    block, offset = divmod(slot, block_size)
    return value_cache[block, head, :, offset]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [8, 16, 64])
def test_reshape_and_cache_round_trip_skips_negative_slots(dtype, block_size) -> None:
    gen = torch.Generator().manual_seed(block_size)
    num_blocks, heads, head_size, tokens = 6, 3, 64, 40
    key_cache, value_cache = ops.allocate_kv_cache(num_blocks, heads, head_size, block_size,
                                                   dtype=dtype)
    key_cache.fill_(7.0)
    value_cache.fill_(7.0)
    key = torch.randn(tokens, heads, head_size, generator=gen).to(dtype)
    value = torch.randn(tokens, heads, head_size, generator=gen).to(dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:tokens]
    slots[::5] = -1  # padding tokens
    expected_key, expected_value = key_cache.clone(), value_cache.clone()
    x = key_cache.shape[-1]
    for i, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        block, offset = divmod(slot, block_size)
        for d in range(head_size):
            expected_key[block, :, d // x, offset, d % x] = key[i, :, d]
            expected_value[block, :, d, offset] = value[i, :, d]
    ops.reshape_and_cache(key, value, key_cache, value_cache, slots, "auto", 1.0, 1.0)
    assert torch.equal(key_cache, expected_key)
    assert torch.equal(value_cache, expected_value)


# Hand-encoded bytes of x / scale with scale 0.5: 1 -> 2, 2 -> 4, -0.5 -> -1, 0 -> 0,
# 1000 -> 2000 and 60000 -> 120000 (e4m3 saturates both to 448 = 0x7E; e5m2 rounds 2000 to
# 2048 = 0x68 and saturates 120000 to 57344 = 0x7B), 0.001 -> 0.002 (~2^-9: the e4m3
# subnormal 0x01; in e5m2 the normal 0 00110 00 = 0x18).
FP8_CASES = {
    "fp8_e4m3": [0x40, 0x48, 0xB8, 0x00, 0x7E, 0x7E, 0x01],
    "fp8": [0x40, 0x48, 0xB8, 0x00, 0x7E, 0x7E, 0x01],
    "fp8_e5m2": [0x40, 0x44, 0xBC, 0x00, 0x68, 0x7B, 0x18],
}
FP8_INPUTS = [1.0, 2.0, -0.5, 0.0, 1000.0, 60000.0, 0.001]
DECODED = {  # dequantize(q) * scale
    "fp8_e4m3": [1.0, 2.0, -0.5, 0.0, 224.0, 224.0, 2.0**-10],
    "fp8": [1.0, 2.0, -0.5, 0.0, 224.0, 224.0, 2.0**-10],
    "fp8_e5m2": [1.0, 2.0, -0.5, 0.0, 1024.0, 28672.0, 2.0**-10],
}


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("scale_kind", ["float", "tensor0d", "tensor1"])
def test_fp8_bytes_by_hand(kv_cache_dtype, scale_kind) -> None:
    scale = {"float": 0.5, "tensor0d": torch.tensor(0.5),
             "tensor1": torch.tensor([0.5])}[scale_kind]
    head_size, block_size = 32, 8
    key_cache, value_cache = ops.allocate_kv_cache(1, 1, head_size, block_size,
                                                   dtype=torch.float16,
                                                   kv_cache_dtype=kv_cache_dtype)
    assert key_cache.dtype == torch.uint8 and key_cache.shape[-1] == 16
    key = torch.zeros(1, 1, head_size, dtype=torch.float16)
    key[0, 0, : len(FP8_INPUTS)] = torch.tensor(FP8_INPUTS)
    ops.reshape_and_cache(key, key.clone(), key_cache, value_cache,
                          torch.tensor([3]), kv_cache_dtype, scale, scale)
    n = len(FP8_INPUTS)
    assert key_cache[0, 0, 0, 3, :n].tolist() == FP8_CASES[kv_cache_dtype]
    assert value_cache[0, 0, :n, 3].tolist() == FP8_CASES[kv_cache_dtype]
    # Read back through attention: one token, so the output is its dequantized value.
    query = torch.zeros(1, 1, head_size, dtype=torch.float16)
    out = ops.paged_attention(query, key_cache, value_cache, torch.zeros(1, 1, dtype=torch.int32),
                              torch.tensor([4], dtype=torch.int32),
                              kv_cache_dtype=kv_cache_dtype, k_scale=scale, v_scale=scale)
    # 4 tokens with equal (zero) logits: the mean of slot 3's value and three zero slots
    expected = torch.tensor(DECODED[kv_cache_dtype]) / 4
    torch.testing.assert_close(out[0, 0, :n].float(), expected, rtol=1e-3, atol=0)


@pytest.mark.parametrize("kv_cache_dtype,mantissa_bits", [("fp8_e4m3", 3), ("fp8_e5m2", 2)])
def test_fp8_round_trip_error_bound(kv_cache_dtype, mantissa_bits) -> None:
    """Rounding to nearest keeps every normal value within half a unit in the last place."""
    gen = torch.Generator().manual_seed(0)
    heads, head_size, block_size, scale = 2, 128, 16, 0.25
    key_cache, value_cache = ops.allocate_kv_cache(4, heads, head_size, block_size,
                                                   dtype=torch.float32,
                                                   kv_cache_dtype=kv_cache_dtype)
    value = torch.randn(64, heads, head_size, generator=gen)
    ops.reshape_and_cache(value, value, key_cache, value_cache, torch.arange(64),
                          kv_cache_dtype, scale, scale)
    fmt = torch.float8_e4m3fn if kv_cache_dtype == "fp8_e4m3" else torch.float8_e5m2
    decoded = value_cache.view(fmt).float() * scale  # [blocks, heads, D, bs]
    decoded = decoded.permute(0, 3, 1, 2).reshape(64, heads, head_size)
    tiny = torch.finfo(fmt).smallest_normal * scale
    bound = value.abs() * 2.0 ** -(mantissa_bits + 1) + tiny
    assert ((decoded - value).abs() <= bound).all()


def test_reshape_and_cache_with_row_strided_key() -> None:
    """key/value sliced out of a fused [tokens, (H + 2K) * D] QKV tensor."""
    tokens, heads, head_size = 5, 2, 64
    qkv = torch.randn(tokens, 6 * head_size)
    key = qkv[:, 2 * head_size: 4 * head_size].view(tokens, heads, head_size)
    value = qkv[:, 4 * head_size:].view(tokens, heads, head_size)
    key_cache, value_cache = ops.allocate_kv_cache(2, heads, head_size, 8, dtype=torch.float32)
    ops.reshape_and_cache(key, value, key_cache, value_cache, torch.arange(5) + 3, "auto",
                          1.0, 1.0)
    for i in range(tokens):
        assert torch.equal(_key_at(key_cache, i + 3, 1, 8), key[i, 1])
        assert torch.equal(_value_at(value_cache, i + 3, 0, 8), value[i, 0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.uint8])
def test_copy_blocks_every_layer(dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    layers = 3

    def cache(shape):
        return torch.randint(0, 200, shape, generator=gen).to(dtype)

    key_caches = [cache((10, 2, 4, 8, 8)) for _ in range(layers)]
    value_caches = [cache((10, 2, 32, 8)) for _ in range(layers)]
    before_k = [c.clone() for c in key_caches]
    before_v = [c.clone() for c in value_caches]
    mapping = torch.tensor([[0, 5], [3, 9], [0, 6], [7, 1]])
    ops.copy_blocks(key_caches, value_caches, mapping)
    for after, before in zip(key_caches + value_caches, before_k + before_v, strict=True):
        expected = before.clone()
        for src, dst in mapping.tolist():
            expected[dst] = before[src]
        assert torch.equal(after, expected)


def test_copy_blocks_with_no_pairs_or_no_layers() -> None:
    k, v = torch.randn(4, 1, 4, 8, 4), torch.randn(4, 1, 16, 8)
    before = k.clone()
    ops.copy_blocks([k], [v], torch.empty(0, 2, dtype=torch.int64))
    ops.copy_blocks([], [], torch.tensor([[0, 1]]))
    assert torch.equal(k, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.uint8, torch.float32])
def test_swap_blocks_bit_exact(dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    src = torch.randint(0, 250, (12, 2, 16, 8), generator=gen).to(dtype)
    dst = torch.randint(0, 250, (5, 2, 16, 8), generator=gen).to(dtype)
    before = dst.clone()
    mapping = torch.tensor([[11, 0], [3, 4], [4, 2], [5, 3]])  # 4, 5 -> 2, 3 is one run
    ops.swap_blocks(src, dst, mapping)
    expected = before.clone()
    for s, d in mapping.tolist():
        expected[d] = src[s]
    assert torch.equal(dst.view(torch.uint8), expected.view(torch.uint8))


def test_swap_blocks_runs_group_consecutive_pairs() -> None:
    from kvpager.backends.reference.cache_ops import _runs

    assert _runs([[4, 10], [5, 11], [6, 12], [9, 1], [10, 2], [0, 0]]) == [
        (4, 10, 3), (9, 1, 2), (0, 0, 1)]
    assert _runs([[1, 1], [1, 2]]) == [(1, 1, 1), (1, 2, 1)]
