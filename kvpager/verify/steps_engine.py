"""The engine's greedy decode against transformers' generate() on the same device.

A tiny random Llama (`hf_reference.tiny_llama`) in float32, float16 and bfloat16, and tiny
gpt-oss and Gemma 3 models (sliding window of 5 tokens, sinks, MoE) in float32 (results keyed
`gpt_oss/...`, `gemma3/...`; a dry run checks those on the reference backend only), every
backend that serves them here. The tokens must equal generate()'s until generate() itself
meets a near tie (two logits within the rounding the dtype explains: 1e-4 in float32), and
every token must be the reference's argmax up to that rounding
(`hf_reference.assert_greedy_within_tolerance`, as tests/engine/test_engine_gpu.py); the
record says how many tokens equal generate()'s. Needs transformers, which a bare GPU
machine may lack: the step is then skipped with that reason.
"""

from __future__ import annotations

import importlib.util

from kvpager.verify.runner import FAIL, PASS, Context, StepSkipped, error_line

BLOCK_SIZE = 8


def _engine(hf_model, backend: str):
    from kvpager.core.config import CacheConfig, SchedulerConfig
    from kvpager.engine import LLMEngine

    cache = CacheConfig(num_gpu_blocks=256, block_size=BLOCK_SIZE, watermark=0.0)
    return LLMEngine.from_hf(hf_model, cache, SchedulerConfig(), backend=backend)


def engine_step(ctx: Context) -> dict:
    if importlib.util.find_spec("transformers") is None:
        raise StepSkipped("transformers is not installed here (the reference side of the "
                          "check); run tests/engine on a machine that has it")
    import torch

    from kvpager import backends
    from kvpager.engine import SamplingParams
    from kvpager.verify import hf_reference as hf

    s = ctx.sizes
    prompts = hf.make_prompts(s.engine_prompt_lengths)
    params = SamplingParams(max_tokens=s.engine_new_tokens, ignore_eos=True)
    results: dict[str, dict] = {}
    # Llama in every dtype; the hybrid models (sliding window, sinks, MoE) in float32.
    runs = [("", hf.tiny_llama, dtype) for dtype in (torch.float32, torch.float16,
                                                     torch.bfloat16)]
    runs += [("gpt_oss/", hf.tiny_gpt_oss, torch.float32),
             ("gemma3/", hf.tiny_gemma3, torch.float32)]
    for prefix, build, dtype in runs:
        if ctx.dry_run and dtype != torch.float32:
            continue  # half precision on the CPU says nothing about the GPU paths
        model = build(dtype=dtype, device=ctx.device)
        for backend in ("reference", "triton", "cuda"):
            key = f"{prefix}{backend}/{str(dtype).removeprefix('torch.')}"
            if ctx.dry_run and prefix and backend != "reference":
                results[key] = {"skipped": "dry run: interpreted kernels checked on Llama"}
                continue
            try:
                backends.resolve(backend, torch.device(ctx.device), head_size=32,
                                 block_size=BLOCK_SIZE, dtype=dtype)
            except backends.BackendUnavailableError as exc:
                results[key] = {"skipped": str(exc).splitlines()[0][:300]}
                continue
            try:
                outputs = _engine(model, backend).generate(prompts, params)
                exact = 0
                for prompt, out in zip(prompts, outputs, strict=True):
                    exact += hf.assert_greedy_within_tolerance(
                        model, prompt, list(out.outputs[0].token_ids), s.engine_new_tokens,
                        dtype)
                results[key] = {"ok": True, "tokens_equal_to_generate": exact,
                                "tokens": len(prompts) * s.engine_new_tokens}
            except Exception as exc:
                results[key] = {"ok": False, "error": error_line(exc)}
    failed = any(v.get("ok") is False for v in results.values())
    ran = [k for k, v in results.items() if "skipped" not in v]
    return {"status": FAIL if failed else PASS, "results": results,
            "note": f"{len(ran)} backend/dtype pairs ran"
                    + (", some differ from transformers" if failed else "")}


__all__ = ["engine_step"]
