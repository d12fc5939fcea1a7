"""Layout helpers, the v1/v2 choice of `paged_attention`, and float vs tensor scales."""

from __future__ import annotations

import math

import pytest
import torch

import kvpager.ops as ops


@pytest.mark.parametrize("dtype,x", [(torch.float32, 4), (torch.float16, 8),
                                     (torch.bfloat16, 8), (torch.uint8, 16),
                                     (torch.float8_e4m3fn, 16)])
def test_x_for(dtype, x) -> None:
    assert ops.x_for(dtype) == x


def test_x_for_rejects_non_dtypes_and_wide_types() -> None:
    with pytest.raises(ValueError, match="cache_dtype"):
        ops.x_for("fp8")
    assert ops.x_for(torch.float64) == 2  # 16 bytes still split evenly


def test_kv_cache_shapes_by_hand() -> None:
    assert ops.kv_cache_shapes(100, 8, 128, 16, torch.float16) == (
        (100, 8, 16, 16, 8), (100, 8, 128, 16))
    assert ops.kv_cache_shapes(3, 1, 80, 32, torch.uint8) == ((3, 1, 5, 32, 16), (3, 1, 80, 32))
    assert ops.kv_cache_shapes(2, 4, 120, 8, torch.float32) == ((2, 4, 30, 8, 4), (2, 4, 120, 8))
    with pytest.raises(ValueError, match="num_blocks"):
        ops.kv_cache_shapes(0, 1, 64, 16, torch.float16)


def test_allocate_kv_cache() -> None:
    key, value = ops.allocate_kv_cache(5, 2, 64, 16, dtype=torch.bfloat16,
                                       kv_cache_dtype="fp8_e5m2")
    assert key.dtype == value.dtype == torch.uint8
    assert key.shape == (5, 2, 4, 16, 16) and value.shape == (5, 2, 64, 16)
    assert not key.any() and not value.any()
    key, _ = ops.allocate_kv_cache(5, 2, 64, 16, dtype=torch.float32)
    assert key.dtype == torch.float32 and key.shape == (5, 2, 16, 16, 4)
    with pytest.raises(ValueError, match="pin_memory"):
        ops.allocate_kv_cache(5, 2, 64, 16, dtype=torch.float32, device="meta", pin_memory=True)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        ops.allocate_kv_cache(5, 2, 64, 16, dtype=torch.float32, kv_cache_dtype="int4")


def test_partitions_and_workspace() -> None:
    assert ops.PARTITION_SIZE == 512
    assert [ops.max_num_partitions(n) for n in (1, 512, 513, 2048, 2049)] == [1, 1, 2, 4, 5]
    exp_sums, max_logits, tmp_out = ops.v2_workspace(3, 8, 64, 1500, dtype=torch.float16)
    assert exp_sums.shape == max_logits.shape == (3, 8, 3)
    assert exp_sums.dtype == max_logits.dtype == torch.float32
    assert tmp_out.shape == (3, 8, 3, 64) and tmp_out.dtype == torch.float16


@pytest.mark.parametrize("max_seq_len,num_seqs,num_heads,v1", [
    (512, 1, 1, True),  # one partition
    (513, 1, 1, False),  # two partitions, 1 (seq, head) pair: split for parallelism
    (513, 16, 32, False),  # 512 pairs is not more than 512
    (513, 16, 33, True),  # 528 pairs fill the GPU
    (8192, 64, 64, True),
    (8193, 64, 64, False),  # too long for v1
])
def test_use_v1_follows_vllm(max_seq_len, num_seqs, num_heads, v1) -> None:
    assert ops.use_v1(max_seq_len, num_seqs, num_heads) is v1


def _batch(num_seqs: int, num_heads: int, length: int, dtype=torch.float16):
    gen = torch.Generator().manual_seed(num_seqs)
    blocks = math.ceil(length / 16)
    key_cache = torch.randn(blocks * num_seqs, 1, 8, 16, 8, generator=gen).to(dtype)
    value_cache = torch.randn(blocks * num_seqs, 1, 64, 16, generator=gen).to(dtype)
    tables = torch.arange(blocks * num_seqs, dtype=torch.int32).reshape(num_seqs, blocks)
    lens = torch.full((num_seqs,), length, dtype=torch.int32)
    query = torch.randn(num_seqs, num_heads, 64, generator=gen).to(dtype)
    return query, key_cache, value_cache, tables, lens


@pytest.mark.parametrize("num_seqs,num_heads,length,version", [
    (2, 4, 300, "v1"), (2, 4, 1100, "v2"), (5, 128, 600, "v1")])
def test_paged_attention_picks_v1_or_v2(monkeypatch, num_seqs, num_heads, length,
                                        version) -> None:
    query, key_cache, value_cache, tables, lens = _batch(num_seqs, num_heads, length)
    want = torch.empty_like(query)
    ops.paged_attention_v1(want, query, key_cache, value_cache, 1, 0.125, tables, lens, 16,
                           length, None, "auto", 1.0, 1.0)
    called = []
    for name in ("paged_attention_v1", "paged_attention_v2"):
        original = getattr(ops, name)

        def record(*args, _name=name, _original=original, **kwargs):
            called.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(ops, name, record)
    out = ops.paged_attention(query, key_cache, value_cache, tables, lens)  # scale 1/sqrt(64)
    assert called == [f"paged_attention_{version}"]
    # v2 rounds each partition's output to float16 before the reduce: one extra rounding
    torch.testing.assert_close(out, want, atol=1e-3, rtol=1e-3)


def test_paged_attention_into_a_given_out_with_explicit_max_seq_len() -> None:
    query, key_cache, value_cache, tables, lens = _batch(2, 4, 100)
    out = torch.empty_like(query)
    assert ops.paged_attention(query, key_cache, value_cache, tables, lens, out=out,
                               max_seq_len=100) is out


def test_float_and_tensor_scales_give_the_same_result() -> None:
    gen = torch.Generator().manual_seed(3)
    key = torch.randn(30, 2, 64, generator=gen).half()
    value = torch.randn(30, 2, 64, generator=gen).half()
    query = torch.randn(2, 4, 64, generator=gen).half()
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    lens = torch.tensor([13, 17], dtype=torch.int32)
    slots = torch.cat([torch.arange(13), torch.arange(17) + 32])
    results = []
    for k_scale, v_scale in [(0.3, 1.7), (torch.tensor(0.3), torch.tensor(1.7)),
                             (torch.tensor([0.3]), torch.tensor([1.7]))]:
        key_cache, value_cache = ops.allocate_kv_cache(4, 2, 64, 16, dtype=torch.float16,
                                                       kv_cache_dtype="fp8")
        ops.reshape_and_cache(key, value, key_cache, value_cache, slots, "fp8", k_scale,
                              v_scale)
        out = ops.paged_attention(query, key_cache, value_cache, tables, lens,
                                  kv_cache_dtype="fp8", k_scale=k_scale, v_scale=v_scale)
        results.append((key_cache, value_cache, out))
    for key_cache, value_cache, out in results[1:]:
        assert torch.equal(key_cache, results[0][0])
        assert torch.equal(value_cache, results[0][1])
        assert torch.equal(out, results[0][2])


def test_sparse_index_ops_are_exported_by_kvpager_ops():
    import kvpager.ops
    import kvpager.sparse

    for name in ("convert_vertical_slash_indexes", "convert_vertical_slash_indexes_mergehead",
                 "top_k_per_row_prefill", "top_k_per_row_decode"):
        assert getattr(kvpager.ops, name) is getattr(kvpager.sparse, name)
