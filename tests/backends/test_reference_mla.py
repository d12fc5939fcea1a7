"""Paged MLA decode and the latent-cache write on the reference backend, against the float64
oracle (`dense_attention.dense_mla`), plus the ops' argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from dense_attention import dense_mla

import kvpager.ops as ops
from kvpager.backends import BackendUnavailableError
from kvpager.backends.validation import OpArgumentError
from kvpager.verify.mla_matrix import (
    MLACase,
    make_mla_inputs,
    mla_tolerance,
    poison_mla,
    run_mla,
)

CASES = [
    MLACase(512, 64, 4, 16, "float32", seed=1),
    MLACase(512, 64, 3, 64, "bfloat16", seed=2, window=100),
    MLACase(96, 32, 5, 8, "float16", seed=3, window=7),
    MLACase(128, 0, 2, 32, "float32", seed=4, window=600),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_dense_mla(case: MLACase) -> None:
    clean = make_mla_inputs(case)
    want = dense_mla(clean)
    inputs = poison_mla(clean) if case.window else clean
    got = run_mla(inputs, "reference")
    assert torch.isfinite(got).all()
    atol, rtol = mla_tolerance(case.dtype)
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol, check_dtype=False)


def test_hand_computed_two_tokens() -> None:
    """Latent rows [1, 0 | 2] and [0, 1 | 0] (rank 2, rope 1), query [0, 0 | 1], scale 1:
    logits 2 and 0, out = (e^2 [1, 0] + [0, 1]) / (e^2 + 1)."""
    cache = ops.allocate_latent_cache(2, 8, 3, dtype=torch.float32)
    ops.concat_and_cache_mla(torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                             torch.tensor([[2.0], [0.0]]), cache,
                             torch.tensor([8, 9]))  # block 1, slots 0 and 1
    out = torch.empty(1, 1, 2)
    ops.paged_mla_decode(out, torch.tensor([[[0.0, 0.0, 1.0]]]), cache,
                         torch.tensor([[1]], dtype=torch.int32),
                         torch.tensor([2], dtype=torch.int32), 8, 2, 1.0,
                         backend="reference")
    e2 = math.exp(2.0)
    torch.testing.assert_close(out[0, 0], torch.tensor([e2, 1.0]) / (e2 + 1))


def test_empty_sequence_outputs_zero_and_the_window_moves_the_output() -> None:
    case = MLACase(64, 16, 2, 16, "float32", seed=5)
    inputs = make_mla_inputs(case, lengths=[0, 90])
    full = run_mla(inputs, "reference")
    assert full[0].eq(0).all()
    windowed = run_mla(make_mla_inputs(MLACase(64, 16, 2, 16, "float32", seed=5, window=10),
                                       lengths=[0, 90]), "reference")
    assert (windowed[1] - full[1]).abs().max() > 1e-2


def test_concat_and_cache_mla_writes_rows_and_skips_padding() -> None:
    cache = ops.allocate_latent_cache(3, 8, 6, dtype=torch.float16)
    kv_c = torch.arange(12, dtype=torch.float16).reshape(3, 4)
    k_pe = -torch.arange(6, dtype=torch.float16).reshape(3, 2)
    ops.concat_and_cache_mla(kv_c, k_pe, cache, torch.tensor([17, -1, 3]))
    torch.testing.assert_close(cache[2, 1], torch.cat([kv_c[0], k_pe[0]]))
    torch.testing.assert_close(cache[0, 3], torch.cat([kv_c[2], k_pe[2]]))
    assert int((cache != 0).any(-1).sum()) == 2  # the padding token wrote nothing


def test_registered_ops_run_and_trace_on_fake_tensors() -> None:
    """torch.ops.kvpager.paged_mla_decode / concat_and_cache_mla (what torch.compile calls)
    take the same arguments, and their fake implementations check shapes on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import kvpager.ops  # noqa: F401  (registers the ops)

    inputs = make_mla_inputs(MLACase(64, 16, 2, 16, "float32", seed=6, window=20),
                             lengths=[40, 3])
    want = run_mla(inputs, "reference")
    got = torch.empty_like(want)
    args = (inputs.query, inputs.latent_cache, inputs.block_tables, inputs.seq_lens, 16, 64,
            inputs.scale)
    torch.ops.kvpager.paged_mla_decode(got, *args, sliding_window=20, backend="reference")
    torch.testing.assert_close(got, want)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in args]
        torch.ops.kvpager.paged_mla_decode(torch.empty(2, 2, 64), *fake, sliding_window=20)
        with pytest.raises(OpArgumentError, match=r"^out must have shape"):
            torch.ops.kvpager.paged_mla_decode(torch.empty(2, 2, 63), *fake)
    cache = ops.allocate_latent_cache(1, 8, 3, dtype=torch.float32)
    torch.ops.kvpager.concat_and_cache_mla(torch.ones(1, 2), torch.ones(1, 1), cache,
                                           torch.tensor([5]), "auto", torch.tensor(1.0))
    assert cache[0, 5].eq(1).all()


