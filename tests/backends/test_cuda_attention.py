"""Paged attention v1/v2 of the CUDA backend against the reference backend and against an
independent dense float64 computation written here. GPU only.

Matrix (kept to what exercises distinct code):
* every compiled kernel: head size x block size x dtype x kv cache dtype, v1 and v2, with
  sequence lengths 1, an exact block multiple, 1024 (a partition boundary) and > 1024;
* features at one kernel: (num_heads, num_kv_heads) in (40,40), (64,8), (32,8), (8,1); ALiBi;
  block-sparse local 16/4 x vert stride 8/4 x sparse block 64/32 x sliding step 2/0/-1;
* v2 internals: exp_sums / max_logits per partition against the dense logits;
* large shapes, scales as device tensors, strided queries, and the v1 shared-memory refusal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda is not available)"
    ),
]

HEAD_SIZES = [32, 64, 80, 96, 112, 120, 128, 192, 256]
BLOCK_SIZES = [8, 16, 32]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KV_DTYPES = ["auto", "fp8_e4m3", "fp8_e5m2"]
PARTITION = 512
DEVICE = "cuda"  # where make_case builds its tensors
FP8 = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
       "fp8_e5m2": torch.float8_e5m2}
# |cuda - reference| and |cuda - dense| bounds: output rounding of the dtype dominates.
TOL = {torch.float32: (2e-4, 1e-3), torch.float16: (2e-3, 1e-2), torch.bfloat16: (1.5e-2, 2e-2)}


@pytest.fixture(scope="module")
def ops() -> ModuleType:
    """kvpager.ops: validation + dispatch, the public entry point (with backend=...)."""
    import kvpager.ops

    return kvpager.ops


@dataclass
class Case:
    """One decode batch on a paged cache with shuffled physical blocks."""

    query: torch.Tensor          # [S, H, D]
    key_cache: torch.Tensor      # [N, KVH, D // x, bs, x]
    value_cache: torch.Tensor    # [N, KVH, D, bs]
    block_tables: torch.Tensor   # int32 [S, max_blocks]
    seq_lens: torch.Tensor       # int32 [S]
    block_size: int
    max_seq_len: int
    num_kv_heads: int
    scale: float
    kv_cache_dtype: str
    k_scale: float
    v_scale: float
    alibi_slopes: torch.Tensor | None = None


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi paper's geometric slopes (for a power of two; interleaved otherwise)."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest < num_heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** (2 * i + 1) for i in range(num_heads - closest)]
    return torch.tensor(slopes, dtype=torch.float32)


def make_case(
    seq_lens: list[int], num_heads: int, num_kv_heads: int, head_size: int, block_size: int,
    dtype: torch.dtype, kv_cache_dtype: str = "auto", alibi: bool = False, seed: int = 0,
    extra_blocks: int = 7,
) -> Case:
    dev = torch.device(DEVICE)
    gen = torch.Generator(device=dev).manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + extra_blocks
    max_blocks = max(blocks_per_seq) + 2  # padding columns hold garbage ids on purpose
    # Physical blocks in random order: a sequence's blocks are scattered over the cache.
    perm = torch.randperm(num_blocks, generator=gen, device=dev)
    tables = torch.randint(0, num_blocks, (len(seq_lens), max_blocks), generator=gen, device=dev)
    used = 0
    for s, n in enumerate(blocks_per_seq):
        tables[s, :n] = perm[used:used + n]
        used += n
    query = torch.randn(len(seq_lens), num_heads, head_size, generator=gen, device=dev).to(dtype)
    k = torch.randn(num_blocks, num_kv_heads, head_size, block_size, generator=gen, device=dev)
    v = torch.randn(num_blocks, num_kv_heads, head_size, block_size, generator=gen, device=dev)
    k_scale = v_scale = 1.0
    if kv_cache_dtype == "auto":
        elem = torch.empty((), dtype=dtype).element_size()
        k_store, v_store = k.to(dtype), v.to(dtype)
    else:
        elem = 1
        k_scale, v_scale = 0.5, 0.25
        k_store = (k / k_scale).to(FP8[kv_cache_dtype]).view(torch.uint8)
        v_store = (v / v_scale).to(FP8[kv_cache_dtype]).view(torch.uint8)
    x = 16 // elem
    # [N, KVH, D, bs] -> [N, KVH, D // x, x, bs] -> [N, KVH, D // x, bs, x]
    key_cache = k_store.reshape(num_blocks, num_kv_heads, head_size // x, x, block_size)
    key_cache = key_cache.permute(0, 1, 2, 4, 3).contiguous()
    return Case(
        query=query, key_cache=key_cache, value_cache=v_store.contiguous(),
        block_tables=tables.to(torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
        block_size=block_size, max_seq_len=max(seq_lens), num_kv_heads=num_kv_heads,
        scale=head_size ** -0.5, kv_cache_dtype=kv_cache_dtype, k_scale=k_scale, v_scale=v_scale,
        alibi_slopes=alibi_slopes(num_heads).to(dev) if alibi else None,
    )


# ---- independent dense oracle ----------------------------------------------------------------

def dense_logits(c: Case, sparse: dict | None = None, tp_rank: int = 0) -> list[torch.Tensor]:
    """Per sequence, float64 logits [H, L] with -inf where block-sparsity skips a key."""
    n, kvh, dx, bs, x = c.key_cache.shape
    head_size = dx * x
    kc = c.key_cache
    if c.kv_cache_dtype != "auto":
        kc = kc.view(FP8[c.kv_cache_dtype])
    keys = kc.float().double().permute(0, 1, 3, 2, 4).reshape(n, kvh, bs, head_size)
    if c.kv_cache_dtype != "auto":
        keys = keys * c.k_scale
    num_heads = c.query.shape[1]
    group = num_heads // kvh
    out = []
    for s, length in enumerate(c.seq_lens.tolist()):
        nb = -(-length // bs)
        ids = c.block_tables[s, :nb].long()
        k = keys[ids].permute(1, 0, 2, 3).reshape(kvh, nb * bs, head_size)[:, :length]
        k = k.repeat_interleave(group, 0)
        logits = torch.einsum("hd,hld->hl", c.query[s].double(), k) * c.scale
        pos = torch.arange(length, device=k.device, dtype=torch.float64)
        if c.alibi_slopes is not None:
            logits += c.alibi_slopes.double()[:, None] * (pos - length + 1)[None, :]
        if sparse is not None and sparse["vert_stride"] > 1:
            k_bs = (torch.arange(length, device=k.device) // bs) * bs // sparse["block_size"]
            q_bs = (length - 1) // sparse["block_size"]
            heads = torch.arange(num_heads, device=k.device)
            step = sparse["sliding_step"]
            if step >= 0:
                offset = (tp_rank * num_heads + heads) * step + 1
            else:
                offset = (tp_rank * kvh + heads // group) * (-step) + 1
            keep = ((k_bs[None, :] + offset[:, None]) % sparse["vert_stride"] == 0) | (
                k_bs[None, :] > q_bs - sparse["local_blocks"]
            )
            logits = logits.masked_fill(~keep, float("-inf"))
        out.append(logits)
    return out


def dense_output(c: Case, logits: list[torch.Tensor]) -> torch.Tensor:
    _, kvh, head_size, bs = c.value_cache.shape
    vc = c.value_cache
    if c.kv_cache_dtype != "auto":
        vc = vc.view(FP8[c.kv_cache_dtype])
    values = vc.float().double().permute(0, 1, 3, 2)  # [N, KVH, bs, D]
    if c.kv_cache_dtype != "auto":
        values = values * c.v_scale
    group = c.query.shape[1] // kvh
    outs = []
    for s, lg in enumerate(logits):
        length = lg.shape[1]
        nb = -(-length // bs)
        ids = c.block_tables[s, :nb].long()
        v = values[ids].permute(1, 0, 2, 3).reshape(kvh, nb * bs, head_size)[:, :length]
        v = v.repeat_interleave(group, 0)
        outs.append(torch.einsum("hl,hld->hd", torch.softmax(lg, dim=-1), v))
    return torch.stack(outs)


# ---- running the ops -------------------------------------------------------------------------

def run(
    ops: ModuleType, c: Case, version: int, backend: str, sparse: dict | None = None,
    tp_rank: int = 0, k_scale: object = None, v_scale: object = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(out, exp_sums, max_logits) of one call; the v2 buffers are NaN-filled first so that an
    entry the kernel should have written but did not shows up."""
    s, h, d = c.query.shape
    out = torch.full_like(c.query, float("nan"))
    sp = sparse or {"local_blocks": 0, "vert_stride": 0, "block_size": 64, "sliding_step": 0}
    tail = dict(
        tp_rank=tp_rank, blocksparse_local_blocks=sp["local_blocks"],
        blocksparse_vert_stride=sp["vert_stride"], blocksparse_block_size=sp["block_size"],
        blocksparse_head_sliding_step=sp["sliding_step"], backend=backend,
    )
    common = (c.key_cache, c.value_cache, c.num_kv_heads, c.scale, c.block_tables, c.seq_lens,
              c.block_size, c.max_seq_len, c.alibi_slopes, c.kv_cache_dtype,
              c.k_scale if k_scale is None else k_scale,
              c.v_scale if v_scale is None else v_scale)
    if version == 1:
        ops.paged_attention_v1(out, c.query, *common, **tail)
        return out, None, None
    parts = -(-c.max_seq_len // PARTITION)
    exp_sums = torch.full((s, h, parts), float("nan"), device=out.device)
    max_logits = torch.full_like(exp_sums, float("nan"))
    tmp_out = torch.full((s, h, parts, d), float("nan"), dtype=out.dtype, device=out.device)
    ops.paged_attention_v2(out, exp_sums, max_logits, tmp_out, c.query, *common, **tail)
    return out, exp_sums, max_logits


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 extra: float = 0.0, what: str = "") -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol + extra,
                               rtol=rtol + extra, msg=lambda m: f"{what}: {m}")


