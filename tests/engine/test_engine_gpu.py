"""The engine on a GPU, every backend that runs there, fp32 / fp16 / bf16, against
transformers on the same GPU. Run with `pytest -m gpu`; skipped without CUDA.

Half-precision paths round differently from transformers', so greedy tokens are compared
tolerance-aware (`hf_reference.assert_greedy_within_tolerance`): each must be the
reference's argmax up to the rounding the dtype explains, and equal to generate()'s until
generate() itself meets a near tie.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_engine, require_backend
from hf_reference import assert_greedy_within_tolerance, hf_beams, make_prompts, tiny_llama

from kvpager.engine import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LENGTHS = (5, 11, 17, 8, 24, 40)
MAX_NEW = 24
BACKENDS = ("reference", "triton", "cuda")


@pytest.fixture(scope="module", params=[torch.float32, torch.float16, torch.bfloat16],
                ids=lambda d: str(d).removeprefix("torch."))
def gpu_model(request):
    return tiny_llama(dtype=request.param, device="cuda"), request.param


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_matches_transformers_on_gpu(gpu_model, backend):
    hf, dtype = gpu_model
    require_backend(backend, "cuda", dtype)
    prompts = make_prompts(LENGTHS)
    engine = make_engine(hf, backend=backend)
    outputs = engine.generate(prompts, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    for prompt, out in zip(prompts, outputs, strict=True):
        assert_greedy_within_tolerance(hf, prompt, list(out.outputs[0].token_ids), MAX_NEW,
                                       dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_samples_share_blocks_on_gpu(gpu_model, backend):
    hf, dtype = gpu_model
    require_backend(backend, "cuda", dtype)
    (prompt,) = make_prompts((20,), seed=5)
    engine = make_engine(hf, backend=backend)
    params = SamplingParams(max_tokens=10, n=4, temperature=1.0, seed=1, ignore_eos=True)
    first = engine.generate([prompt], params)[0]
    again = make_engine(hf, backend=backend).generate([prompt], params)[0]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    # 2 shared full prompt blocks + 4 samples x 2 private blocks (see the CPU test).
    assert engine.stats.peak_blocks_used == 10 and engine.stats.cow_copies == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_beams_and_swap_pressure_fp32_on_gpu(backend):
    require_backend(backend, "cuda", torch.float32)
    hf = tiny_llama(device="cuda")
    prompt = make_prompts((13, 20), seed=3)[1]
    want = hf_beams(hf, prompt, 12, 4, num_return=4)
    got = make_engine(hf, backend=backend).generate(
        [prompt], SamplingParams(max_tokens=12, beam_width=4))[0]
    assert [list(c.token_ids) for c in got.outputs] == [t for t, _ in want]
    # Swapping through pinned host memory keeps greedy tokens exact.
    prompts = make_prompts((5, 11, 17, 24), seed=11)
    engine = make_engine(hf, backend=backend, num_gpu_blocks=8, num_cpu_blocks=64,
                         preemption="swap")
    outputs = engine.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    assert engine.stats.swapped_out > 0
    for prompt, out in zip(prompts, outputs, strict=True):
        assert_greedy_within_tolerance(hf, prompt, list(out.outputs[0].token_ids), 16,
                                       torch.float32)


@pytest.mark.parametrize("arch", ["gpt_oss", "gemma3"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hybrid_models_on_gpu(arch, backend):
    """gpt-oss and Gemma 3 (window 5 with blocks of 8, sinks for gpt-oss) on the GPU in
    float32; a backend whose kernels do not take a window or sinks yet skips with its own
    reason."""
    from hf_reference import tiny_gemma3, tiny_gpt_oss

    from kvpager.backends import BackendUnavailableError

    require_backend(backend, "cuda", torch.float32)
    hf = (tiny_gpt_oss if arch == "gpt_oss" else tiny_gemma3)(device="cuda")
    prompts = make_prompts((5, 13, 30), seed=5)
    try:
        outputs = make_engine(hf, backend=backend).generate(
            prompts, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    except BackendUnavailableError as exc:
        pytest.skip(f"backend {backend!r}: {exc}")
    for prompt, out in zip(prompts, outputs, strict=True):
        assert_greedy_within_tolerance(hf, prompt, list(out.outputs[0].token_ids), MAX_NEW,
                                       torch.float32)
