"""A seeded, time-bounded fuzzer of `kvpager.ops`.

Each case is one random call, derived from (seed, case number) alone, so any finding is
reproduced by its case number:

- a *valid* call (paged attention v1 / v2 and the `paged_attention` convenience, with GQA,
  ALiBi, block sparsity, FP8 caches, sliding windows, attention sinks, padded block
  tables, stale NaN in unread slots, NaN / inf in what is read; the cache ops;
  merge_attn_states; the sparse index ops; zero-size batches throughout) whose outputs are
  compared with an independent oracle: the tests' float64 dense attention
  (`tests/backends/dense_attention.py`) and per-element Python statements of the other ops
  (`tests/sparse/sparse_oracles.py`, and the loops below);
- an *invalid* call: a valid one with one argument broken (a wrong dtype, rank, device or
  type; an int beyond int32, negative, a bool or a float; a NaN, inf or huge scale; a bad
  string), which must raise ValueError or TypeError whose message starts with the name of an
  argument of the op, before anything is written (every tensor argument is compared byte for
  byte before and after).

Anything else is a finding: a wrong result, another exception type, a message that names no
argument, an output written before the error, or a broken call accepted.

Usage (from the repository root):

    python tools/fuzz_ops.py --seconds 300 --seed 1         # a long run by hand
    python tools/fuzz_ops.py --seed 1 --case 1234 --verbose  # replay one case
    python tools/fuzz_ops.py --backend triton --seconds 60   # Triton (interpreted on a CPU)

The exit status is 1 when something was found. `tests/test_fuzz_ops.py` runs a short, fixed
number of cases of it in the test suite.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _folder in (ROOT, ROOT / "tests" / "backends", ROOT / "tests" / "sparse"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import torch  # noqa: E402

INT32_MAX = 2**31 - 1
HEAD_SIZES = (32, 64, 80, 96, 112, 120, 128, 192, 256)
FP8_MAX = {"fp8": 448.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
FP8_DTYPE = {"fp8": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
             "fp8_e5m2": torch.float8_e5m2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---- one call --------------------------------------------------------------------------------
@dataclass
class Call:
    """An op, its arguments by name (in order), and how to check a successful run."""

    op: str
    args: dict[str, object]
    check: Callable[[dict[str, object], object], None] | None = None  # raises
    kwargs: dict[str, object] = field(default_factory=dict)  # backend=...
    note: str = ""
    positional: int | None = None  # the arguments after this many are passed by keyword

    def run(self) -> object:
        import kvpager.ops as ops

        values = list(self.args.values())
        count = len(values) if self.positional is None else self.positional
        keywords = dict(list(self.args.items())[count:])
        return getattr(ops, self.op)(*values[:count], **keywords, **self.kwargs)


@dataclass
class Finding:
    case: int
    op: str
    kind: str
    detail: str

    def line(self, seed: int) -> str:
        return (f"[{self.kind}] {self.op}: {self.detail} "
                f"(replay: python tools/fuzz_ops.py --seed {seed} --case {self.case} "
                f"--verbose)")


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for t in value if isinstance(t, torch.Tensor)]
    return []


def _snapshot(args: dict[str, object]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Every tensor argument with a byte copy (meta tensors hold nothing to compare)."""
    saved = []
    for name, value in args.items():
        for t in _tensors(value):
            if t.device.type != "meta":
                saved.append((name, t, t.detach().clone()))
    return saved


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _changed(saved: list[tuple[str, torch.Tensor, torch.Tensor]]) -> list[str]:
    return [name for name, t, copy in saved if not torch.equal(_bytes(t), _bytes(copy))]


def _named_argument(message: str, names: list[str]) -> str | None:
    """The argument a message starts with ("key_caches[1] ...", "seq_lens (as row ends)")."""
    match = re.match(r"[A-Za-z_][A-Za-z_0-9]*", message)
    if match and match.group(0) in names:
        return match.group(0)
    return None


# ---- helpers for random tensors ---------------------------------------------------------------
def _gen(rng: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(rng.randrange(2**31))


def _randn(rng: random.Random, shape, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=_gen(rng)) * scale).to(dtype)


def _strided(rng: random.Random, t: torch.Tensor) -> torch.Tensor:
    """`t` as a view with a padded leading stride (a row of a fused buffer), same values."""
    if t.dim() == 0 or t.shape[0] == 0 or rng.random() < 0.5:
        return t
    rest = t[0].numel()
    wide = torch.zeros(t.shape[0], rest + rng.choice([1, 8, rest]), dtype=t.dtype)
    wide[:, :rest] = t.reshape(t.shape[0], rest)
    return wide[:, :rest].view(t.shape)


def _tolerance(dtype: torch.dtype, fp8: bool) -> tuple[float, float]:
    atol, rtol = {torch.float32: (1e-3, 1e-4), torch.float16: (2e-3, 2e-3),
                  torch.bfloat16: (1.6e-2, 1.6e-2)}[dtype]
    return (max(atol, 1e-2), rtol) if fp8 else (atol, rtol)


