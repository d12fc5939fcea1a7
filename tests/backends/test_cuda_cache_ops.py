"""reshape_and_cache, copy_blocks and swap_blocks of the CUDA backend: bit-exact against the
reference backend and against expectations computed here by plain indexing. GPU only."""

from __future__ import annotations

from types import ModuleType

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda is not available)"
    ),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
       "fp8_e5m2": torch.float8_e5m2}


@pytest.fixture(scope="module")
def ops() -> ModuleType:
    import kvpager.ops

    return kvpager.ops


def dtype_id(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def empty_caches(num_blocks: int, kv_heads: int, head_size: int, block_size: int,
                 cache_dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caches full of random bytes, so that a slot the op must not touch is recognisable."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    elem = torch.empty((), dtype=cache_dtype).element_size()
    x = 16 // elem
    shape_k = (num_blocks, kv_heads, head_size // x, block_size, x)
    shape_v = (num_blocks, kv_heads, head_size, block_size)

    def fill(shape: tuple[int, ...]) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        raw = torch.randint(0, 256, (n * elem,), dtype=torch.uint8, generator=gen, device="cuda")
        t = raw.view(cache_dtype).view(shape)
        if cache_dtype.is_floating_point:  # no NaN/inf in floating caches: keep comparisons exact
            t = torch.where(torch.isfinite(t), t, torch.zeros((), dtype=cache_dtype, device="cuda"))
        return t.contiguous()

    return fill(shape_k), fill(shape_v)


def quantize(x: torch.Tensor, kv_cache_dtype: str, scale: float) -> torch.Tensor:
    """What the cache must hold for activation x: the bits of x, or fp8(x / scale) as bytes."""
    if kv_cache_dtype == "auto":
        return x
    return (x.float() / scale).to(FP8[kv_cache_dtype]).view(torch.uint8)


# ---- reshape_and_cache -----------------------------------------------------------------------

@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("block_size", [8, 16, 32])
@pytest.mark.parametrize("head_size", [64, 80, 128, 256])
def test_reshape_and_cache_is_bit_exact(
    ops: ModuleType, head_size: int, block_size: int, dtype: torch.dtype, kv_cache_dtype: str
) -> None:
    num_tokens, kv_heads, num_blocks = 45, 4, 11
    gen = torch.Generator(device="cuda").manual_seed(head_size + block_size)
    key = torch.randn(num_tokens, kv_heads, head_size, generator=gen, device="cuda").to(dtype)
    value = torch.randn(num_tokens, kv_heads, head_size, generator=gen, device="cuda").to(dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen, device="cuda")[:num_tokens]
    slots[::7] = -1  # padding tokens: must not be written anywhere
    cache_dtype = dtype if kv_cache_dtype == "auto" else torch.uint8
    k_scale, v_scale = (1.0, 1.0) if kv_cache_dtype == "auto" else (0.5, 2.0)
    key_cache, value_cache = empty_caches(num_blocks, kv_heads, head_size, block_size,
                                          cache_dtype, seed=1)

    expected_k, expected_v = key_cache.clone(), value_cache.clone()
    x = key_cache.shape[-1]
    qk, qv = quantize(key, kv_cache_dtype, k_scale), quantize(value, kv_cache_dtype, v_scale)
    for t, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        block, off = divmod(slot, block_size)
        expected_k[block, :, :, off, :] = qk[t].reshape(kv_heads, head_size // x, x)
        expected_v[block, :, :, off] = qv[t]

    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    ops.reshape_and_cache(key, value, ref_k, ref_v, slots, kv_cache_dtype, k_scale, v_scale,
                          backend="reference")
    ops.reshape_and_cache(key, value, key_cache, value_cache, slots, kv_cache_dtype, k_scale,
                          v_scale, backend="cuda")
    assert torch.equal(key_cache.view(torch.uint8), expected_k.view(torch.uint8))
    assert torch.equal(value_cache.view(torch.uint8), expected_v.view(torch.uint8))
    assert torch.equal(key_cache.view(torch.uint8), ref_k.view(torch.uint8))
    assert torch.equal(value_cache.view(torch.uint8), ref_v.view(torch.uint8))


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3"])
def test_reshape_and_cache_unaligned_inputs_and_tensor_scales(
    ops: ModuleType, kv_cache_dtype: str
) -> None:
    num_tokens, kv_heads, head_size, block_size, num_blocks = 9, 2, 128, 16, 3
    gen = torch.Generator(device="cuda").manual_seed(3)
    n = num_tokens * kv_heads * head_size
    # One element of offset: 2 bytes off 16-byte alignment, so the kernel takes its scalar path.
    buf = torch.randn(2 * n + 1, generator=gen, device="cuda").to(torch.float16)
    key = buf[1:n + 1].view(num_tokens, kv_heads, head_size)
    value = buf[n + 1:].view(num_tokens, kv_heads, head_size)
    assert key.data_ptr() % 16 != 0
    slots = torch.arange(num_tokens, device="cuda") * 5 % (num_blocks * block_size)
    cache_dtype = torch.float16 if kv_cache_dtype == "auto" else torch.uint8
    kc, vc = empty_caches(num_blocks, kv_heads, head_size, block_size, cache_dtype, seed=2)
    kc2, vc2 = kc.clone(), vc.clone()
    ks = torch.tensor(0.75, device="cuda")
    vs = torch.tensor(1.5, device="cuda")
    ops.reshape_and_cache(key, value, kc, vc, slots, kv_cache_dtype, ks, vs, backend="cuda")
    ops.reshape_and_cache(key.clone(), value.clone(), kc2, vc2, slots, kv_cache_dtype, 0.75, 1.5,
                          backend="cuda")
    assert torch.equal(kc.view(torch.uint8), kc2.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vc2.view(torch.uint8))


# ---- copy_blocks -----------------------------------------------------------------------------

@pytest.mark.parametrize("mapping_device", ["cuda", "cpu"])
@pytest.mark.parametrize("cache_dtype", [torch.float16, torch.float32, torch.uint8], ids=dtype_id)
def test_copy_blocks_every_layer_in_one_call(
    ops: ModuleType, cache_dtype: torch.dtype, mapping_device: str
) -> None:
    layers, num_blocks, kv_heads, head_size, block_size = 3, 16, 4, 64, 16
    keys, values = [], []
    for layer in range(layers):
        k, v = empty_caches(num_blocks, kv_heads, head_size, block_size, cache_dtype, seed=layer)
        keys.append(k)
        values.append(v)
    # Sources and destinations disjoint, so the result does not depend on copy order.
    pairs = torch.tensor([[0, 9], [3, 10], [3, 11], [7, 2], [15, 4]], dtype=torch.int64)
    expected_k = [k.clone() for k in keys]
    expected_v = [v.clone() for v in values]
    for src, dst in pairs.tolist():
        for e in (*expected_k, *expected_v):
            e[dst] = e[src]
    ref_k = [k.clone() for k in keys]
    ref_v = [v.clone() for v in values]
    ops.copy_blocks(ref_k, ref_v, pairs.to("cuda"), backend="reference")
    ops.copy_blocks(keys, values, pairs.to(mapping_device), backend="cuda")
    for got, exp, ref in zip([*keys, *values], [*expected_k, *expected_v], [*ref_k, *ref_v],
                             strict=True):
        assert torch.equal(got.view(torch.uint8), exp.view(torch.uint8))
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


def test_copy_blocks_beyond_the_grid_limit(ops: ModuleType) -> None:
    # More pairs than gridDim.y allows (65535): the kernel strides over the rest.
    num_pairs = 70_000
    num_blocks = 2 * num_pairs
    k, v = empty_caches(num_blocks, 1, 16, 8, torch.float16, seed=5)
    src = torch.arange(num_pairs, dtype=torch.int64)
    pairs = torch.stack([src, src + num_pairs], dim=1).cuda()
    ops.copy_blocks([k], [v], pairs, backend="cuda")
    assert torch.equal(k[num_pairs:], k[:num_pairs])
    assert torch.equal(v[num_pairs:], v[:num_pairs])


# ---- swap_blocks -----------------------------------------------------------------------------

@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "pageable"])
@pytest.mark.parametrize("mapping_device", ["cpu", "cuda"])
def test_swap_out_and_back_in(ops: ModuleType, pinned: bool, mapping_device: str) -> None:
    gpu_k, _ = empty_caches(20, 4, 64, 16, torch.float16, seed=7)
    cpu_k = torch.zeros((12, *gpu_k.shape[1:]), dtype=gpu_k.dtype, pin_memory=pinned)
    # A run of consecutive ids (2, 3, 4 -> 0, 1, 2) that may travel as one copy, and singles.
    out_pairs = torch.tensor([[2, 0], [3, 1], [4, 2], [10, 7], [0, 11], [19, 5]])
    ops.swap_blocks(gpu_k, cpu_k, out_pairs.to(mapping_device), backend="cuda")
    torch.cuda.synchronize()  # the copies are asynchronous on the current stream
    for g, c in out_pairs.tolist():
        assert torch.equal(cpu_k[c], gpu_k[g].cpu())
    untouched = sorted(set(range(12)) - {c for _, c in out_pairs.tolist()})
    assert torch.count_nonzero(cpu_k[untouched]) == 0

    back = gpu_k.clone()
    in_pairs = torch.tensor([[0, 13], [1, 14], [2, 15], [11, 1]])
    expected = back.clone()
    for c, g in in_pairs.tolist():
        expected[g] = cpu_k[c].cuda()
    ops.swap_blocks(cpu_k, back, in_pairs.to(mapping_device), backend="cuda")
    torch.cuda.synchronize()
    assert torch.equal(back, expected)


def test_swap_blocks_matches_reference_between_gpu_caches_with_strided_blocks(
    ops: ModuleType,
) -> None:
    # Key and value of one layer stored as one [N, 2, ...] tensor: a block's key is contiguous
    # but blocks are two block-sizes apart, so runs cannot be merged into one copy.
    kv = torch.randn(10, 2, 4, 8, 16, 8, device="cuda").to(torch.float16)
    src = kv[:, 0]
    assert not src.is_contiguous() and src[0].is_contiguous()
    dst = torch.zeros(10, 4, 8, 16, 8, device="cuda", dtype=torch.float16)
    ref = dst.clone()
    pairs = torch.tensor([[1, 0], [2, 1], [3, 2], [9, 9]])
    ops.swap_blocks(src, dst, pairs, backend="cuda")
    ops.swap_blocks(src, ref, pairs, backend="reference")
    torch.cuda.synchronize()
    assert torch.equal(dst, ref)
    for s, d in pairs.tolist():
        assert torch.equal(dst[d], src[s])
