"""The Triton attention kernels on the CPU, in Triton's interpreter, against the reference.

Without CUDA, TRITON_INTERPRET=1 is set here before any kernel module is imported (Triton
fixes interpreted or compiled when a kernel is defined). The interpreter runs each program
in Python, so shapes stay small: long sequences just past 1024 tokens (three partitions),
a sample of the kernel matrix that still covers every value of every dimension, and every
block-sparse configuration on the cheapest head layout (MQA). GPU runs of the full matrix
are in test_triton_gpu.py.
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from dense_attention import dense_attention
from kernel_matrix import (
    HEADS,
    SPARSE_CONFIGS,
    AttentionCase,
    assert_partitions_close,
    case_params,
    check_backend_against_reference,
    full_matrix,
    make_inputs,
    run_v1,
    run_v2,
    sampled_matrix,
    tolerance,
    used_partitions,
)

import kvpager.ops as ops
from kvpager.backends.triton import BACKEND

CPU = torch.device("cpu")
_reason = BACKEND.unavailable_reason() or BACKEND.device_reason(CPU)
pytestmark = pytest.mark.skipif(
    _reason is not None, reason=f"{_reason} (test_triton_gpu.py runs the kernels on CUDA)"
)

#: Long sequences just past 1024 tokens: three v2 partitions, cheap to interpret.
CPU_LONG = (1025, 1100)
#: Nine cases that cover every value of every matrix dimension (checked below).
SAMPLE = sampled_matrix(9, seed=0)
#: Every block-sparse configuration once, on MQA (8 query heads, 1 kv head: 4 programs a
#: call) with block sizes in rotation; query-head sliding (step >= 0) varies the pattern
#: inside the one group, which is the case that needs per-head masks within a tile.
SPARSE_MQA = [
    next(c for c in full_matrix()
         if c.sparse == config and c.heads == (8, 1) and c.block_size == (8, 16, 32)[i % 3])
    for i, config in enumerate(SPARSE_CONFIGS)
]


def _coverage(case: AttentionCase) -> set[tuple[str, object]]:
    found = {(f.name, getattr(case, f.name)) for f in dataclasses.fields(case)
             if f.name not in ("seed", "sparse")}
    found.add(("dense", case.sparse is None))
    if case.sparse is not None:
        found |= {(f"sparse[{i}]", v) for i, v in enumerate(case.sparse)}
    return found


def test_the_sample_covers_every_value_of_every_dimension() -> None:
    everything = set().union(*map(_coverage, full_matrix()))
    covered = set().union(*map(_coverage, SAMPLE))
    assert everything - covered == set()
    assert {c.heads for c in SAMPLE} == set(HEADS)  # MHA, two GQA ratios, MQA
    assert {c.sparse for c in SPARSE_MQA} == set(SPARSE_CONFIGS)


@pytest.mark.parametrize("case", case_params(SAMPLE))
def test_matrix_sample_matches_reference(case: AttentionCase) -> None:
    """v1, v2's output, and v2's exp_sums / max_logits / tmp_out of every used partition."""
    check_backend_against_reference(case, "triton", CPU, long_len=CPU_LONG)


@pytest.mark.parametrize("case", case_params(SPARSE_MQA))
def test_every_block_sparse_config_matches_reference(case: AttentionCase) -> None:
    check_backend_against_reference(case, "triton", CPU, long_len=CPU_LONG)


@pytest.fixture
def gpu_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the tile sizes a GPU uses (64 tokens at head size 128) instead of the
    interpreter's 256, so several tiles make up one partition."""
    from kvpager.backends.triton import attention

    monkeypatch.setattr(attention, "INTERPRETER_TILE_TOKENS", None)


