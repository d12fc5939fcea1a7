"""The independent side of the engine checks: a tiny random Llama and `transformers`' own
generation on it (contiguous cache, its own attention), plus helpers to read the results.

Shared by tests/engine (through tests/engine/hf_reference.py, which skips without
transformers) and benchmarks/gpu_verify.py's engine step; importing it needs transformers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import transformers

VOCAB = 128
EOS = 2  # LlamaConfig's default eos id, which generate() stops on unless told otherwise


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu",
               **overrides: object):
    """2 layers, hidden 64, 4 query heads and 2 KV heads of size 32 (GQA), vocab 128, random
    weights. initializer_range 0.2 (ten times the default) spreads the logits so that the
    top two tokens rarely lie within rounding of each other: greedy comparisons stay
    meaningful."""
    fields: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=32, max_position_embeddings=512, initializer_range=0.2,
                  tie_word_embeddings=False, eos_token_id=EOS, bos_token_id=1)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    # the ignore: transformers wraps `to` in a decorator whose type mypy misreads as unbound
    return model.to(dtype=dtype, device=device).eval()  # type: ignore[call-arg]


def _perturb(model, seed: int) -> None:
    """Give norms and biases random values (transformers initialises them to constants), so
    that a check exercises every weight's role: norm weights move by N(0, 0.1), biases and
    attention sinks are drawn from N(0, 0.5)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "norm" in name:
                param.add_(0.1 * noise.to(param.dtype))
            elif name.endswith("bias") or name.endswith("sinks"):
                param.copy_(0.5 * noise.to(param.dtype))


#: A window of 5 tokens with blocks of 8: sequences of a few dozen tokens run far past it and
#: their window groups release blocks.
TINY_WINDOW = 5


def tiny_gpt_oss(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 **overrides: object):
    """gpt-oss in miniature: 4 layers alternating sliding window (5 tokens) and full
    attention, learned sinks, YaRN rotary scaling (factor 8 over 64 positions), 4 experts of
    which 2 per token, hidden 64, 4 query heads and 2 KV heads of size 32, random weights."""
    fields: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64,
                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=32, num_local_experts=4, num_experts_per_tok=2,
                  sliding_window=TINY_WINDOW, max_position_embeddings=512,
                  initializer_range=0.2, tie_word_embeddings=False, eos_token_id=EOS,
                  bos_token_id=1, pad_token_id=0,
                  rope_parameters={"rope_type": "yarn", "factor": 8.0, "beta_fast": 32.0,
                                   "beta_slow": 1.0, "truncate": False, "rope_theta": 150000.0,
                                   "original_max_position_embeddings": 64})
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.GptOssForCausalLM(transformers.GptOssConfig(**fields))
    _perturb(model, seed)
    return model.to(dtype=dtype, device=device).eval()  # type: ignore[call-arg]


def tiny_gemma3(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu",
                **overrides: object):
    """Gemma 3 text in miniature: 4 layers, local (window 5) : global = 3 : 1 as
    [local, local, global, local], hidden 64, 4 query heads and 2 KV heads of size 32,
    random weights (norms perturbed around Gemma's 1 + 0), an untied output head (tied,
    the embedding scaled by sqrt(hidden) dominates and random weights only repeat a token)."""
    fields: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=32, sliding_window=TINY_WINDOW, query_pre_attn_scalar=32,
                  layer_types=["sliding_attention", "sliding_attention", "full_attention",
                               "sliding_attention"],
                  max_position_embeddings=512, initializer_range=0.2,
                  tie_word_embeddings=False, eos_token_id=EOS, bos_token_id=1, pad_token_id=0)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**fields))
    _perturb(model, seed)
    return model.to(dtype=dtype, device=device).eval()  # type: ignore[call-arg]


