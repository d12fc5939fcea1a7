"""Choosing next tokens from logits: greedy, or seeded sampling with temperature, top-k, top-p.

Reproducibility is per sample, not per batch: sample j of a seeded request owns a
`torch.Generator` seeded from (seed, j) and only ever draws one token per step from it.
Which other requests share the batch, and whether the sequence was swapped out or
recomputed, therefore never changes its tokens: the property the preemption tests rely on.
"""

from __future__ import annotations

import numpy as np
import torch

from kvpager.engine.params import SamplingParams


def sample_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of sample `index` of a request seeded with `seed`.

    The two numbers go through numpy's SeedSequence so that neighbouring seeds and indices
    give unrelated streams (seeding with `seed + index` would make sample 1 of seed 0 replay
    sample 0 of seed 1).
    """
    state = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state) & ((1 << 63) - 1))
    return gen


def filtered_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """`logits / temperature` with tokens outside top-k / top-p set to -inf.

    logits: float32 `[vocab]`; returns a new float32 `[vocab]` tensor.
    """
    scaled = logits / params.temperature
    vocab = scaled.numel()
    if 0 < params.top_k < vocab:
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        probs, order = torch.sort(torch.softmax(scaled, dim=-1), descending=True)
        # Keep a token while the mass strictly before it is below top_p: the most likely
        # token always survives, and so does the one that crosses the threshold.
        before = torch.cumsum(probs, dim=-1) - probs
        drop = order[before >= params.top_p]
        scaled = scaled.index_fill(0, drop, float("-inf"))
    return scaled


def choose_tokens(
    logits: torch.Tensor, params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> tuple[list[int], list[float]]:
    """Next token of each row and the model's log-probability of it.

    logits: float32 `[rows, vocab]`, the model's raw logits. Greedy rows take the argmax;
    the others sample with their generator (None: torch's global one). The returned
    log-probabilities are those of the unmodified model distribution, log_softmax(logits),
    whatever the temperature: they score the sequence, not the sampler.
    """
    if logits.dim() != 2 or logits.shape[0] != len(params) or len(params) != len(generators):
        raise ValueError(f"logits must be [rows, vocab] with one params and generator per row, "
                         f"got {tuple(logits.shape)}, {len(params)} params, "
                         f"{len(generators)} generators")
    if not len(params):
        return [], []
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    tokens = torch.argmax(logits, dim=-1)
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            continue
        probs = torch.softmax(filtered_logits(logits[row].float(), p), dim=-1)
        tokens[row] = torch.multinomial(probs, 1, generator=gen)[0]
    chosen = log_probs.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist()


__all__ = ["choose_tokens", "filtered_logits", "sample_generator"]
