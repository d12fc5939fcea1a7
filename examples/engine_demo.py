"""Run a small random Llama through kvpager's engine and show what the paged cache did.

    python examples/engine_demo.py                      # CPU, reference kernels
    python examples/engine_demo.py --gpu-blocks 12      # tighter cache: preemptions
    python examples/engine_demo.py --device cuda --dtype float16 --backend triton
    python examples/engine_demo.py --model gpt-oss      # window + full layers, sinks, MoE
    python examples/engine_demo.py --model gemma3       # 3 local (window 5) : 1 global

The model is built from a `transformers` LlamaConfig with random weights (nothing is
downloaded). One batch mixes greedy requests of different lengths, one request with four
parallel samples and one beam search of width four, all scheduled together by kvpager's
`Scheduler` over its `KVCacheManager`. The demo prints each request's tokens (and whether
the greedy ones equal transformers' `generate()`), then the memory counters: peak blocks,
copy-on-write copies, blocks shared by forks, swaps and preemptions.

Needs: torch, transformers (`pip install kvpager[engine]`).
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvpager.core.config import CacheConfig, SchedulerConfig
from kvpager.core.memory.hybrid import HybridKVCacheManager
from kvpager.engine import LLMEngine, SamplingParams

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("llama", "gpt-oss", "gemma3"), default="llama",
                   help="architecture of the random model (gpt-oss and gemma3 have "
                        "sliding-window layers of 5 tokens: a hybrid KV cache)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--backend", default="auto",
                   help="kernel backend: auto, reference, triton, cuda")
    p.add_argument("--block-size", type=int, default=8, choices=(8, 16, 32))
    p.add_argument("--gpu-blocks", type=int, default=64,
                   help="device cache size in blocks (try 12 to force preemption)")
    p.add_argument("--cpu-blocks", type=int, default=64, help="CPU swap area in blocks")
    p.add_argument("--preemption", choices=("auto", "swap", "recompute"), default="auto")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_model(seed: int, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    """2 layers, hidden 64, 4 query heads sharing 2 KV heads of size 32, vocab 128."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=512, initializer_range=0.2,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(dtype=dtype, device=device).eval()


def main() -> None:
    args = parse_args()
    dtype = DTYPES[args.dtype]
    if args.model == "llama":
        hf = build_model(args.seed, dtype, args.device)
    else:
        from kvpager.verify.hf_reference import tiny_gemma3, tiny_gpt_oss

        tiny = tiny_gpt_oss if args.model == "gpt-oss" else tiny_gemma3
        hf = tiny(seed=args.seed, dtype=dtype, device=args.device)
    engine = LLMEngine.from_hf(
        hf,
        CacheConfig(num_gpu_blocks=args.gpu_blocks, block_size=args.block_size,
                    num_cpu_blocks=args.cpu_blocks, watermark=0.0),
        SchedulerConfig(preemption=args.preemption),
        backend=args.backend,
    )
    gen = torch.Generator().manual_seed(args.seed + 1)
    lengths = (5, 11, 17, 24, 20, 13)
    prompts = [torch.randint(3, 128, (n,), generator=gen).tolist() for n in lengths]
    greedy = SamplingParams(max_tokens=args.max_tokens)
    params = [greedy] * 4 + [
        SamplingParams(max_tokens=args.max_tokens, n=4, temperature=1.0, seed=args.seed),
        SamplingParams(max_tokens=args.max_tokens, beam_width=4),
    ]
    outputs = engine.generate(prompts, params)

    print(f"backend {engine.backend}, {args.dtype} on {args.device}, block size "
          f"{args.block_size}, {args.gpu_blocks} device blocks, {args.cpu_blocks} CPU blocks")
    for out, prompt, p in zip(outputs, prompts, params, strict=True):
        kind = ("greedy" if p.width == 1 else f"n={p.n} samples" if p.n > 1
                else f"beam width {p.beam_width}")
        print(f"\nrequest {out.request_id}: {kind}, prompt of {len(prompt)} tokens, "
              f"preempted {out.num_preemptions}x")
        for c in out.outputs:
            score = f", score {c.score:.3f}" if c.score is not None else ""
            print(f"  [{c.index}] {list(c.token_ids)} ({c.finish_reason}, logprob "
                  f"{c.cumulative_logprob:.2f}{score})")
        if p.width == 1:
            with torch.inference_mode():
                ref = hf.generate(torch.tensor([prompt], device=args.device),
                                  max_new_tokens=args.max_tokens, do_sample=False)
            same = ref[0, len(prompt):].tolist() == list(out.outputs[0].token_ids)
            print(f"  same tokens as transformers generate(): {'yes' if same else 'no'}")

    s, mem = engine.stats, engine.memory_usage()
    block_kib = mem["bytes_per_block"] / 1024
    print(f"\nsteps {s.steps}: {s.prefill_tokens} prefill + {s.decode_tokens} decode tokens")
    print(f"peak device blocks {s.peak_blocks_used} of {mem['gpu_blocks']} "
          f"({s.peak_blocks_used * block_kib:.1f} KiB, {block_kib:.1f} KiB per block)")
    print(f"forks {s.forks} sharing {s.fork_shared_blocks} blocks; copy-on-write copies "
          f"{s.cow_copies}; saved {s.blocks_saved_by_sharing} block copies")
    print(f"preemptions {s.preemptions}; blocks swapped out {s.swapped_out}, in "
          f"{s.swapped_in}")
    if isinstance(engine.manager, HybridKVCacheManager):
        print(f"KV-cache groups {[g.kind for g in engine.manager.groups]}; blocks released "
              f"out of sliding windows {engine.manager.num_released_blocks}")


if __name__ == "__main__":
    main()
