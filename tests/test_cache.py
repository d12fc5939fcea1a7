"""KVCache: plans carried out on real tensors through the reference ops."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kvpager.cache import KVCache  # noqa: E402
from kvpager.core.memory.manager import KVCacheManager  # noqa: E402

HEADS, HEAD, BS = 2, 16, 4


def tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, HEADS, HEAD, generator=g), torch.randn(n, HEADS, HEAD, generator=g))


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3"])
def test_write_then_gather_through_the_table(kv_cache_dtype):
    m = KVCacheManager(num_gpu_blocks=8, block_size=BS)
    cache = KVCache.for_manager(m, 2, HEADS, HEAD, dtype=torch.float32,
                                kv_cache_dtype=kv_cache_dtype)
    k, v = tokens(7, 0)
    m.allocate("a", 7)
    cache.write(1, k, v, m.slot_mapping("a", 0, 7))
    gk, gv = cache.gather(1, m.block_table("a").blocks, 7)
    tol = 0 if kv_cache_dtype == "auto" else 0.07
    torch.testing.assert_close(gk, k, atol=tol * k.abs().max().item(), rtol=tol)
    torch.testing.assert_close(gv, v, atol=tol * v.abs().max().item(), rtol=tol)
    assert cache.gather(0, m.block_table("a").blocks, 7)[0].abs().sum() == 0  # other layer


def test_copy_on_write_plan_keeps_both_sequences_data():
    m = KVCacheManager(num_gpu_blocks=8, block_size=BS)
    cache = KVCache.for_manager(m, 2, HEADS, HEAD, dtype=torch.float32)
    k, v = tokens(6, 1)
    m.allocate("p", 6)
    for layer in range(2):
        cache.write(layer, k, v, m.slot_mapping("p", 0, 6))
    m.fork("p", "c")
    got = m.append_slots("c")
    assert got.num_copies == 1
    cache.copy(got.copies)
    k2, v2 = tokens(1, 2)
    for layer in range(2):
        cache.write(layer, k2, v2, got.slots)
    for layer in range(2):
        gk, _ = cache.gather(layer, m.block_table("c").blocks, 7)
        assert torch.equal(gk, torch.cat([k, k2]))
        pk, _ = cache.gather(layer, m.block_table("p").blocks, 6)
        assert torch.equal(pk, k)


def test_swap_out_and_in_is_bit_exact():
    m = KVCacheManager(num_gpu_blocks=6, block_size=BS, num_cpu_blocks=6)
    cache = KVCache.for_manager(m, 3, HEADS, HEAD, dtype=torch.bfloat16)
    k, v = tokens(10, 3)
    k, v = k.bfloat16(), v.bfloat16()
    m.allocate("a", 10)
    for layer in range(3):
        cache.write(layer, k, v, m.slot_mapping("a", 0, 10))
    before = [cache.gather(layer, m.block_table("a").blocks, 10) for layer in range(3)]
    cache.swap_out(m.swap_out(["a"]))
    on_cpu = [cache.gather(layer, m.block_table("a").blocks, 10, cpu=True) for layer in range(3)]
    m.allocate("squatter", 12)  # takes the freed GPU blocks: swap-in must land elsewhere
    squatter = [t.bfloat16() for t in tokens(12, 4)]
    cache.write(0, *squatter, m.slot_mapping("squatter", 0, 12))
    cache.swap_in(m.swap_in(["a"]))
    after = [cache.gather(layer, m.block_table("a").blocks, 10) for layer in range(3)]
    for b, c, a in zip(before, on_cpu, after, strict=True):
        assert torch.equal(b[0], c[0]) and torch.equal(b[0], a[0]) and torch.equal(b[1], a[1])


def test_bytes_per_block_and_bad_arguments():
    assert KVCache.bytes_per_block(32, 8, 128, 16) == 2 * 32 * 8 * 128 * 16 * 2
    assert KVCache.bytes_per_block(32, 8, 128, 16, kv_cache_dtype="fp8") == 2 * 32 * 8 * 128 * 16
    cache = KVCache(1, 4, HEADS, HEAD, BS, dtype=torch.float32)
    with pytest.raises(ValueError, match="layer"):
        cache.write(1, *tokens(1, 0), np.array([0]))
    with pytest.raises(ValueError, match="swap space"):
        cache.swap_out(np.array([[0, 0]]))
    with pytest.raises(ValueError, match="num_layers"):
        KVCache(0, 4, HEADS, HEAD, BS)