@pytest.mark.parametrize("case", case_params([
    AttentionCase((32, 8), 128, 16, "float16", True, "auto", None, seed=5),
    AttentionCase((4, 4), 80, 8, "bfloat16", False, "fp8_e4m3", (2, 4, 32, 1), seed=6,
                  scale_as_tensor=True),
]))
def test_gpu_tile_sizes_match_dense_attention(case: AttentionCase, gpu_tiles) -> None:
    """With the GPU's tiles, against the float64 dense oracle (independent of the reference)."""
    inputs = make_inputs(case, long_len=CPU_LONG)
    want = dense_attention(inputs)
    atol, rtol = tolerance(case.dtype, case.kv_cache_dtype)
    torch.testing.assert_close(run_v1(inputs, "triton").double(), want.out, atol=atol,
                               rtol=rtol, check_dtype=False)
    out, sums, maxes, tmp = run_v2(inputs, "triton")
    torch.testing.assert_close(out.double(), want.out, atol=atol, rtol=rtol, check_dtype=False)
    assert_partitions_close(inputs, sums, maxes, tmp, want.part_sum, want.part_max,
                            want.part_out)


def test_hand_computed_gqa_two_tokens() -> None:
    """Two query heads share one kv head; token 0's key is 3 e_0, values 1 and -2:
    out_h = (e^(s q_h0 3) * 1 + 1 * -2) / (e^(s q_h0 3) + 1)."""
    head_size, block_size, scale = 32, 8, 0.5
    key_cache, value_cache = ops.allocate_kv_cache(2, 1, head_size, block_size,
                                                   dtype=torch.float32)
    key_cache[1, 0, 0, 0, 0] = 3.0  # element 0 of token 0: [block, head, 0 // x, token, 0 % x]
    value_cache[1, 0, :, 0] = 1.0
    value_cache[1, 0, :, 1] = -2.0
    query = torch.zeros(1, 2, head_size)
    query[0, 0, 0], query[0, 1, 0] = 2.0, -1.0
    out = torch.empty_like(query)
    ops.paged_attention_v1(out, query, key_cache, value_cache, 1, scale,
                           torch.tensor([[1]], dtype=torch.int32),
                           torch.tensor([2], dtype=torch.int32), block_size, 2, None, "auto",
                           1.0, 1.0, backend="triton")
    for head, q0 in enumerate((2.0, -1.0)):
        w0 = math.exp(scale * q0 * 3.0)
        torch.testing.assert_close(out[0, head], torch.full((head_size,),
                                                            (w0 - 2.0) / (w0 + 1.0)))


def _dense_case(**changes) -> AttentionCase:
    base = AttentionCase((8, 2), 64, 16, "float32", False, "auto", None, seed=11)
    return dataclasses.replace(base, **changes)


