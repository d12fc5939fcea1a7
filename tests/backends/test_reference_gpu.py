"""The reference backend on a GPU: attention against the dense oracle, cache ops across
devices. Run with `pytest -m gpu` on a machine with CUDA; skipped elsewhere."""

from __future__ import annotations

import pytest
import torch
from dense_attention import dense_attention
from kernel_matrix import (
    case_params,
    check_backend_against_reference,
    make_inputs,
    run_v1,
    run_v2,
    sampled_matrix,
    tolerance,
)

import kvpager.ops as ops
from kvpager.backends.validation import OpArgumentError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CUDA = "cuda"


@pytest.mark.parametrize("case", case_params(sampled_matrix(120, seed=7)))
def test_reference_on_cuda_matches_dense_attention(case) -> None:
    inputs = make_inputs(case, CUDA)
    want = dense_attention(inputs)
    atol, rtol = tolerance(case.dtype, case.kv_cache_dtype)
    torch.testing.assert_close(run_v1(inputs, "reference").cpu().double(), want.out,
                               atol=atol, rtol=rtol, check_dtype=False)
    torch.testing.assert_close(run_v2(inputs, "reference")[0].cpu().double(), want.out,
                               atol=atol, rtol=rtol, check_dtype=False)


@pytest.mark.parametrize("case", case_params(sampled_matrix(20, seed=8)))
def test_matrix_helper_accepts_the_reference_itself(case) -> None:
    """The helper other backends' matrix tests call, run with the reference as the backend."""
    check_backend_against_reference(case, "reference", CUDA)


@pytest.mark.parametrize("pinned", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.uint8])
def test_swap_blocks_between_cpu_and_cuda_bit_exact(pinned, dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    gpu = torch.randint(0, 250, (16, 2, 64, 16), generator=gen).to(dtype).to(CUDA)
    cpu = torch.zeros(6, 2, 64, 16, dtype=dtype, pin_memory=pinned)
    out_map = torch.tensor([[3, 0], [4, 1], [5, 2], [9, 5]])  # a run of three, then one
    ops.swap_blocks(gpu, cpu, out_map)
    torch.cuda.synchronize()
    for s, d in out_map.tolist():
        assert torch.equal(cpu[d], gpu[s].cpu())
    back = torch.zeros_like(gpu)
    in_map = torch.tensor([[0, 10], [1, 11], [5, 2]])
    ops.swap_blocks(cpu, back, in_map)
    torch.cuda.synchronize()
    for s, d in in_map.tolist():
        assert torch.equal(back[d].cpu(), cpu[s])
    assert back[[0, 1, 3]].eq(0).all()


def test_cache_ops_on_cuda_match_cpu() -> None:
    gen = torch.Generator().manual_seed(1)
    key = torch.randn(20, 2, 64, generator=gen).half()
    value = torch.randn(20, 2, 64, generator=gen).half()
    slots = torch.randperm(64, generator=gen)[:20]
    slots[3] = -1
    results = []
    for device in ("cpu", CUDA):
        kc, vc = ops.allocate_kv_cache(4, 2, 64, 16, dtype=torch.float16,
                                       kv_cache_dtype="fp8_e4m3", device=device)
        ops.reshape_and_cache(key.to(device), value.to(device), kc, vc, slots.to(device),
                              "fp8_e4m3", 0.5, torch.tensor(0.25, device=device))
        ops.copy_blocks([kc], [vc], torch.tensor([[0, 3]], device=device))
        results.append((kc.cpu(), vc.cpu()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_data_checks_on_cuda_name_the_argument_and_devices_must_agree() -> None:
    case = sampled_matrix(1, seed=3)[0]
    inputs = make_inputs(case, CUDA)
    inputs.block_tables[0, 0] = inputs.key_cache.shape[0]
    with pytest.raises(OpArgumentError, match=r"^block_tables"):
        run_v1(inputs, "reference")
    inputs = make_inputs(case, CUDA)
    inputs.key_cache = inputs.key_cache.cpu()
    with pytest.raises(OpArgumentError, match=r"^key_cache is on cpu"):
        run_v1(inputs, "reference")