def _close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """Close where the oracle is finite, NaN exactly where it is NaN. Where it is +-inf the
    same infinity or NaN is accepted: an inf value times a probability that underflows to 0
    in float32 (but not in float64) is NaN, which is IEEE arithmetic, not a hidden NaN."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    infinite = want.isinf()
    got = torch.where(infinite & got.isnan(), want, got)
    if not torch.equal(got.isnan(), want.isnan()):
        raise AssertionError(f"{what}: NaN at {got.isnan().nonzero().tolist()[:4]}, expected "
                             f"NaN at {want.isnan().nonzero().tolist()[:4]}")
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


# ---- paged attention ---------------------------------------------------------------------------
def attention_call(rng: random.Random, backend: str, tiny: bool) -> Call:
    from dense_attention import dense_attention
    from kernel_matrix import AttentionCase, AttentionInputs
    from stale_cache import poison_unread

    heads = rng.choice([(1, 1), (2, 1), (4, 2), (4, 4), (6, 3), (8, 2), (8, 1)])
    head_size = rng.choice(HEAD_SIZES[:3] if tiny else HEAD_SIZES[:4] * 3 + HEAD_SIZES)
    block_size = rng.choice((8, 16, 32))
    dtype = rng.choice(DTYPES)
    kv = rng.choice(["auto"] * 4 + ["fp8", "fp8_e4m3", "fp8_e5m2"])
    if kv != "auto" and head_size % 16:
        kv = "auto"
    num_seqs = rng.choice([0, 1, 1, 2, 3, 4]) if not tiny else rng.choice([0, 1, 2])
    long = 1100 if not tiny else 560

    def length() -> int:
        r = rng.random()
        if r < 0.1:
            return 0
        if r < 0.75:
            return rng.randint(1, 3 * block_size)
        return rng.randint(1, long)

    lens = [length() for _ in range(num_seqs)]
    needed = [math.ceil(n / block_size) for n in lens]
    max_blocks = max(needed, default=0) + rng.choice([0, 0, 1, 3])
    num_blocks = max(1, sum(needed) + rng.choice([0, 1, 5]))
    order = torch.randperm(num_blocks, generator=_gen(rng)).tolist()
    pad = rng.choice([-1, 0, 10**6, -(2**31), None])
    table = torch.randint(0, num_blocks, (num_seqs, max_blocks), generator=_gen(rng),
                          dtype=torch.int32)
    if pad is not None:
        table.fill_(pad)
    start = 0
    for row, count in enumerate(needed):
        table[row, :count] = torch.tensor(order[start:start + count], dtype=torch.int32)
        start += count

    num_heads, num_kv_heads = heads
    fp8 = kv != "auto"
    x = 16 if fp8 else 16 // torch.empty((), dtype=dtype).element_size()
    k_scale = v_scale = 1.0
    if fp8:
        k_scale, v_scale = rng.uniform(0.05, 2.0), rng.uniform(0.05, 2.0)
    magnitude = rng.choice([0.5, 1.0, 3.0])
    key_shape = (num_blocks, num_kv_heads, head_size // x, block_size, x)
    value_shape = (num_blocks, num_kv_heads, head_size, block_size)

    def cache(shape, scale):
        raw = _randn(rng, shape, scale=magnitude)
        if fp8:
            bound = FP8_MAX[kv]
            return (raw / scale).clamp(-bound, bound).to(FP8_DTYPE[kv]).view(torch.uint8)
        return raw.to(dtype)

    key_cache, value_cache = cache(key_shape, k_scale), cache(value_shape, v_scale)
    if rng.random() < 0.2:  # K and V as views of one [blocks, 2, ...] allocation
        fused = torch.stack([key_cache.reshape(num_blocks, -1),
                             value_cache.reshape(num_blocks, -1)], 1)
        key_cache = fused[:, 0].view(key_shape)
        value_cache = fused[:, 1].view(value_shape)
    query = _randn(rng, (num_seqs, num_heads, head_size), dtype, magnitude)
    sparse = None
    if rng.random() < 0.3:
        sparse = {"local": rng.randint(0, 3), "vert": rng.randint(2, 5),
                  "block": block_size * rng.choice([1, 2, 4]), "step": rng.randint(-2, 3)}
    alibi = None
    if rng.random() < 0.3:
        alibi = torch.tensor([rng.uniform(-0.5, 0.5) for _ in range(num_heads)])
    if fp8 and rng.random() < 0.5:
        shape = rng.choice([(), (1,)])
        k_scale = torch.tensor(k_scale, dtype=torch.float32).reshape(shape)
        v_scale = torch.tensor(v_scale, dtype=torch.float32).reshape(shape)
    max_seq_len = max([1, *lens]) + rng.choice([0, 0, 1, 600])
    window = rng.choice([1, 5, 40, 300, 700]) if rng.random() < 0.3 else None
    sinks = _randn(rng, (num_heads,), scale=3.0) if rng.random() < 0.3 else None
    case = AttentionCase(heads, head_size, block_size, str(dtype).removeprefix("torch."),
                         alibi is not None, kv, None if sparse is None else tuple(sparse.values()),
                         seed=0, window=window, sinks=sinks is not None)
    inputs = AttentionInputs(case, query, key_cache, value_cache, table,
                             torch.tensor(lens, dtype=torch.int32), max_seq_len,
                             rng.choice([1.0 / math.sqrt(head_size), 0.05, 0.3]), alibi,
                             k_scale, v_scale, sparse_kwargs=sparse or {},
                             tp_rank=rng.choice([0, 0, 1, 3]), sliding_window=window,
                             sinks=sinks)
    notes = []
    if num_seqs and rng.random() < 0.5:
        poison_unread(inputs)
        notes.append("stale NaN")
    if num_seqs and max(lens) and rng.random() < 0.15:
        notes.append(_inject_nonfinite(rng, inputs))
    inputs.query = _strided(rng, inputs.query)
    want = dense_attention(inputs)
    version = rng.choice([1, 2, 2, "auto"])
    atol, rtol = _tolerance(dtype, fp8)
    out = torch.full_like(query, 7.0)
    args = dict(out=out)
    if version == 2:
        parts = math.ceil(max_seq_len / 512)
        fill = rng.choice([float("nan"), 7.0])
        args.update(exp_sums=torch.full((num_seqs, num_heads, parts), fill),
                    max_logits=torch.full((num_seqs, num_heads, parts), fill),
                    tmp_out=torch.full((num_seqs, num_heads, parts, head_size), fill,
                                       dtype=dtype))
    names = ["query", "key_cache", "value_cache", "num_kv_heads", "scale", "block_tables",
             "seq_lens", "block_size", "max_seq_len", "alibi_slopes", "kv_cache_dtype",
             "k_scale", "v_scale", "tp_rank", "blocksparse_local_blocks",
             "blocksparse_vert_stride", "blocksparse_block_size",
             "blocksparse_head_sliding_step"]
    args.update(zip(names, inputs.args(), strict=True))
    lens_t = inputs.seq_lens
    extensions = {k: v for k, v in inputs.kwargs().items() if v is not None}
    if version == "auto":  # `paged_attention`: allocates out, picks v1 or v2
        return _convenience_call(rng, args, want.out, backend, atol, rtol, case.id, lens,
                                 extensions)

    def check(a: dict[str, object], result: object) -> None:
        _close(a["out"], want.out, atol, rtol, "out")
        if version == 1:
            return
        parts = a["exp_sums"].shape[-1]
        first = (lens_t.long() - window).clamp(min=0) if window else torch.zeros_like(lens_t)
        index = torch.arange(parts)[None, :]
        used = (index < ((lens_t.long() + 511) // 512)[:, None]) & (
            index >= (first.long() // 512)[:, None])  # partitions that hold the window
        used = used[:, None, :].expand(num_seqs, num_heads, parts)
        for name, got, exp in (("exp_sums", a["exp_sums"], want.part_sum),
                               ("max_logits", a["max_logits"], want.part_max)):
            keep = used.clone()
            if name == "max_logits" and backend != "reference":
                keep &= ~exp.isnan()  # kernels' maxima may skip NaN logits
            _close(got[keep], exp[keep], 1e-3, 1e-3, name)
            if backend == "reference" and got[~used].numel():  # unused entries untouched
                _close(got[~used], torch.full_like(got[~used], fill), 0, 0, f"{name} unused")
        _close(a["tmp_out"][used], want.part_out[used], atol, rtol, "tmp_out")

    note = f"v{version} {case.id} lens={lens} " + " ".join(notes)
    return Call(f"paged_attention_v{version}", args, check, {"backend": backend, **extensions},
                note)


def _convenience_call(rng: random.Random, args: dict[str, object], want: torch.Tensor,
                      backend: str, atol: float, rtol: float, case_id: str,
                      lens: list[int], extensions: dict[str, object]) -> Call:
    """`ops.paged_attention`: five positional arguments, the rest by keyword, some left to
    their defaults (scale, num_kv_heads, block_size and max_seq_len come from the inputs)."""
    order = ["query", "key_cache", "value_cache", "block_tables", "seq_lens"]
    keywords = ["scale", "num_kv_heads", "block_size", "max_seq_len", "alibi_slopes",
                "kv_cache_dtype", "k_scale", "v_scale", "tp_rank", "blocksparse_local_blocks",
                "blocksparse_vert_stride", "blocksparse_block_size",
                "blocksparse_head_sliding_step"]
    optional = {"num_kv_heads", "block_size", "max_seq_len"}
    chosen = {name: args[name] for name in order}
    for name in keywords:
        if name not in optional or rng.random() < 0.5:
            chosen[name] = args[name]
    chosen.update(extensions)  # sliding_window / sinks, when the case has them

    def check(a: dict[str, object], result: object) -> None:
        _close(result, want, atol, rtol, "out")

    return Call("paged_attention", chosen, check, {"backend": backend},
                f"paged_attention {case_id} lens={lens}", positional=len(order))


def _inject_nonfinite(rng: random.Random, inputs) -> str:
    """NaN, inf or -inf at one read position of the query, a key, a value or a slope."""
    value = rng.choice([float("nan"), float("inf"), float("-inf")])
    seqs = [s for s, n in enumerate(inputs.seq_lens.tolist()) if n]
    seq = rng.choice(seqs)
    length = int(inputs.seq_lens[seq])
    token = rng.randrange(length)
    bs = inputs.case.block_size
    block, slot = int(inputs.block_tables[seq, token // bs]), token % bs
    num_heads, num_kv_heads = inputs.case.heads
    head = rng.randrange(num_heads)
    kv_head = head // (num_heads // num_kv_heads)
    where = rng.choice(["query", "key", "value", "slope"])
    fp8 = inputs.key_cache.dtype == torch.uint8
    if fp8 and where in ("key", "value"):
        value = float("nan")  # an FP8 cache holds NaN bytes but (e4m3) no inf
    if where == "query":
        inputs.query[seq, head, rng.randrange(inputs.query.shape[2])] = value
    elif where == "key":
        x = inputs.key_cache.shape[-1]
        d = rng.randrange(inputs.case.head_size)
        inputs.key_cache[block, kv_head, d // x, slot, d % x] = 0x7F if fp8 else value
    elif where == "value":
        inputs.value_cache[block, kv_head, rng.randrange(inputs.case.head_size), slot] = (
            0x7F if fp8 else value)
    elif inputs.alibi_slopes is not None:
        inputs.alibi_slopes[head] = value
    else:
        return "no slope to poison"
    return f"{value} in {where}"


# ---- cache ops ----------------------------------------------------------------------------------
def reshape_and_cache_call(rng: random.Random, backend: str, tiny: bool) -> Call:
    dtype = rng.choice(DTYPES)
    kv = rng.choice(["auto", "auto", "fp8", "fp8_e5m2"])
    x = 16 if kv != "auto" else 16 // torch.empty((), dtype=dtype).element_size()
    head_size = x * rng.randint(1, 4 if tiny else 12)
    num_kv_heads = rng.randint(1, 3)
    block_size = rng.choice([1, 2, 5, 8, 16, 32])
    num_blocks = rng.randint(1, 6)
    capacity = num_blocks * block_size
    num_tokens = rng.randint(0, min(12, capacity))
    slots = rng.sample(range(capacity), num_tokens)
    slots = [s if rng.random() > 0.2 else -rng.randint(1, 10**12) for s in slots]
    scale_k, scale_v = (rng.uniform(0.05, 3.0), rng.uniform(0.05, 3.0)) if kv != "auto" else (
        1.0, 1.0)
    key = _randn(rng, (num_tokens, num_kv_heads, head_size), dtype, rng.choice([1.0, 100.0]))
    value = _randn(rng, (num_tokens, num_kv_heads, head_size), dtype)
    if num_tokens and rng.random() < 0.2:
        key[rng.randrange(num_tokens), 0, 0] = rng.choice([float("nan"), float("inf")])
    key, value = _strided(rng, key), _strided(rng, value)
    cache_dtype = torch.uint8 if kv != "auto" else dtype
    key_cache = _random_cache(rng, (num_blocks, num_kv_heads, head_size // x, block_size, x),
                              cache_dtype)
    value_cache = _random_cache(rng, (num_blocks, num_kv_heads, head_size, block_size),
                                cache_dtype)
    k_arg = torch.tensor(scale_k) if rng.random() < 0.3 else scale_k
    expect_k, expect_v = key_cache.clone(), value_cache.clone()
    for i, slot in enumerate(slots):
        if slot < 0:
            continue
        block, off = divmod(slot, block_size)
        k, v = _encode(key[i], kv, scale_k), _encode(value[i], kv, scale_v)
        expect_k[block, :, :, off, :] = k.reshape(num_kv_heads, head_size // x, x)
        expect_v[block, :, :, off] = v

    def check(a: dict[str, object], result: object) -> None:
        for name, want in (("key_cache", expect_k), ("value_cache", expect_v)):
            if not torch.equal(_bytes(a[name]), _bytes(want)):
                raise AssertionError(f"{name} differs from the expected bytes")

    args = dict(key=key, value=value, key_cache=key_cache, value_cache=value_cache,
                slot_mapping=torch.tensor(slots, dtype=torch.int64), kv_cache_dtype=kv,
                k_scale=k_arg, v_scale=scale_v)
    return Call("reshape_and_cache", args, check, {"backend": backend},
                f"{kv} {dtype} tokens={num_tokens} bs={block_size}")


def _random_cache(rng: random.Random, shape, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=_gen(rng), dtype=torch.uint8)
    return _randn(rng, shape, dtype)


def _encode(x: torch.Tensor, kv: str, scale: float) -> torch.Tensor:
    """The cache bytes of `x`: itself for "auto", else x / scale in float32, saturated to
    the format's finite range, rounded to nearest even (NaN stays NaN)."""
    if kv == "auto":
        return x
    bound = FP8_MAX[kv]
    return (x.float() / scale).clamp(-bound, bound).to(FP8_DTYPE[kv]).view(torch.uint8)