def make_prompts(lengths: tuple[int, ...], seed: int = 1) -> list[list[int]]:
    """Random prompts of token ids 3..127 (never the eos id)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths]


def _config(model, eos: tuple[int, ...], **settings: object):
    """The model's generation config with these stop ids and settings. eos () disables
    stopping with an id outside the vocabulary (None would fall back to the model's eos)."""
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = list(eos) or [model.config.vocab_size]
    config.pad_token_id = 0
    config.do_sample = False
    for name, value in settings.items():
        setattr(config, name, value)
    return config


def _cut_at_eos(tokens: list[int], eos: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


@torch.inference_mode()
def hf_greedy(model, prompt: list[int], max_new_tokens: int,
              eos: tuple[int, ...] = (EOS,)) -> tuple[list[int], list[float]]:
    """transformers' greedy generate() on one unpadded prompt: (new tokens up to and
    including eos, top-1 minus top-2 logit margin at each step)."""
    device = next(model.parameters()).device
    config = _config(model, eos, max_new_tokens=max_new_tokens, output_logits=True,
                     return_dict_in_generate=True)
    out = model.generate(torch.tensor([prompt], device=device), generation_config=config)
    new = out.sequences[0, len(prompt):].tolist()
    top2 = torch.stack(out.logits)[:, 0].float().topk(2, dim=-1).values
    return _cut_at_eos(new, eos), (top2[:, 0] - top2[:, 1]).tolist()


@torch.inference_mode()
def hf_greedy_batch(model, prompts: list[list[int]], max_new_tokens: int,
                    eos: tuple[int, ...] = (EOS,)) -> list[list[int]]:
    """generate() on the whole batch at once, left-padded as transformers requires."""
    width = max(map(len, prompts))
    device = next(model.parameters()).device
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                        device=device)
    out = model.generate(ids, attention_mask=mask,
                         generation_config=_config(model, eos, max_new_tokens=max_new_tokens))
    return [_cut_at_eos(row[width:].tolist(), eos) for row in out]


@torch.inference_mode()
def hf_beams(model, prompt: list[int], max_new_tokens: int, num_beams: int,
             num_return: int = 1, length_penalty: float = 1.0,
             early_stopping: bool | str = False, eos: tuple[int, ...] = (EOS,)
             ) -> list[tuple[list[int], float]]:
    """transformers' beam search: the best `num_return` (new tokens, score), best first."""
    config = _config(model, eos, max_new_tokens=max_new_tokens, num_beams=num_beams,
                     num_return_sequences=num_return, length_penalty=length_penalty,
                     early_stopping=early_stopping, output_scores=True,
                     return_dict_in_generate=True)
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([prompt], device=device), generation_config=config)
    lengths = (out.beam_indices >= 0).sum(dim=1).tolist()
    return [(out.sequences[i, len(prompt): len(prompt) + lengths[i]].tolist(),
             float(out.sequences_scores[i])) for i in range(num_return)]


@torch.inference_mode()
def hf_logprobs(model, prompt: list[int], generated: list[int]) -> list[float]:
    """log p(generated[i] | prompt + generated[:i]) by one full forward pass (no cache)."""
    ids = torch.tensor([prompt + generated], device=next(model.parameters()).device)
    logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(generated) - 1)
    return logp.cpu()[rows, torch.tensor(generated)].tolist()


#: Largest logit shortfall of a chosen token below the reference's best that rounding in
#: each dtype explains (logits here reach about 6; a bf16 step there is 1/32).
NEAR_TIE = {torch.float32: 1e-4, torch.float16: 0.05, torch.bfloat16: 0.25}


@torch.inference_mode()
def greedy_shortfalls(model, prompt: list[int], generated: list[int]) -> list[float]:
    """For each generated token: the reference's best logit minus the token's logit, with
    the reference run (one full forward, no cache) on the engine's own sequence. 0 means
    the token is the reference's argmax; a small positive value is a near tie."""
    ids = torch.tensor([prompt + generated], device=next(model.parameters()).device)
    logits = model(ids).logits[0].float().cpu()
    rows = logits[len(prompt) - 1: len(prompt) - 1 + len(generated)]
    chosen = rows[torch.arange(len(generated)), torch.tensor(generated)]
    return (rows.max(dim=-1).values - chosen).tolist()


def assert_greedy_within_tolerance(model, prompt: list[int], got: list[int],
                                   max_new_tokens: int, dtype: torch.dtype) -> int:
    """Tolerance-aware greedy check: every engine token is the reference's argmax up to
    `NEAR_TIE[dtype]` on the engine's own prefix, and the tokens equal generate()'s until
    the first step where generate() itself saw two tokens within that tolerance. Returns
    the number of tokens equal to generate()'s."""
    tol = NEAR_TIE[dtype]
    shortfalls = greedy_shortfalls(model, prompt, got)
    assert max(shortfalls) <= tol, f"a token {max(shortfalls):.3g} below the argmax"
    want, margins = hf_greedy(model, prompt, max_new_tokens, eos=())
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            assert margins[i] < tol, f"token {i}: engine {g}, generate() {w} with a gap of " \
                                     f"{margins[i]:.3g}"
            return i
    assert len(got) == len(want)
    return len(want)


__all__ = ["EOS", "NEAR_TIE", "TINY_WINDOW", "VOCAB", "assert_greedy_within_tolerance",
           "greedy_shortfalls",
           "hf_beams", "hf_greedy", "hf_greedy_batch", "hf_logprobs", "make_prompts",
           "tiny_gemma3", "tiny_gpt_oss", "tiny_llama"]
