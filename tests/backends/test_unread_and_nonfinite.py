"""Every backend ignores what a sequence does not read, and propagates NaN / inf in what it
does read as softmax attention does (issue 12).

- Stale bytes, NaN included, in cache slots no head reads (past seq_len in the last block,
  blocks nobody owns, block 0 behind padded table entries, blocks block-sparsity skips)
  change neither `out` nor v2's exp_sums / max_logits / tmp_out: the outputs equal those of
  the same call on a clean cache, bit for bit.
- A NaN or inf in the query, a read key or value, or an ALiBi slope gives what the formula
  gives, NaN where the float64 dense oracle (torch.softmax) has NaN, never a silent 0; -inf
  masking of what is not read keeps working around it.

Each test runs on the reference and on Triton's interpreter on the CPU, and (marked `gpu`,
skipped without CUDA) on the reference, Triton and CUDA backends on a GPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dense_attention import dense_attention
from kernel_matrix import AttentionCase, make_inputs, run_v1, run_v2, tolerance, used_partitions
from stale_cache import (
    blocks_read,
    clone_inputs,
    pad_tables_with_block_zero,
    poison_unread,
    poison_values_some_heads_skip,
)

import kvpager.ops as ops

NO_CUDA = "needs a CUDA device (torch.cuda is not available)"
# NaN and inf are fed on purpose: numpy (Triton's interpreter) warns at every use.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _triton_reason(device: str) -> str | None:
    try:
        from kvpager.backends.triton import BACKEND
    except ImportError as exc:  # pragma: no cover - triton is a dependency of the tests
        return f"cannot import the Triton backend: {exc}"
    return BACKEND.unavailable_reason() or BACKEND.device_reason(torch.device(device))


def _cuda_backend_reason() -> str | None:
    from kvpager.backends.cuda import BACKEND

    return BACKEND.unavailable_reason()


def _backends() -> list:
    has_cuda = torch.cuda.is_available()
    gpu = [pytest.mark.gpu, pytest.mark.skipif(not has_cuda, reason=NO_CUDA)]
    cpu_triton = _triton_reason("cpu")
    cuda_triton = _triton_reason("cuda") if has_cuda else NO_CUDA
    cuda_backend = _cuda_backend_reason() if has_cuda else NO_CUDA
    return [
        pytest.param("reference", "cpu", id="reference-cpu"),
        pytest.param("triton", "cpu", id="triton-cpu", marks=pytest.mark.skipif(
            cpu_triton is not None, reason=f"{cpu_triton} (the gpu-marked cases run it)")),
        pytest.param("reference", "cuda", id="reference-cuda", marks=gpu),
        pytest.param("triton", "cuda", id="triton-cuda", marks=[*gpu, pytest.mark.skipif(
            cuda_triton is not None, reason=str(cuda_triton))]),
        pytest.param("cuda", "cuda", id="cuda-cuda", marks=[*gpu, pytest.mark.skipif(
            cuda_backend is not None, reason=str(cuda_backend))]),
    ]


BACKENDS = _backends()
#: Short sequences batched with a long one (two v2 partitions): the short rows of the block
#: table are mostly padding.
LENGTHS = [5, 600, 17, 40]
STALE_CASES = [
    AttentionCase((8, 2), 64, 16, "float16", False, "auto", None, seed=31),
    AttentionCase((4, 4), 128, 8, "bfloat16", True, "fp8_e4m3", None, seed=32,
                  scale_as_tensor=True),
    # block-sparse sliding with the query head (heads of a group read different blocks) ...
    AttentionCase((8, 2), 64, 16, "float32", False, "auto", (2, 4, 32, 1), seed=33),
    # ... and with the kv head
    AttentionCase((8, 1), 64, 32, "float16", True, "fp8_e5m2", (1, 4, 64, -1), seed=34),
]


def _equal(got: torch.Tensor, want: torch.Tensor, what: str = "out") -> None:
    """Bit-for-bit equal as values, NaN equal to NaN (untouched NaN-filled v2 entries)."""
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=0, rtol=0, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", STALE_CASES, ids=lambda c: c.id)
def test_unread_cache_slots_never_reach_the_outputs(backend, device, case) -> None:
    inputs = make_inputs(case, lengths=LENGTHS)
    pad_tables_with_block_zero(inputs)
    clean = clone_inputs(inputs)
    assert poison_unread(inputs) > 0
    assert inputs.block_tables[0, 1:].eq(0).all()  # sequence 0's padding points at block 0

    got_v1 = run_v1(inputs.to(device), backend)
    assert torch.isfinite(got_v1).all()
    _equal(got_v1, run_v1(clean.to(device), backend))
    got = run_v2(inputs.to(device), backend)
    want = run_v2(clean.to(device), backend)
    assert torch.isfinite(got[0]).all()
    used = used_partitions(inputs.seq_lens, inputs.num_partitions()).expand_as(got[1])
    assert torch.isfinite(got[1].cpu()[used]).all()  # exp_sums of the used partitions
    for name, g, w in zip(("out", "exp_sums", "max_logits", "tmp_out"), got, want,
                          strict=True):
        _equal(g, w, name)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_a_head_ignores_values_that_only_other_heads_of_its_group_read(backend, device) -> None:
    """Block-sparse attention sliding with the query head: the heads of a kv group read
    different blocks. NaN in a block's values reaches exactly the heads that read it."""
    case = AttentionCase((8, 2), 64, 16, "float16", True, "auto", (1, 4, 16, 1), seed=35)
    inputs = make_inputs(case, lengths=[600, 70, 33])
    clean = clone_inputs(inputs)
    reads_nan = poison_values_some_heads_skip(inputs)
    assert reads_nan.any() and not reads_nan.all()
    want_v1 = run_v1(clean.to(device), backend).cpu()
    want_v2 = run_v2(clean.to(device), backend)[0].cpu()
    for got, want in ((run_v1(inputs.to(device), backend).cpu(), want_v1),
                      (run_v2(inputs.to(device), backend)[0].cpu(), want_v2)):
        assert got[reads_nan].isnan().all()
        _equal(got[~reads_nan], want[~reads_nan])