def copy_blocks_call(rng: random.Random, backend: str, tiny: bool) -> Call:
    layers = rng.randint(0, 3)
    num_blocks = rng.randint(1, 8)
    dtype = rng.choice([*DTYPES, torch.uint8])
    key_shape = (num_blocks, *[rng.randint(1, 3) for _ in range(rng.randint(0, 3))])
    value_shape = (num_blocks, *[rng.randint(1, 3) for _ in range(rng.randint(0, 3))])
    keys = [_random_cache(rng, key_shape, dtype) for _ in range(layers)]
    values = [_random_cache(rng, value_shape, dtype) for _ in range(layers)]
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    n_dst = rng.randint(0, num_blocks // 2)
    dsts, pool = ids[:n_dst], ids[n_dst:]
    pairs = [(rng.choice(pool), d) for d in dsts]
    mapping = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    expect = [[c.clone() for c in keys], [c.clone() for c in values]]
    for group in expect:
        for cache in group:
            for src, dst in pairs:
                cache[dst] = cache[src].clone()

    def check(a: dict[str, object], result: object) -> None:
        for name, got_list, want_list in (("key_caches", a["key_caches"], expect[0]),
                                          ("value_caches", a["value_caches"], expect[1])):
            for got, want in zip(got_list, want_list, strict=True):
                if not torch.equal(_bytes(got), _bytes(want)):
                    raise AssertionError(f"{name} differs from the expected copy")

    return Call("copy_blocks", dict(key_caches=keys, value_caches=values,
                                    block_mapping=mapping), check, {"backend": backend},
                f"layers={layers} pairs={pairs}")


def swap_blocks_call(rng: random.Random, backend: str, tiny: bool) -> Call:
    dtype = rng.choice([*DTYPES, torch.uint8])
    per_block = tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 3)))
    src = _random_cache(rng, (rng.randint(1, 6), *per_block), dtype)
    dst = _random_cache(rng, (rng.randint(1, 6), *per_block), dtype)
    dsts = rng.sample(range(dst.shape[0]), rng.randint(0, dst.shape[0]))
    pairs = [(rng.randrange(src.shape[0]), d) for d in dsts]
    expect = dst.clone()
    for s, d in pairs:
        expect[d] = src[s]

    def check(a: dict[str, object], result: object) -> None:
        if not torch.equal(_bytes(a["dst"]), _bytes(expect)):
            raise AssertionError("dst differs from the expected copy")

    return Call("swap_blocks", dict(src=src, dst=dst, block_mapping=torch.tensor(
        pairs, dtype=torch.int64).reshape(-1, 2)), check, {"backend": backend}, f"{pairs}")