def fp8_extra(c: Case) -> float:
    # The reference may round dequantized K/V to the activation dtype before the dot product
    # (as vLLM's kernels do); the CUDA kernel keeps them in float. Allow for that rounding.
    return 0.0 if c.kv_cache_dtype == "auto" else 5e-3


def seq_lens_for(block_size: int) -> list[int]:
    return [1, 3 * block_size, 2 * PARTITION, 2 * PARTITION + 3 * block_size + 5]


# ---- the kernel matrix -----------------------------------------------------------------------

@pytest.mark.parametrize("kv_cache_dtype", KV_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("head_size", HEAD_SIZES)
def test_every_kernel_matches_reference_and_dense(
    ops: ModuleType, head_size: int, block_size: int, dtype: torch.dtype, kv_cache_dtype: str
) -> None:
    if kv_cache_dtype != "auto" and head_size % 16:
        pytest.skip("no fp8 key layout for head_size 120 (x = 16)")
    c = make_case(seq_lens_for(block_size), 8, 2, head_size, block_size, dtype, kv_cache_dtype,
                  seed=head_size * 1000 + block_size)
    expected = dense_output(c, dense_logits(c))
    for version in (1, 2):
        ours, *_ = run(ops, c, version, "cuda")
        ref, *_ = run(ops, c, version, "reference")
        assert_close(ours, ref, dtype, fp8_extra(c), f"v{version} vs reference")
        assert_close(ours, expected, dtype, fp8_extra(c), f"v{version} vs dense")


# ---- features --------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [(40, 40), (64, 8), (32, 8), (8, 1)], ids=str)
@pytest.mark.parametrize("alibi", [False, True], ids=["plain", "alibi"])
@pytest.mark.parametrize("version", [1, 2])
def test_heads_and_alibi(
    ops: ModuleType, heads: tuple[int, int], alibi: bool, version: int
) -> None:
    c = make_case([1, 17, 512, 1500], heads[0], heads[1], 128, 16, torch.float16, alibi=alibi,
                  seed=heads[0] + 7 * heads[1])
    ours, *_ = run(ops, c, version, "cuda")
    ref, *_ = run(ops, c, version, "reference")
    assert_close(ours, ref, torch.float16, what="vs reference")
    assert_close(ours, dense_output(c, dense_logits(c)), torch.float16, what="vs dense")


SPARSE = [
    {"local_blocks": local, "vert_stride": vert, "block_size": bsb, "sliding_step": step}
    for local in (16, 4) for vert in (8, 4) for bsb in (64, 32) for step in (2, 0, -1)
]


def _sparse_id(s: dict) -> str:
    return "l{local_blocks}-v{vert_stride}-b{block_size}-s{sliding_step}".format(**s)


@pytest.mark.parametrize("sparse", SPARSE, ids=_sparse_id)
@pytest.mark.parametrize("version", [1, 2])
def test_block_sparse(ops: ModuleType, sparse: dict, version: int) -> None:
    c = make_case([1, 100, 1024, 3000, 4133], 32, 8, 64, 16, torch.float16, seed=11)
    for tp_rank in (0, 1):
        ours, *_ = run(ops, c, version, "cuda", sparse, tp_rank)
        ref, *_ = run(ops, c, version, "reference", sparse, tp_rank)
        assert_close(ours, ref, torch.float16, what=f"tp_rank {tp_rank} vs reference")
        expected = dense_output(c, dense_logits(c, sparse, tp_rank))
        assert_close(ours, expected, torch.float16, what=f"tp_rank {tp_rank} vs dense")


def test_block_sparse_with_alibi_and_fp8(ops: ModuleType) -> None:
    sparse = {"local_blocks": 4, "vert_stride": 4, "block_size": 32, "sliding_step": -1}
    c = make_case([700, 2100], 16, 4, 128, 32, torch.bfloat16, "fp8_e4m3", alibi=True, seed=5)
    for version in (1, 2):
        ours, *_ = run(ops, c, version, "cuda", sparse)
        ref, *_ = run(ops, c, version, "reference", sparse)
        assert_close(ours, ref, torch.bfloat16, fp8_extra(c), "vs reference")
        assert_close(ours, dense_output(c, dense_logits(c, sparse)), torch.bfloat16,
                     fp8_extra(c), "vs dense")


# ---- v2 internals ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_v2_partition_statistics(ops: ModuleType, dtype: torch.dtype) -> None:
    lens = [1, 511, 512, 513, 2048, 2600]
    c = make_case(lens, 8, 8, 64, 16, dtype, alibi=True, seed=3)
    out_v2, exp_sums, max_logits = run(ops, c, 2, "cuda")
    _, ref_sums, ref_max = run(ops, c, 2, "reference")
    for s, lg in enumerate(dense_logits(c)):
        for p in range(-(-lens[s] // PARTITION)):  # partitions past the length are not defined
            chunk = lg[:, p * PARTITION:(p + 1) * PARTITION]
            m = chunk.max(dim=-1).values
            torch.testing.assert_close(max_logits[s, :, p].double(), m, atol=2e-3, rtol=1e-3)
            torch.testing.assert_close(exp_sums[s, :, p].double(),
                                       torch.exp(chunk - m[:, None]).sum(-1), atol=2e-3, rtol=2e-3)
            torch.testing.assert_close(max_logits[s, :, p], ref_max[s, :, p], atol=2e-3, rtol=1e-3)
            torch.testing.assert_close(exp_sums[s, :, p], ref_sums[s, :, p], atol=2e-3, rtol=2e-3)
    out_v1, *_ = run(ops, c, 1, "cuda")
    # One partition: v2 copies it, so it must equal v1 bit for bit when both are one CTA.
    single = [i for i, n in enumerate(lens) if n <= PARTITION]
    assert torch.equal(out_v1[single], out_v2[single])
    assert_close(out_v2, out_v1, dtype, what="v2 vs v1")


def test_fully_skipped_partition_weighs_nothing(ops: ModuleType) -> None:
    # local 1 and a vertical stride larger than the number of sparse blocks in a partition:
    # some 512-token partitions attend to nothing and must not disturb the others.
    sparse = {"local_blocks": 1, "vert_stride": 64, "block_size": 16, "sliding_step": 0}
    c = make_case([4000], 4, 4, 64, 16, torch.float32, seed=9)
    out, exp_sums, max_logits = run(ops, c, 2, "cuda", sparse)
    parts = -(-4000 // PARTITION)
    empty = (exp_sums[0, :, :parts] == 0) & torch.isneginf(max_logits[0, :, :parts])
    assert empty.any(), "the configuration should leave some partition empty"
    assert_close(out, dense_output(c, dense_logits(c, sparse)), torch.float32, what="vs dense")


# ---- robustness ------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [1, 2])
def test_large_batch_matches_reference(ops: ModuleType, version: int) -> None:
    gen = torch.Generator().manual_seed(1)
    lens = torch.randint(1, 8192, (64,), generator=gen).tolist()
    lens[0], lens[1] = 8192, 1
    c = make_case(lens, 32, 8, 128, 16, torch.float16, seed=2)
    ours, *_ = run(ops, c, version, "cuda")
    ref, *_ = run(ops, c, version, "reference")
    assert_close(ours, ref, torch.float16, what="vs reference")


def test_scales_as_device_tensors_equal_floats(ops: ModuleType) -> None:
    c = make_case([5, 900], 8, 2, 128, 16, torch.float16, "fp8_e5m2", seed=4)
    ks = torch.tensor(c.k_scale, device="cuda")
    vs = torch.tensor(c.v_scale, device="cuda")
    for version in (1, 2):
        as_float, *_ = run(ops, c, version, "cuda")
        as_tensor, *_ = run(ops, c, version, "cuda", k_scale=ks, v_scale=vs)
        assert torch.equal(as_float, as_tensor)


def test_strided_query_from_a_fused_qkv_buffer() -> None:
    from kvpager.backends import get
    from kvpager.backends.op_args import PagedAttentionArgs

    c = make_case([40, 300], 8, 2, 128, 16, torch.float16, seed=6)
    s, h, d = c.query.shape
    qkv = torch.randn(s, h + 2 * 2, d, dtype=torch.float16, device="cuda")
    qkv[:, :h] = c.query
    strided = qkv[:, :h]
    assert not strided.is_contiguous()
    backend = get("cuda")
    out_strided = torch.empty_like(c.query)
    out_dense = torch.empty_like(c.query)
    args = (c.key_cache, c.value_cache, c.num_kv_heads, c.scale, c.block_tables, c.seq_lens,
            c.block_size, c.max_seq_len, None, "auto", 1.0, 1.0)
    backend.paged_attention_v1(PagedAttentionArgs(out_strided, strided, *args))
    backend.paged_attention_v1(PagedAttentionArgs(out_dense, c.query, *args))
    assert torch.equal(out_strided, out_dense)


def test_padding_past_seq_len_may_hold_nan(ops: ModuleType) -> None:
    c = make_case([5, 37], 4, 4, 64, 16, torch.float16, seed=8)
    clean = [run(ops, c, v, "cuda")[0] for v in (1, 2)]
    # Poison every slot past each sequence's length in its last block.
    for s, length in enumerate(c.seq_lens.tolist()):
        last = c.block_tables[s, (length - 1) // 16].item()
        off = length % 16
        if off:
            c.key_cache[last, :, :, off:, :] = float("nan")
            c.value_cache[last, :, :, off:] = float("nan")
    for v, expected in zip((1, 2), clean, strict=True):
        out, *_ = run(ops, c, v, "cuda")
        assert torch.isfinite(out).all()
        assert torch.equal(out, expected)


def test_v1_refuses_a_max_seq_len_beyond_shared_memory(ops: ModuleType) -> None:
    props = torch.cuda.get_device_properties(0)
    optin = getattr(props, "shared_memory_per_block_optin", 227 * 1024)
    too_long = optin // 4 + 1024  # more float logits than fit
    c = make_case([too_long], 1, 1, 128, 32, torch.float16, seed=10, extra_blocks=0)
    with pytest.raises(ValueError, match="paged_attention_v2"):
        run(ops, c, 1, "cuda")
    ours, *_ = run(ops, c, 2, "cuda")  # v2 handles it
    assert_close(ours, dense_output(c, dense_logits(c)), torch.float16, what="v2 vs dense")