# ---- non-finite values in what is read -------------------------------------------------------
NONFINITE_CASE = AttentionCase((8, 2), 64, 16, "float16", True, "auto", None, seed=36)
SEQ, HEAD = 1, 5  # the long sequence (two partitions), a head of kv group 1
TOKEN = 100  # a token of partition 0 of that sequence


def _key_slot(inp, seq: int, token: int) -> tuple[int, int]:
    bs = inp.case.block_size
    return int(inp.block_tables[seq, token // bs]), token % bs


def _set_key(inp, seq: int, token: int, kv_head: int, dim: int, value: float) -> None:
    block, slot = _key_slot(inp, seq, token)
    x = inp.key_cache.shape[-1]
    inp.key_cache[block, kv_head, dim // x, slot, dim % x] = value


def _poison(inp, kind: str) -> None:
    nan, inf = float("nan"), float("inf")
    kv_head = HEAD // (inp.case.heads[0] // inp.case.heads[1])
    if kind == "query-nan":
        inp.query[SEQ, HEAD, 3] = nan
    elif kind == "query-inf":
        inp.query[SEQ, HEAD, 3] = inf
    elif kind == "key-nan":
        _set_key(inp, SEQ, TOKEN, kv_head, 7, nan)
    elif kind in ("key-inf", "key-neg-inf"):
        inp.query[SEQ, HEAD, 7] = inp.query[SEQ, HEAD, 7].abs() + 0.5  # logit +-inf for HEAD
        _set_key(inp, SEQ, TOKEN, kv_head, 7, inf if kind == "key-inf" else -inf)
    elif kind == "value-nan":
        block, slot = _key_slot(inp, SEQ, TOKEN)
        inp.value_cache[block, kv_head, 9, slot] = nan
    elif kind in ("slope-nan", "slope-inf"):
        inp.alibi_slopes = inp.alibi_slopes.clone()
        inp.alibi_slopes[HEAD] = nan if kind == "slope-nan" else inf
    elif kind == "all-logits-neg-inf":
        # q = +inf e_0 and every key read has k_0 = -1: every logit of the head is -inf, and
        # softmax over only -inf is 0 / 0.
        inp.query[SEQ, HEAD] = 0.0
        inp.query[SEQ, HEAD, 0] = inf
        for token in range(int(inp.seq_lens[SEQ])):
            _set_key(inp, SEQ, token, kv_head, 0, -1.0)
        inp.alibi_slopes = None
    else:  # pragma: no cover
        raise AssertionError(kind)


KINDS = ["query-nan", "query-inf", "key-nan", "key-inf", "key-neg-inf", "value-nan",
         "slope-nan", "slope-inf", "all-logits-neg-inf"]


def _assert_like_oracle(got: torch.Tensor, want: torch.Tensor, dtype: str) -> None:
    got = got.cpu().double()
    assert torch.equal(got.isnan(), want.isnan()), (
        f"NaN at {got.isnan().nonzero().tolist()[:8]}, oracle NaN at "
        f"{want.isnan().nonzero().tolist()[:8]}")
    atol, rtol = tolerance(dtype)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_nonfinite_reads_propagate_as_softmax_does(backend, device, kind) -> None:
    inputs = make_inputs(NONFINITE_CASE, lengths=[40, 600, 3])
    _poison(inputs, kind)
    want = dense_attention(inputs)
    if kind != "key-neg-inf":  # a -inf logit just weighs 0; everything else gives NaN
        assert want.out[SEQ, HEAD].isnan().any()  # (a NaN value: in its dimension only)
    # NaN stays where the poison is: the poisoned sequence, or (a slope) the poisoned head.
    allowed = torch.zeros(want.out.shape[:2], dtype=torch.bool)
    if kind.startswith("slope"):
        allowed[:, HEAD] = True
    else:
        allowed[SEQ] = True
    assert not (want.out.isnan().any(-1) & ~allowed).any()
    _assert_like_oracle(run_v1(inputs.to(device), backend), want.out, NONFINITE_CASE.dtype)
    out, exp_sums, _, tmp_out = run_v2(inputs.to(device), backend)
    _assert_like_oracle(out, want.out, NONFINITE_CASE.dtype)
    # The partition that holds the poisoned token carries the NaN in tmp_out (and, for NaN
    # logits, exp_sums); max_logits may skip NaN logits, so it is not compared.
    part = TOKEN // 512 if kind != "all-logits-neg-inf" else 0
    bad = want.part_out[SEQ, HEAD, part].isnan()
    assert torch.equal(tmp_out.cpu()[SEQ, HEAD, part].isnan(), bad)
    if want.part_sum[SEQ, HEAD, part].isnan():
        assert exp_sums.cpu()[SEQ, HEAD, part].isnan()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_a_nan_log_sum_exp_propagates_through_merge(backend, device) -> None:
    """merge_attn_states: a NaN LSE is not an empty part (that is +-inf): the merged row and
    its LSE are NaN, as the formula gives; the other rows are untouched by it."""
    gen = torch.Generator().manual_seed(3)
    tokens, heads, head_size = 4, 2, 64
    prefix, suffix = (torch.randn(tokens, heads, head_size, generator=gen) for _ in range(2))
    p_lse, s_lse = (torch.randn(heads, tokens, generator=gen) for _ in range(2))
    p_lse[1, 2] = float("nan")
    s_lse[0, 3] = float("inf")  # an empty suffix part: its output is not read
    suffix[3, 0] = float("nan")
    output = torch.empty(tokens, heads, head_size, device=device)
    output_lse = torch.empty(heads, tokens, device=device)
    ops.merge_attn_states(output, prefix.to(device), p_lse.to(device), suffix.to(device),
                          s_lse.to(device), output_lse, backend=backend)
    output, output_lse = output.cpu(), output_lse.cpu()
    assert output[2, 1].isnan().all() and output_lse[1, 2].isnan()
    nan_rows = output.isnan().any(-1)
    assert nan_rows.sum() == 1 and output_lse.isnan().sum() == 1
    torch.testing.assert_close(output[3, 0], prefix[3, 0])  # the empty suffix weighs nothing
    assert math.isfinite(float(output_lse[0, 3]))


def test_the_poisoning_helpers_poison_what_they_should() -> None:
    """The helpers themselves: block 0 is unread and padded to, unread slots are NaN, read
    slots are untouched."""
    case = STALE_CASES[2]
    inputs = make_inputs(case, lengths=LENGTHS)
    pad_tables_with_block_zero(inputs)
    clean = clone_inputs(inputs)
    poison_unread(inputs)
    assert inputs.key_cache[0].isnan().all() and inputs.value_cache[0].isnan().all()
    for row in blocks_read(inputs):
        for block, used, heads in row:
            if heads:
                assert torch.equal(inputs.value_cache[block, :, :, :used],
                                   clean.value_cache[block, :, :, :used])
                assert inputs.value_cache[block, :, :, used:].isnan().all()
            else:
                assert inputs.value_cache[block].isnan().all()