# ---- merge_attn_states --------------------------------------------------------------------------
def merge_call(rng: random.Random, backend: str, tiny: bool) -> Call:
    dtype = rng.choice(DTYPES)
    tokens, heads = rng.randint(0, 5), rng.randint(1, 4)
    head_size = rng.choice([1, 3, 8, 32, 64, 80, 128])
    prefix = _randn(rng, (tokens, heads, head_size), dtype)
    suffix = _randn(rng, (tokens, heads, head_size), dtype)

    def lse() -> torch.Tensor:
        t = _randn(rng, (heads, tokens), scale=rng.choice([1.0, 30.0]))
        for _ in range(rng.randint(0, 2)):
            if tokens:
                t[rng.randrange(heads), rng.randrange(tokens)] = rng.choice(
                    [float("inf"), float("-inf"), float("nan")])
        return t

    p_lse, s_lse = lse(), lse()
    # An empty part's output may be anything, NaN included: it is not read.
    prefix[(p_lse.isinf()).t()] = float("nan")
    suffix[(s_lse.isinf()).t()] = float("nan")
    want, want_lse = _merge_oracle(prefix, p_lse, suffix, s_lse)
    output = torch.full_like(prefix, 5.0)
    alias = rng.random() < 0.2
    if alias:
        output = prefix.clone()
    output_lse = torch.full((heads, tokens), 5.0) if rng.random() < 0.7 else None
    atol, rtol = _tolerance(dtype, False)

    def check(a: dict[str, object], result: object) -> None:
        _close(a["output"], want, atol, rtol, "output")
        if a["output_lse"] is not None:
            _close(a["output_lse"], want_lse, 1e-4, 1e-5, "output_lse")

    args = dict(output=output, prefix_output=output if alias else prefix, prefix_lse=p_lse,
                suffix_output=suffix, suffix_lse=s_lse, output_lse=output_lse)
    return Call("merge_attn_states", args, check, {"backend": backend},
                f"{dtype} tokens={tokens} alias={alias}")