def test_padding_ids_and_stale_nan_are_never_read() -> None:
    """-1 past each sequence's blocks in the table, and NaN in every cache slot no sequence
    owns or past its length: outputs are finite and equal the reference's on the clean
    cache (test_unread_and_nonfinite.py runs the same check on every backend)."""
    inputs = make_inputs(_dense_case(), long_len=CPU_LONG, pad_block_id=-1)
    want = run_v1(inputs, "reference")
    key_cache, value_cache = inputs.key_cache, inputs.value_cache
    owned = torch.zeros(key_cache.shape[0], dtype=torch.bool)
    for row, length in enumerate(inputs.seq_lens.tolist()):
        blocks = inputs.block_tables[row, : -(-length // 16)].long()
        owned[blocks] = True
        last, used = blocks[-1], length - (len(blocks) - 1) * 16
        key_cache[last, :, :, used:] = float("nan")
        value_cache[last, :, :, used:] = float("nan")
    key_cache[~owned] = float("nan")
    value_cache[~owned] = float("nan")
    got = run_v1(inputs, "triton")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(run_v2(inputs, "triton")[0], want, atol=1e-3, rtol=1e-5)


def test_empty_sequence_outputs_zero_and_writes_no_partition() -> None:
    inputs = make_inputs(_dense_case(), lengths=[0, 600, 0, 9])
    out = run_v1(inputs, "triton")
    assert out[[0, 2]].eq(0).all()
    out_v2, sums, _, tmp = run_v2(inputs, "triton")  # buffers start as NaN
    assert out_v2[[0, 2]].eq(0).all()
    assert sums[[0, 2]].isnan().all() and tmp[[0, 2]].isnan().all()
    assert sums[1, :, :2].isfinite().all() and sums[3, :, 1].isnan().all()
    torch.testing.assert_close(out_v2, run_v1(inputs, "reference"), atol=1e-3, rtol=1e-5)


def test_heads_whose_blocks_are_all_masked_output_zero() -> None:
    """local_blocks 0 and vert_stride 4: a one-block sequence keeps block 0 only for heads
    with (0 + offset) % 4 == 0, offset = head * step + 1 (step 1: heads 3 and 7 of 8)."""
    case = AttentionCase((8, 2), 64, 16, "float16", True, "auto", (0, 4, 16, 1), seed=3)
    inputs = make_inputs(case, lengths=[5, 12])
    out = run_v1(inputs, "triton")
    attends = torch.tensor([h % 4 == 3 for h in range(8)])
    assert out[:, ~attends].eq(0).all()
    assert out[:, attends].abs().sum() > 0
    out_v2, sums, maxes, tmp = run_v2(inputs, "triton")
    assert out_v2[:, ~attends].eq(0).all()
    # An empty partition: max -inf, sum 0, output 0 (the reference's convention).
    assert maxes[:, ~attends, 0].eq(float("-inf")).all() and sums[:, ~attends, 0].eq(0).all()
    assert tmp[:, ~attends, 0].eq(0).all()
    torch.testing.assert_close(out_v2, run_v1(inputs, "reference"), atol=1e-3, rtol=1e-3)


def test_query_row_stride_and_fused_kv_cache_block_stride() -> None:
    """query sliced from a fused QKV tensor (row stride 3 H D) and K/V caches that are views
    of one [blocks, 2, ...] allocation (block stride twice the block's size), as engines
    store them."""
    inputs = make_inputs(_dense_case(dtype="float16"), long_len=CPU_LONG)
    want = run_v1(inputs, "reference")
    s, h, d = inputs.query.shape
    qkv = torch.zeros(s, 3 * h * d, dtype=inputs.query.dtype)
    qkv[:, : h * d] = inputs.query.reshape(s, -1)
    inputs.query = qkv[:, : h * d].view(s, h, d)
    fused = torch.stack([inputs.key_cache.reshape(inputs.key_cache.shape[0], -1),
                         inputs.value_cache.reshape(inputs.value_cache.shape[0], -1)], 1)
    inputs.key_cache = fused[:, 0].view(inputs.key_cache.shape)
    inputs.value_cache = fused[:, 1].view(inputs.value_cache.shape)
    assert inputs.query.stride(0) == 3 * h * d
    assert inputs.key_cache.stride(0) == 2 * inputs.key_cache[0].numel()
    torch.testing.assert_close(run_v1(inputs, "triton"), want, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(run_v2(inputs, "triton")[0], want, atol=1e-3, rtol=1e-3)


def test_v2_partition_buffers_agree_with_dense_partitions() -> None:
    """exp_sums / max_logits / tmp_out of each used partition against the float64 oracle;
    partitions past a sequence keep the NaN they started with."""
    case = AttentionCase((16, 4), 96, 32, "float32", True, "fp8_e5m2", None, seed=21)
    inputs = make_inputs(case, long_len=CPU_LONG)
    want = dense_attention(inputs)
    _, sums, maxes, tmp = run_v2(inputs, "triton")
    assert_partitions_close(inputs, sums, maxes, tmp, want.part_sum, want.part_max,
                            want.part_out)
    unused = ~used_partitions(inputs.seq_lens, inputs.num_partitions()).expand_as(sums)
    assert unused.any() and sums[unused].isnan().all() and tmp[unused].isnan().all()


def test_more_partitions_than_the_reduce_reads_at_once() -> None:
    """33 partitions (16,389 tokens): the reduce walks its 32-partition chunks twice."""
    case = AttentionCase((2, 1), 32, 32, "float32", True, "auto", None, seed=8)
    inputs = make_inputs(case, lengths=[32 * 512 + 5, 700])
    assert inputs.num_partitions() == 33
    want = dense_attention(inputs)
    out, sums, maxes, tmp = run_v2(inputs, "triton")
    torch.testing.assert_close(out.double(), want.out, atol=1e-4, rtol=1e-4, check_dtype=False)
    assert_partitions_close(inputs, sums, maxes, tmp, want.part_sum, want.part_max,
                            want.part_out)