def _decode(**changes) -> None:
    inputs = make_mla_inputs(MLACase(64, 16, 4, 16, "float32", seed=7), lengths=[20, 5])
    args = {"out": torch.full((2, 4, 64), 7.0), "query": inputs.query,
            "latent_cache": inputs.latent_cache, "block_tables": inputs.block_tables,
            "seq_lens": inputs.seq_lens, "block_size": 16, "kv_lora_rank": 64,
            "scale": 0.1}
    args.update(changes)
    out = args["out"]
    try:
        ops.paged_mla_decode(*args.values(), backend="reference")
    finally:
        if isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (
                2, 4, 64):
            assert out.eq(7.0).all()  # nothing written before the error


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"kv_lora_rank": 81}, r"^kv_lora_rank \(81\) must not exceed the latent width"),
    ({"kv_lora_rank": 0}, r"^kv_lora_rank must be >= 1"),
    ({"out": torch.zeros(2, 4, 80)}, r"^out must have shape"),
    ({"latent_cache": torch.zeros(4, 16, 81)}, r"^latent_cache has rows of 81 elements"),
    ({"latent_cache": torch.zeros(4, 16, 80, dtype=torch.float16)},
     r"^latent_cache must have dtype torch.float32"),
    ({"latent_cache": torch.zeros(4, 12, 80)}, r"^latent_cache has block_size 12"),
    ({"block_size": 8}, r"^block_size \(8\) must equal the block dimension"),
    ({"scale": -1.0}, r"^scale must be finite and > 0"),
    ({"seq_lens": torch.tensor([20, 5])}, r"^seq_lens must have dtype int32"),
    ({"seq_lens": torch.tensor([20, 99], dtype=torch.int32)}, r"^seq_lens \[1\] = 99 needs"),
])
def test_bad_decode_arguments_are_named(changes, pattern) -> None:
    with pytest.raises(OpArgumentError, match=pattern):
        _decode(**changes)


def test_bad_window_is_named_and_cuda_is_refused_by_name() -> None:
    inputs = make_mla_inputs(MLACase(64, 16, 2, 16, "float32", seed=8), lengths=[5])
    out = torch.empty(1, 2, 64)
    args = (out, inputs.query, inputs.latent_cache, inputs.block_tables, inputs.seq_lens, 16,
            64, 0.1)
    with pytest.raises(OpArgumentError, match=r"^sliding_window must be >= 1"):
        ops.paged_mla_decode(*args, sliding_window=0)
    with pytest.raises(BackendUnavailableError, match="cuda"):  # no MLA kernel, or no GPU
        ops.paged_mla_decode(*args, backend="cuda")
    from kvpager.backends.cuda import BACKEND as CUDA

    assert CUDA.mla_reason() == "the cuda backend has no MLA decode kernel"


@pytest.mark.parametrize(("call", "pattern"), [
    (lambda c: ops.concat_and_cache_mla(torch.zeros(2, 4), torch.zeros(2, 3), c,
                                        torch.tensor([0, 1])), r"^latent_cache has rows of 6"),
    (lambda c: ops.concat_and_cache_mla(torch.zeros(2, 4), torch.zeros(2, 2), c,
                                        torch.tensor([0, 1]), "fp8"), r"^kv_cache_dtype must"),
    (lambda c: ops.concat_and_cache_mla(torch.zeros(2, 4), torch.zeros(2, 2), c,
                                        torch.tensor([0, 16])), r"^slot_mapping holds slot 16"),
    (lambda c: ops.concat_and_cache_mla(torch.zeros(2, 4), torch.zeros(2, 2), c,
                                        torch.tensor([3, 3])), r"^slot_mapping names one slot"),
    (lambda c: ops.concat_and_cache_mla(torch.zeros(2, 4), torch.zeros(1, 2), c,
                                        torch.tensor([0, 1])), r"^k_pe has 1 tokens"),
    (lambda c: ops.concat_and_cache_mla(torch.zeros(2, 4), torch.zeros(2, 2), c,
                                        torch.tensor([0, 1], dtype=torch.int32)),
     r"^slot_mapping must have dtype int64"),
])
def test_bad_cache_writes_are_named_before_anything_is_written(call, pattern) -> None:
    cache = ops.allocate_latent_cache(2, 8, 6, dtype=torch.float32)
    with pytest.raises(OpArgumentError, match=pattern):
        call(cache)
    assert cache.eq(0).all()