def _merge_oracle(prefix, p_lse, suffix, s_lse):
    """Per (token, head) in float64: an infinite LSE is an empty part that is not read."""
    tokens, heads, head_size = prefix.shape
    out = torch.zeros(tokens, heads, head_size, dtype=torch.float64)
    out_lse = torch.full((heads, tokens), -math.inf, dtype=torch.float64)
    for t in range(tokens):
        for h in range(heads):
            parts = []
            for lse_value, o in ((float(p_lse[h, t]), prefix[t, h]),
                                 (float(s_lse[h, t]), suffix[t, h])):
                parts.append((-math.inf if math.isinf(lse_value) else lse_value, o.double()))
            lses = [p for p, _ in parts]
            if any(math.isnan(v) for v in lses):
                out[t, h] = math.nan
                out_lse[h, t] = math.nan
                continue
            top = max(lses)
            if top == -math.inf:
                continue
            weights = [math.exp(v - top) for v in lses]
            total = sum(weights)
            row = torch.zeros(head_size, dtype=torch.float64)
            for w, (_, o) in zip(weights, parts, strict=True):
                if w / total > 2**-100:  # a part whose weight underflows is not read
                    row = row + o * (w / total)
            out[t, h] = row
            out_lse[h, t] = math.log(total) + top
    return out, out_lse


