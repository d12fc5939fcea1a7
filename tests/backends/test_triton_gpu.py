"""The Triton backend compiled for a CUDA GPU: the full kernel matrix against the reference,
cache writes bit for bit, CUDA-graph capture, 64-bit cache offsets. Run with `pytest -m gpu`
on a machine with CUDA; skipped elsewhere."""

from __future__ import annotations

import pytest
import torch
from kernel_matrix import (
    AttentionCase,
    case_params,
    check_backend_against_reference,
    full_matrix,
    make_inputs,
    run_v1,
    run_v2,
    sampled_matrix,
    tolerance,
)

import kvpager.ops as ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
pytest.importorskip("triton")
CUDA = "cuda"


@pytest.mark.parametrize("case", case_params(full_matrix()))
def test_full_matrix_matches_reference(case: AttentionCase) -> None:
    check_backend_against_reference(case, "triton", CUDA)


@pytest.mark.parametrize("tile", [16, 32, 64, 128])
@pytest.mark.parametrize(("num_warps", "num_stages"), [(4, 1), (4, 3), (8, 2)])
@pytest.mark.parametrize("case", case_params(sampled_matrix(6, seed=4)))
def test_tuned_launch_configs_match_reference(case, tile, num_warps, num_stages) -> None:
    """Every configuration the benchmark's sweep may pick computes the same thing."""
    from kvpager.backends.triton.attention import tuned

    if tile % case.block_size:
        pytest.skip("tile smaller than the block")
    with tuned(tile=tile, num_warps=num_warps, num_stages=num_stages):
        check_backend_against_reference(case, "triton", CUDA)


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_reshape_and_cache_on_cuda_is_bit_exact_with_the_cpu_reference(
    dtype, kv_cache_dtype
) -> None:
    """The CPU reference divides by the scale exactly; the kernel uses an IEEE division."""
    gen = torch.Generator().manual_seed(0)
    key = torch.randn(40, 4, 128, generator=gen).mul(5).to(dtype)
    value = torch.randn(40, 4, 128, generator=gen).mul(5).to(dtype)
    slots = torch.randperm(64 * 16, generator=gen)[:40]
    slots[[3, 9]] = -1
    results = []
    for device, backend in (("cpu", "reference"), (CUDA, "triton")):
        kc, vc = ops.allocate_kv_cache(64, 4, 128, 16, dtype=dtype,
                                       kv_cache_dtype=kv_cache_dtype, device=device)
        ops.reshape_and_cache(key.to(device), value.to(device), kc, vc, slots.to(device),
                              kv_cache_dtype, 0.37, torch.tensor(1.3), backend=backend)
        results.append((kc.cpu(), vc.cpu()))
    for ref, got in zip(results[0], results[1], strict=True):
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


def test_merge_attn_states_on_cuda_matches_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    parts = [torch.randn(33, 8, 128, generator=gen).half().to(CUDA) for _ in range(2)]
    lses = [torch.randn(8, 33, generator=gen).mul(3).to(CUDA) for _ in range(2)]
    lses[0][2, 5] = float("inf")
    lses[1][:, 7] = float("-inf")
    outs = []
    for backend in ("reference", "triton"):
        out = torch.empty_like(parts[0])
        out_lse = torch.empty_like(lses[0])
        ops.merge_attn_states(out, parts[0], lses[0], parts[1], lses[1], out_lse,
                              backend=backend)
        outs.append((out, out_lse))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-5)


def test_cpu_scale_tensors_with_cuda_caches() -> None:
    case = AttentionCase((32, 8), 128, 16, "float16", False, "fp8_e4m3", None, seed=2,
                         scale_as_tensor=True)
    inputs = make_inputs(case, CUDA)
    inputs.k_scale, inputs.v_scale = inputs.k_scale.cpu(), inputs.v_scale.cpu()
    want = run_v1(inputs, "reference")
    atol, rtol = tolerance(case.dtype, case.kv_cache_dtype)
    torch.testing.assert_close(run_v1(inputs, "triton"), want, atol=atol, rtol=rtol)
    torch.testing.assert_close(run_v2(inputs, "triton")[0], want, atol=atol, rtol=rtol)


def test_capture_in_a_cuda_graph_and_replay_on_new_data() -> None:
    """With check_indices=False nothing waits for the GPU, so a decode step (cache write,
    v1 and v2) captures into a CUDA graph; replays see the tensors' new contents."""
    case = AttentionCase((32, 8), 128, 16, "bfloat16", True, "fp8_e5m2", None, seed=3,
                         scale_as_tensor=True)
    inputs = make_inputs(case, CUDA, long_len=(3000, 4000))
    s, h, d = inputs.query.shape
    new_k = torch.randn(s, 8, d, device=CUDA, dtype=torch.bfloat16)
    new_v = torch.randn_like(new_k)
    read = {int(b) for row, n in enumerate(inputs.seq_lens.tolist())
            for b in inputs.block_tables[row, : -(-n // 16)].tolist()}
    spare = min(set(range(inputs.key_cache.shape[0])) - read)
    slots = torch.full((s,), -1, dtype=torch.int64, device=CUDA)
    slots[0] = spare * 16 + 3  # token 0 goes to a block no sequence reads; the rest is padding
    out1, out2 = torch.empty_like(inputs.query), torch.empty_like(inputs.query)
    workspace = ops.v2_workspace(s, h, d, inputs.max_seq_len, dtype=inputs.query.dtype,
                                 device=CUDA)

    def step() -> None:
        ops.reshape_and_cache(new_k, new_v, inputs.key_cache, inputs.value_cache, slots,
                              case.kv_cache_dtype, inputs.k_scale, inputs.v_scale,
                              backend="triton", check_indices=False)
        ops.paged_attention_v1(out1, *inputs.args(), backend="triton", check_indices=False)
        ops.paged_attention_v2(out2, *workspace, *inputs.args(), backend="triton",
                               check_indices=False)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    inputs.query.copy_(torch.randn_like(inputs.query))
    graph.replay()
    torch.cuda.synchronize()
    atol, rtol = tolerance(case.dtype, case.kv_cache_dtype)
    want = run_v1(inputs, "reference")
    torch.testing.assert_close(out1, want, atol=atol, rtol=rtol)
    torch.testing.assert_close(out2, want, atol=atol, rtol=rtol)
    stored = inputs.value_cache[spare, :, :, 3].view(torch.float8_e5m2).float()
    torch.testing.assert_close(stored * inputs.v_scale, new_v[0].float(), atol=0.1, rtol=0.13)


@pytest.mark.slow
def test_block_offsets_beyond_two_to_the_31_elements() -> None:
    """A cache of more than 2^31 elements per tensor (8.6 GB in fp16): blocks at its end
    are addressed with 64-bit offsets (the check gpu_verify.py also runs)."""
    from kvpager.verify.steps_attention import check_large_cache

    try:
        found = check_large_cache("triton", CUDA)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 2 x 4.3 GB cache")
    assert found["elements_per_tensor"] > 2**31