# ---- sparse index ops ---------------------------------------------------------------------------
def topk_call(rng: random.Random, backend: str, tiny: bool) -> Call:
    from sparse_oracles import top_k_row

    rows, cols = rng.randint(0, 6), rng.randint(1, 40)
    dtype = rng.choice(DTYPES)
    logits = _randn(rng, (rows, cols), dtype)
    if rows and rng.random() < 0.5:
        for _ in range(rng.randint(1, 5)):
            logits[rng.randrange(rows), rng.randrange(cols)] = rng.choice(
                [float("nan"), float("inf"), float("-inf"), 0.0, -0.0])
    if rng.random() < 0.3:
        logits = logits.t().contiguous().t()
    top_k = rng.randint(1, 12)
    num_rows = rng.randint(0, rows)
    extra = rng.randint(0, 2)
    indices = torch.full((rows + extra, top_k), -7, dtype=torch.int32)
    if rng.random() < 0.5:
        starts = [rng.randint(0, cols) for _ in range(rows + extra)]
        ends = [rng.choice([rng.randint(0, cols), -(2**63), -1, s]) for s in starts]
        index_dtype = rng.choice([torch.int32, torch.int64])
        if index_dtype == torch.int32:
            ends = [max(e, -(2**31)) for e in ends]
        windows = [(s, e) for s, e in zip(starts, ends, strict=True)][:num_rows]
        args = dict(logits=logits, row_starts=torch.tensor(starts, dtype=index_dtype),
                    row_ends=torch.tensor(ends, dtype=index_dtype), indices=indices,
                    num_rows=num_rows, stride0=logits.stride(0), stride1=logits.stride(1),
                    top_k=top_k)
        op = "top_k_per_row_prefill"
    else:
        next_n = rng.randint(1, 3)
        seqs = -(-max(num_rows, 1) // next_n)
        lens = [rng.choice([rng.randint(0, cols), -(2**62)]) for _ in range(seqs)]
        lens = [min(n, cols) for n in lens]
        windows = [(0, max(0, lens[r // next_n] - next_n + r % next_n + 1))
                   for r in range(num_rows)]
        args = dict(logits=logits, next_n=next_n, seq_lens=torch.tensor(lens), indices=indices,
                    num_rows=num_rows, stride0=logits.stride(0), stride1=logits.stride(1),
                    top_k=top_k)
        op = "top_k_per_row_decode"
    expect = indices.clone()
    for r, (s, e) in enumerate(windows):
        expect[r] = torch.tensor(top_k_row(logits[r, s:max(s, e)].float().tolist(), top_k))

    def check(a: dict[str, object], result: object) -> None:
        if not torch.equal(a["indices"], expect):
            raise AssertionError(f"indices {a['indices'].tolist()} != {expect.tolist()}")

    return Call(op, args, check, {"backend": backend}, f"rows={num_rows} k={top_k}")


def vertical_slash_call(rng: random.Random, backend: str, tiny: bool) -> Call:
    from sparse_oracles import vertical_slash_tables

    causal = rng.random() < 0.7
    block_m = rng.choice([4, 8, 16])
    block_n = rng.choice([n for n in (1, 2, 4, 8, 16) if block_m % n == 0])
    batch, heads = rng.randint(0, 2), rng.randint(0, 3)
    context = rng.randint(0, 50)
    q_lens = [rng.randint(0, context) for _ in range(batch)]
    kv_lens = [q + rng.randint(0, 20) if causal else rng.randint(0, 60) for q in q_lens]
    nnz_v, nnz_s = rng.randint(0, 6), rng.randint(0, 6)
    top = max(kv_lens, default=0) + context + 5
    vertical = [[[rng.randint(-3, max(kv_lens, default=0) + 3) for _ in range(nnz_v)]
                 for _ in range(heads)] for _ in range(batch)]
    slash = [[[rng.randint(-3, top) for _ in range(nnz_s)] for _ in range(heads)]
             for _ in range(batch)]
    index_dtype = rng.choice([torch.int32, torch.int64])
    args = dict(q_seqlens=torch.tensor(q_lens, dtype=index_dtype),
                kv_seqlens=torch.tensor(kv_lens, dtype=index_dtype),
                vertical_indexes=torch.tensor(vertical, dtype=index_dtype).reshape(
                    batch, heads, nnz_v),
                slash_indexes=torch.tensor(slash, dtype=index_dtype).reshape(batch, heads, nnz_s),
                context_size=context, block_size_M=block_m, block_size_N=block_n, causal=causal)
    expected = vertical_slash_tables(q_lens, kv_lens, vertical, slash, context, block_m,
                                     block_n, causal)
    def check(a: dict[str, object], result: object) -> None:
        tables = result
        rows = -(-context // block_m)
        if tuple(tables[0].shape) != (batch, heads, rows):
            raise AssertionError(f"block_count shape {tuple(tables[0].shape)}")
        block_count, block_offset, column_count, column_index = tables
        for b in range(batch):
            for h in range(heads):
                for m in range(rows):
                    blocks, columns = expected.get((b, h, m), ([], []))
                    got = (block_offset[b, h, m, :block_count[b, h, m]].tolist(),
                           column_index[b, h, m, :column_count[b, h, m]].tolist())
                    if got != (blocks, columns):
                        raise AssertionError(f"(b={b}, h={h}, m={m}): {got} != "
                                             f"{(blocks, columns)}")

    return Call("convert_vertical_slash_indexes", args, check, {"backend": backend},
                note=f"causal={causal} M={block_m} N={block_n}")


GENERATORS: dict[str, Callable[[random.Random, str, bool], Call]] = {
    "paged_attention": attention_call,
    "reshape_and_cache": reshape_and_cache_call,
    "copy_blocks": copy_blocks_call,
    "swap_blocks": swap_blocks_call,
    "merge_attn_states": merge_call,
    "top_k_per_row": topk_call,
    "convert_vertical_slash_indexes": vertical_slash_call,
}
WEIGHTS = {"paged_attention": 6, "reshape_and_cache": 2, "copy_blocks": 1, "swap_blocks": 1,
           "merge_attn_states": 2, "top_k_per_row": 2, "convert_vertical_slash_indexes": 1}


# ---- breaking one argument ---------------------------------------------------------------
#: Arguments that are ints / floats / strings / bools, by op family (others are tensors).
INT_ARGS = {"num_kv_heads", "block_size", "max_seq_len", "tp_rank", "blocksparse_local_blocks",
            "blocksparse_vert_stride", "blocksparse_block_size",
            "blocksparse_head_sliding_step", "num_rows", "stride0", "stride1", "top_k",
            "next_n", "context_size", "block_size_M", "block_size_N"}
FLOAT_ARGS = {"scale", "k_scale", "v_scale"}
#: Tensors whose None is valid.
OPTIONAL = {"alibi_slopes", "output_lse", "sinks"}


def break_argument(rng: random.Random, call: Call) -> tuple[str, bool] | None:
    """Replace one argument; returns (description, whether the call must now be refused), or
    None when nothing applicable was drawn.

    Most replacements are values no op accepts. Some may leave a valid call (a tensor cut to
    zero size, a non-contiguous copy, a negative int where one is allowed): such a call may
    run, but if it raises, the error must be as clean as for any other bad argument.
    """
    name = rng.choice(list(call.args))
    value = call.args[name]
    huge = rng.choice([2**31, 2**32 + 5, 2**63, 2**64, -(2**63), -(2**31) - 1, 10**30])
    must_raise = True
    if name in INT_ARGS:
        new = rng.choice([huge, huge, True, False, 3.0, None, "4", float("nan"), -1])
        must_raise = not (new == -1 and name == "blocksparse_head_sliding_step") and not (
            new is None and call.op == "paged_attention")  # None: taken from the inputs
    elif name in FLOAT_ARGS:
        if isinstance(value, torch.Tensor) and rng.random() < 0.5:
            new = rng.choice([value.double(), value.reshape(1, 1), value.to("meta"),
                              torch.full_like(value, float("nan")), -value,
                              torch.zeros_like(value), value.reshape(1).expand(2)])
        else:
            new = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 10**400, True, "1.0",
                              None])
            must_raise = not (new is None and call.op == "paged_attention" and name == "scale")
    elif name == "kv_cache_dtype":
        new = rng.choice(["fp16", "", "FP8", None, 8, "auto ", ["auto"]])
    elif name == "causal":
        new = rng.choice([1, 0, None, "True"])
    elif isinstance(value, list):  # copy_blocks' layers
        if not value:
            return None
        new = rng.choice([value[0], [*value[:-1], "x"], [*value[:-1], value[-1].to("meta")]])
    elif isinstance(value, torch.Tensor) or (value is None and name in OPTIONAL):
        if value is None:
            new = rng.choice([[1.0], 1.0, torch.zeros(3, dtype=torch.float64)])
        else:
            wrong_dtypes = [d for d in (torch.float64, torch.int16, torch.bool, torch.complex64)
                            if d != value.dtype]
            choices = [
                lambda t: t.to(rng.choice(wrong_dtypes)),
                lambda t: t.to("meta"),
                lambda t: t.tolist(),
                lambda t: 3.0 if name in OPTIONAL else None,
                lambda t: t.unsqueeze(0),  # one dimension too many
                lambda t: t.sum(-1).to(t.dtype) if t.dim() else t.reshape(1, 1),  # one too few
            ]
            maybe = [
                lambda t: t[:0] if t.dim() else t.reshape(0),  # zero-size
                lambda t: t.transpose(0, -1).contiguous().transpose(0, -1)  # other strides
                if t.dim() > 1 else t.flip(0) if t.dim() else t,
            ]
            if rng.random() < 0.25:
                must_raise = False
                new = rng.choice(maybe)(value)
            else:
                new = rng.choice(choices)(value)
            if name in ("k_scale", "v_scale") and isinstance(new, torch.Tensor) and (
                    new.numel() == 1 and new.dim() <= 1):
                return None  # a one-element scale of shape [1] is valid
            if name == "seq_lens" and call.op == "top_k_per_row_decode" and isinstance(
                    new, torch.Tensor) and new.dim() == 2:
                return None  # a 2-D seq_lens is a valid form of decode's seq_lens
    else:
        return None
    call.args[name] = new
    return f"{name} := {_short(new)}", must_raise


def _short(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')} on " \
               f"{value.device}"
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


# ---- the loop ------------------------------------------------------------------------------
class Fuzzer:
    def __init__(self, seed: int, backend: str = "reference", tiny: bool | None = None,
                 verbose: bool = False) -> None:
        self.seed = seed
        self.backend = backend
        self.tiny = backend != "reference" if tiny is None else tiny
        self.verbose = verbose
        self.findings: list[Finding] = []
        self.counts = {"valid": 0, "invalid": 0, "skipped": 0}

    def case(self, index: int) -> None:
        rng = random.Random(f"{self.seed}:{index}")
        family = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        call = GENERATORS[family](rng, self.backend, self.tiny)
        invalid = rng.random() < 0.4
        broken = break_argument(rng, call) if invalid else None
        if invalid and broken is None:
            self.counts["skipped"] += 1
            return
        description, must_raise = broken if broken else (None, False)
        self.counts["invalid" if invalid else "valid"] += 1
        if self.verbose:
            print(f"case {index}: {call.op} {call.note} {description or 'valid'}")
        names = list(call.args)
        saved = _snapshot(call.args)
        try:
            result = call.run()
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if not invalid:
                self._found(index, call, "valid call refused", f"{type(exc).__name__}: "
                            f"{message}")
            elif _named_argument(message, names) is None:
                self._found(index, call, "message names no argument",
                            f"{description}: {type(exc).__name__}: {message}")
            changed = _changed(saved)
            if changed:
                self._found(index, call, "written before the error",
                            f"{description}: {changed} changed")
            return
        except Exception as exc:  # any other type is a finding
            self._found(index, call, "wrong exception type",
                        f"{description or 'valid call'}: {type(exc).__name__}: {exc}"
                        + ("\n" + traceback.format_exc() if self.verbose else ""))
            return
        if invalid:
            if must_raise:
                self._found(index, call, "broken argument accepted", description)
            return  # (a call that may be valid has no oracle: its arguments changed)
        try:
            if call.check is not None:
                call.check(call.args, result)
        except AssertionError as exc:
            self._found(index, call, "wrong result", f"{call.note}: {exc}")

    def _found(self, index: int, call: Call, kind: str, detail: str) -> None:
        finding = Finding(index, call.op, kind, detail.strip().splitlines()[0][:400]
                          if not self.verbose else detail)
        self.findings.append(finding)
        if self.verbose:
            print("  FOUND", finding.line(self.seed))

    def run(self, *, seconds: float | None = None, cases: int | None = None,
            first: int = 0) -> list[Finding]:
        deadline = None if seconds is None else time.monotonic() + seconds
        index = first
        while (cases is None or index < first + cases) and (
                deadline is None or time.monotonic() < deadline):
            self.case(index)
            index += 1
        self.last_case = index - 1
        return self.findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    parser.add_argument("--case", type=int, default=None, help="run only this case")
    parser.add_argument("--backend", choices=["reference", "triton"], default="reference")
    parser.add_argument("--verbose", action="store_true")
    options = parser.parse_args(argv)
    if options.backend == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # NaN and inf are fed on purpose; numpy (Triton's interpreter) warns about each.
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    torch.set_num_threads(1)
    fuzzer = Fuzzer(options.seed, options.backend, verbose=options.verbose)
    start = time.monotonic()
    if options.case is not None:
        fuzzer.run(cases=1, first=options.case)
    else:
        fuzzer.run(seconds=options.seconds, cases=options.cases)
    elapsed = time.monotonic() - start
    counts = fuzzer.counts
    print(f"seed {options.seed}, backend {options.backend}: {counts['valid']} valid and "
          f"{counts['invalid']} invalid calls in {elapsed:.0f} s (cases up to "
          f"{fuzzer.last_case}); {len(fuzzer.findings)} findings")
    seen: set[tuple[str, str]] = set()
    for finding in fuzzer.findings:
        key = (finding.kind, finding.op)
        if key in seen and not options.verbose:
            continue
        seen.add(key)
        print("  " + finding.line(options.seed))
    return 1 if fuzzer.findings else 0


if __name__ == "__main__":
    sys.exit(main())
