"""The paged-attention test matrix, shared by every backend's tests.

In the spirit of vLLM's kernel tests: query/kv head pairs, every supported head size, block
sizes 8/16/32, three dtypes, ALiBi on/off, three KV-cache formats, and block-sparse
configurations. Each case is one batch whose sequences have length 1, an exact multiple of
the block size, a length > 1024 (several v2 partitions) and a random one, so every case also
exercises v2's unused partitions.

It lives in the package rather than under tests/ because `benchmarks/gpu_verify.py` runs
the same cases on a GPU machine that may have no pytest; the tests reach it through
tests/backends/kernel_matrix.py, which adds pytest's parametrisation.

`full_matrix()` has about 2,100 cases (meant for `pytest -m gpu` on a GPU);
`sampled_matrix(n)` is a deterministic subset that still covers every value of every
dimension (meant for CPU runs). Only torch is imported here; the run helpers call
`kvpager.ops` when used.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, fields

import torch

HEADS = ((40, 40), (64, 8), (32, 8), (8, 1))  # (query heads, kv heads): MHA, GQA, MQA
HEAD_SIZES = (32, 64, 80, 96, 112, 120, 128, 192, 256)
BLOCK_SIZES = (8, 16, 32)
DTYPES = ("float32", "float16", "bfloat16")
KV_CACHE_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
# (local_blocks, vert_stride, sparse_block_size, head_sliding_step)
SPARSE_CONFIGS = tuple(itertools.product((16, 4), (8, 4), (64, 32), (2, 0, -1)))
PARTITION_SIZE = 512
_FP8_TORCH = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
_FP8_MAX = {"fp8": 448.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


@dataclass(frozen=True)
class AttentionCase:
    """One configuration; `seed` fixes lengths, block tables and data."""

    heads: tuple[int, int]
    head_size: int
    block_size: int
    dtype: str
    use_alibi: bool
    kv_cache_dtype: str
    sparse: tuple[int, int, int, int] | None
    seed: int
    scale_as_tensor: bool = False
    #: kvpager's keyword-only extensions: a sliding window (tokens) and attention sinks.
    window: int | None = None
    sinks: bool = False

    @property
    def id(self) -> str:
        sparse = "dense" if self.sparse is None else "sparse" + "-".join(map(str, self.sparse))
        extra = ("" if self.window is None else f"-w{self.window}") + (
            "-sinks" if self.sinks else "")
        return (f"h{self.heads[0]}kv{self.heads[1]}-d{self.head_size}-bs{self.block_size}-"
                f"{self.dtype}-{'alibi' if self.use_alibi else 'noalibi'}-"
                f"{self.kv_cache_dtype}-{sparse}-{'tscale' if self.scale_as_tensor else 'fscale'}"
                f"{extra}")


def _fp8_fits(kv_cache_dtype: str, head_size: int) -> bool:
    """An FP8 key cache packs 16 elements per chunk, so head_size must be a multiple of 16."""
    return kv_cache_dtype == "auto" or head_size % 16 == 0


def full_matrix() -> list[AttentionCase]:
    cases: list[AttentionCase] = []
    dense = itertools.product(HEADS, HEAD_SIZES, BLOCK_SIZES, DTYPES, (False, True),
                              KV_CACHE_DTYPES)
    for heads, head_size, block_size, dtype, alibi, kv in dense:
        if not _fp8_fits(kv, head_size):
            continue
        n = len(cases)
        if kv == "fp8_e4m3" and n % 2:
            kv = "fp8"  # the alias vLLM code passes
        cases.append(AttentionCase(heads, head_size, block_size, dtype, alibi, kv, None,
                                   seed=n, scale_as_tensor=bool(n % 3 == 0)))
    for index, (sparse, heads, block_size) in enumerate(
        itertools.product(SPARSE_CONFIGS, HEADS, BLOCK_SIZES)
    ):
        kv = KV_CACHE_DTYPES[index % 3]
        head_size = HEAD_SIZES[index % len(HEAD_SIZES)]
        if not _fp8_fits(kv, head_size):
            head_size = 128
        cases.append(AttentionCase(heads, head_size, block_size, DTYPES[(index // 3) % 3],
                                   bool(index % 2), kv, sparse, seed=10_000 + index,
                                   scale_as_tensor=bool(index % 4 == 1)))
    return cases


#: Sliding windows of the window matrix: inside one block, not a block multiple, and longer
#: than a v2 partition (so partitions straddle the window's start).
WINDOWS = (5, 40, 600)


def window_sink_matrix() -> list[AttentionCase]:
    """Cases with a sliding window and / or attention sinks (kvpager's keyword-only
    extensions): every window with and without sinks, plus sinks alone, rotated over the
    head layouts, head sizes, block sizes, dtypes, ALiBi, KV formats and a block-sparse
    pattern, so each value of each dimension meets the window and the sinks."""
    cases: list[AttentionCase] = []
    variants = [(w, sinks) for w in WINDOWS for sinks in (False, True)] + [(None, True)]
    for index in range(4 * len(variants)):
        window, sinks = variants[index % len(variants)]
        kv = KV_CACHE_DTYPES[index % 3]
        head_size = (64, 128, 80, 256, 32, 96)[index % 6]
        if not _fp8_fits(kv, head_size):
            head_size = 128
        sparse = SPARSE_CONFIGS[index % len(SPARSE_CONFIGS)] if index % 5 == 4 else None
        cases.append(AttentionCase(HEADS[index % len(HEADS)], head_size,
                                   BLOCK_SIZES[index % 3], DTYPES[(index // 3) % 3],
                                   bool(index % 2), kv, sparse, seed=20_000 + index,
                                   scale_as_tensor=bool(index % 4 == 3), window=window,
                                   sinks=sinks))
    return cases


def case_values(case: AttentionCase) -> frozenset[tuple[str, object]]:
    """The (dimension, value) pairs a case covers. Block-sparsity counts as dense or not
    plus each of its four fields (not as one 24-valued dimension)."""
    found = {(f.name, getattr(case, f.name)) for f in fields(AttentionCase)
             if f.name not in ("seed", "sparse")}
    found.add(("dense", case.sparse is None))
    if case.sparse is not None:
        found |= {(f"sparse{i}", v) for i, v in enumerate(case.sparse)}
    return frozenset(found)


def case_cost(case: AttentionCase) -> int:
    """A proxy of a case's run time (query heads x head size): among cases that cover as
    much, the covering order takes the cheaper one."""
    return case.heads[0] * case.head_size


def covering_order(pool: list[AttentionCase], *, seed: int = 0, pairs: bool = True
                   ) -> Iterator[AttentionCase]:
    """Yield every case of `pool` once, most informative first.

    First, greedily, cases that cover the most (dimension, value) pairs not yet covered (the
    cheapest of equals, `case_cost`) until
    every value of every dimension has appeared; then (with `pairs`) cases covering the most
    uncovered *pairs* of values (a pairwise covering design, the usual way to test
    interactions without the full product); then the rest in a seeded random order. It is a
    generator, so a caller stopped by a time budget pays only for the picks it ran.
    """
    pool = list(pool)
    random.Random(seed).shuffle(pool)
    singles = {id(c): case_values(c) for c in pool}
    wanted = set().union(*singles.values()) if pool else set()
    while wanted and pool:
        best = max(pool, key=lambda c: (len(singles[id(c)] & wanted), -case_cost(c)))
        pool.remove(best)
        wanted -= singles[id(best)]
        yield best
    if pairs:
        doubles = {id(c): frozenset(itertools.combinations(sorted(singles[id(c)], key=repr), 2))
                   for c in pool}
        wanted_pairs: set[object] = set().union(*doubles.values()) if pool else set()
        while wanted_pairs and pool:
            best = max(pool, key=lambda c: (len(doubles[id(c)] & wanted_pairs),
                                            -case_cost(c)))
            if not doubles[id(best)] & wanted_pairs:
                break
            pool.remove(best)
            wanted -= doubles[id(best)]
            yield best
    yield from pool


def sampled_matrix(n: int, *, seed: int = 0, sparse: bool | None = None) -> list[AttentionCase]:
    """A deterministic subset of `full_matrix()` covering every value of every dimension.

    sparse: True / False keeps only block-sparse / dense cases; None keeps both.
    Cases are added greedily, each covering the most values not yet covered, then at random
    (`covering_order` without its pairwise phase).
    """
    pool = [c for c in full_matrix() if sparse is None or (c.sparse is not None) == sparse]
    return list(itertools.islice(covering_order(pool, seed=seed, pairs=False), n))


@dataclass
class AttentionInputs:
    """Everything a paged_attention_v1 / v2 call needs, in vLLM's argument order."""

    case: AttentionCase
    query: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    max_seq_len: int
    scale: float
    alibi_slopes: torch.Tensor | None
    k_scale: float | torch.Tensor
    v_scale: float | torch.Tensor
    sparse_kwargs: dict[str, int] = field(default_factory=dict)
    tp_rank: int = 0
    sliding_window: int | None = None
    sinks: torch.Tensor | None = None  # float32 [num_heads]

    @property
    def num_kv_heads(self) -> int:
        return self.case.heads[1]

    def args(self) -> tuple:
        """Arguments after `out` (v1) or after `out, exp_sums, max_logits, tmp_out` (v2)."""
        s = self.sparse_kwargs
        return (self.query, self.key_cache, self.value_cache, self.num_kv_heads, self.scale,
                self.block_tables, self.seq_lens, self.case.block_size, self.max_seq_len,
                self.alibi_slopes, self.case.kv_cache_dtype, self.k_scale, self.v_scale,
                self.tp_rank,
                s.get("local", 0), s.get("vert", 0), s.get("block", 64), s.get("step", 0))

    def kwargs(self) -> dict[str, object]:
        """The keyword-only extensions (sliding_window, sinks) of the attention call."""
        return {"sliding_window": self.sliding_window, "sinks": self.sinks}

    def window_start(self, seq: int) -> int:
        """First token sequence `seq` attends (seq_len - W, at least 0)."""
        length = int(self.seq_lens[seq])
        return 0 if self.sliding_window is None else max(0, length - self.sliding_window)

    def num_partitions(self) -> int:
        return math.ceil(self.max_seq_len / PARTITION_SIZE)

    def to(self, device: torch.device | str) -> AttentionInputs:
        """The same inputs on another device."""
        def move(t):
            return t.to(device) if isinstance(t, torch.Tensor) else t

        moved = {f.name: move(getattr(self, f.name)) for f in fields(self)}
        moved["sparse_kwargs"] = dict(self.sparse_kwargs)
        return AttentionInputs(**moved)


def seq_lengths(case: AttentionCase, long_len: tuple[int, int] = (1025, 2100)) -> list[int]:
    """1, a multiple of the block size, one > 1024 (several partitions), one at random."""
    rng = random.Random(case.seed)
    return [1, case.block_size * rng.randint(1, 12), rng.randint(*long_len),
            rng.randint(2, 700)]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's geometric slopes 2^(-8 (i + 1) / H), with every third one negated."""
    slopes = [2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)]
    return torch.tensor([-s if i % 3 == 2 else s for i, s in enumerate(slopes)],
                        dtype=torch.float32)


def make_inputs(
    case: AttentionCase, device: torch.device | str = "cpu", *,
    long_len: tuple[int, int] = (1025, 2100), pad_block_id: int | None = None,
    lengths: list[int] | None = None,
) -> AttentionInputs:
    """Random inputs for `case` (deterministic in case.seed).

    Physical blocks are shuffled so no sequence is contiguous in the cache. Table entries a
    sequence does not read hold random *valid* ids, or `pad_block_id` when given (e.g. -1,
    to check that a backend never reads them). `lengths` replaces `seq_lengths(case)`.
    """
    gen = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    num_heads, num_kv_heads = case.heads
    head_size, block_size = case.head_size, case.block_size
    lens = list(lengths) if lengths is not None else seq_lengths(case, long_len)
    needed = [math.ceil(n / block_size) for n in lens]
    max_blocks = max(needed) + 2
    num_blocks = sum(needed) + 7
    order = torch.randperm(num_blocks, generator=gen).tolist()
    table = torch.randint(0, num_blocks, (len(lens), max_blocks), generator=gen,
                          dtype=torch.int32)
    if pad_block_id is not None:
        table.fill_(pad_block_id)
    start = 0
    for row, count in enumerate(needed):
        table[row, :count] = torch.tensor(order[start:start + count], dtype=torch.int32)
        start += count

    fp8 = case.kv_cache_dtype != "auto"
    x = 16 if fp8 else 16 // torch.empty((), dtype=dtype).element_size()
    k_scale, v_scale = (0.25, 0.5) if fp8 else (3.0, 7.0)  # "auto" must ignore the scales
    key_shape = (num_blocks, num_kv_heads, head_size // x, block_size, x)
    value_shape = (num_blocks, num_kv_heads, head_size, block_size)
    if fp8:
        fmt = getattr(torch, _FP8_TORCH[case.kv_cache_dtype])
        bound = _FP8_MAX[case.kv_cache_dtype]

        def cache(shape, scale):
            raw = torch.randn(shape, generator=gen) / scale
            return raw.clamp(-bound, bound).to(fmt).view(torch.uint8)

        key_cache, value_cache = cache(key_shape, k_scale), cache(value_shape, v_scale)
    else:
        key_cache = torch.randn(key_shape, generator=gen).to(dtype)
        value_cache = torch.randn(value_shape, generator=gen).to(dtype)
    query = torch.randn((len(lens), num_heads, head_size), generator=gen).to(dtype)
    sparse_kwargs = {}
    if case.sparse is not None:
        local, vert, block, step = case.sparse
        sparse_kwargs = {"local": local, "vert": vert, "block": block, "step": step}
    if case.scale_as_tensor:
        k_scale_arg: float | torch.Tensor = torch.tensor(k_scale, dtype=torch.float32)
        v_scale_arg: float | torch.Tensor = torch.tensor(v_scale, dtype=torch.float32)
    else:
        k_scale_arg, v_scale_arg = k_scale, v_scale
    # Drawn last, so cases without sinks keep the data they always had. Centred on
    # log(1000): a sink weighs as much as hundreds of tokens (|logit| ~ 1 here), so it moves
    # the output of long and short sequences alike.
    sinks = 7.0 + 2.0 * torch.randn(num_heads, generator=gen) if case.sinks else None
    inputs = AttentionInputs(
        case=case, query=query, key_cache=key_cache, value_cache=value_cache,
        block_tables=table, seq_lens=torch.tensor(lens, dtype=torch.int32),
        max_seq_len=max(1, *lens), scale=1.0 / math.sqrt(head_size),
        alibi_slopes=alibi_slopes(num_heads) if case.use_alibi else None,
        k_scale=k_scale_arg, v_scale=v_scale_arg, sparse_kwargs=sparse_kwargs,
        sliding_window=case.window, sinks=sinks,
    )
    return inputs.to(device)


def tolerance(dtype: str | torch.dtype, kv_cache_dtype: str = "auto") -> tuple[float, float]:
    """(atol, rtol) of a backend's output against the float32 reference on the same inputs.

    Like vLLM's kernel tests: 1e-3 for float32 and float16; bfloat16 keeps 8 bits of
    mantissa (one rounding of an O(1) value is up to 4e-3); an FP8 cache adds the error of
    rounding dequantized values to the compute dtype inside a kernel.
    """
    name = str(dtype).removeprefix("torch.")
    atol, rtol = {"float32": (1e-3, 1e-5), "float16": (1e-3, 1e-3),
                  "bfloat16": (1.6e-2, 1.6e-2)}[name]
    if kv_cache_dtype != "auto":
        atol = max(atol, 1e-2)
    return atol, rtol


def used_partitions(seq_lens: torch.Tensor, num_partitions: int) -> torch.Tensor:
    """bool [S, 1, P]: partitions holding tokens of each sequence."""
    count = (seq_lens.long().cpu() + PARTITION_SIZE - 1) // PARTITION_SIZE
    return (torch.arange(num_partitions)[None, :] < count[:, None])[:, None, :]


def run_v1(inputs: AttentionInputs, backend: str) -> torch.Tensor:
    import kvpager.ops as ops

    out = torch.empty_like(inputs.query)
    ops.paged_attention_v1(out, *inputs.args(), sliding_window=inputs.sliding_window,
                           sinks=inputs.sinks, backend=backend)
    return out


def run_v2(inputs: AttentionInputs, backend: str, fill: float = float("nan")):
    """(out, exp_sums, max_logits, tmp_out); buffers start as `fill` to expose stray reads."""
    import kvpager.ops as ops

    s, h, d = inputs.query.shape
    p = inputs.num_partitions()
    device = inputs.query.device
    out = torch.empty_like(inputs.query)
    exp_sums = torch.full((s, h, p), fill, dtype=torch.float32, device=device)
    max_logits = torch.full((s, h, p), fill, dtype=torch.float32, device=device)
    tmp_out = torch.full((s, h, p, d), fill, dtype=inputs.query.dtype, device=device)
    ops.paged_attention_v2(out, exp_sums, max_logits, tmp_out, *inputs.args(),
                           sliding_window=inputs.sliding_window, sinks=inputs.sinks,
                           backend=backend)
    return out, exp_sums, max_logits, tmp_out


def assert_partitions_close(
    inputs: AttentionInputs, exp_sums: torch.Tensor, max_logits: torch.Tensor,
    tmp_out: torch.Tensor, want_sums: torch.Tensor, want_max: torch.Tensor,
    want_tmp: torch.Tensor,
) -> None:
    """Compare v2's buffers on the partitions that hold attended tokens.

    Only partitions below ceil(seq_len / 512) whose expected max logit is finite are
    compared: a partition that block-sparsity leaves empty has no defined max or sum
    across backends (the reference writes -inf and 0; vLLM's kernel writes -FLT_MAX).
    """
    used = used_partitions(inputs.seq_lens, inputs.num_partitions())
    keep = (used & torch.isfinite(want_max.cpu())).expand_as(want_max)
    atol, rtol = tolerance(inputs.case.dtype, inputs.case.kv_cache_dtype)
    torch.testing.assert_close(max_logits.cpu()[keep], want_max.cpu()[keep].float(),
                               atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(exp_sums.cpu()[keep], want_sums.cpu()[keep].float(),
                               atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(tmp_out.cpu()[keep].float(), want_tmp.cpu()[keep].float(),
                               atol=atol, rtol=rtol)


def check_window_sinks_against_reference(
    case: AttentionCase, backend: str, device: torch.device | str = "cuda", *,
    long_len: tuple[int, int] = (1025, 2100),
) -> None:
    """Like `check_backend_against_reference`, for a case with a window and / or sinks: the
    reference runs on clean inputs, `backend` on inputs whose blocks before each window hold
    NaN behind -1 table entries (`poison_outside_window`): the outputs must be finite and
    agree."""
    inputs = make_inputs(case, device, long_len=long_len)
    want = reference_outputs(inputs)
    if case.window is not None:
        inputs = poison_outside_window(inputs)
    assert torch.isfinite(run_v1(inputs, backend)).all(), "v1 read outside the window"
    assert_matches_reference(inputs, want, backend)


def reference_outputs(inputs: AttentionInputs) -> tuple[torch.Tensor, tuple]:
    """(v1 output, v2's (out, exp_sums, max_logits, tmp_out)) of the reference backend."""
    return run_v1(inputs, "reference"), run_v2(inputs, "reference")


def assert_matches_reference(inputs: AttentionInputs, want: tuple[torch.Tensor, tuple],
                             backend: str) -> None:
    """Run `backend` on `inputs`; compare v1, v2's output and v2's partition buffers with
    `want` (from `reference_outputs`, possibly on other but equivalent inputs)."""
    want_v1, (want_out, want_sums, want_max, want_tmp) = want
    case = inputs.case
    atol, rtol = tolerance(case.dtype, case.kv_cache_dtype)
    torch.testing.assert_close(run_v1(inputs, backend), want_v1, atol=atol, rtol=rtol)
    got_out, got_sums, got_max, got_tmp = run_v2(inputs, backend)
    torch.testing.assert_close(got_out, want_out, atol=atol, rtol=rtol)
    assert_partitions_close(inputs, got_sums, got_max, got_tmp, want_sums, want_max, want_tmp)


def check_backend_against_reference(
    case: AttentionCase, backend: str, device: torch.device | str = "cuda", *,
    long_len: tuple[int, int] = (1025, 2100),
) -> None:
    """Run `backend` and the reference on the same inputs on `device`; compare v1, v2's
    output and v2's partition buffers. The one-line body of a backend's matrix test."""
    inputs = make_inputs(case, device, long_len=long_len)
    assert_matches_reference(inputs, reference_outputs(inputs), backend)


#: A byte that is NaN in both FP8 formats (e4m3fn: S.1111.111, e5m2: S.11111.11).
FP8_NAN_BYTE = 0xFF


def poison_unused_slots(inputs: AttentionInputs) -> AttentionInputs:
    """A copy of `inputs` whose cache holds NaN in every slot no sequence attends to: whole
    blocks outside the sequences' used table entries, and the slots past each sequence's
    length in its last block. Paged caches hold such garbage in serving (freed or
    preallocated blocks), and a kernel that multiplies it by a zero weight makes NaN."""
    key_cache, value_cache = inputs.key_cache.clone(), inputs.value_cache.clone()
    fill = FP8_NAN_BYTE if key_cache.dtype == torch.uint8 else float("nan")
    block_size = inputs.case.block_size
    read: set[int] = set()
    tables = inputs.block_tables.cpu()
    for row, length in enumerate(inputs.seq_lens.cpu().tolist()):
        used = tables[row, : math.ceil(length / block_size)].tolist()
        read.update(used)
        if used and length % block_size:
            key_cache[used[-1], :, :, length % block_size:, :] = fill
            value_cache[used[-1], :, :, length % block_size:] = fill
    unread = [b for b in range(key_cache.shape[0]) if b not in read]
    if unread:
        index = torch.tensor(unread, device=key_cache.device)
        key_cache[index] = fill
        value_cache[index] = fill
    poisoned = AttentionInputs(**{f.name: getattr(inputs, f.name) for f in fields(inputs)})
    poisoned.key_cache, poisoned.value_cache = key_cache, value_cache
    return poisoned


def poison_outside_window(inputs: AttentionInputs, *, pad_block_id: int | None = -1
                          ) -> AttentionInputs:
    """A copy of `inputs` (which has a sliding window) where nothing before any sequence's
    window can be read harmlessly: blocks wholly before the window hold NaN (their table
    entries become `pad_block_id` when it is given), and the slots before the window's first
    token inside its first block hold NaN too. Outputs must not change."""
    if inputs.sliding_window is None:
        raise ValueError("poison_outside_window needs inputs with a sliding_window")
    key_cache, value_cache = inputs.key_cache.clone(), inputs.value_cache.clone()
    tables = inputs.block_tables.clone()
    fill = FP8_NAN_BYTE if key_cache.dtype == torch.uint8 else float("nan")
    block_size = inputs.case.block_size
    for row in range(tables.shape[0]):
        first = inputs.window_start(row)
        whole, partial = divmod(first, block_size)
        for col in range(whole):
            block = int(tables[row, col])
            key_cache[block] = fill
            value_cache[block] = fill
            if pad_block_id is not None:
                tables[row, col] = pad_block_id
        if partial:
            block = int(tables[row, whole])
            key_cache[block, :, :, :partial, :] = fill
            value_cache[block, :, :, :partial] = fill
    poisoned = AttentionInputs(**{f.name: getattr(inputs, f.name) for f in fields(inputs)})
    poisoned.key_cache, poisoned.value_cache = key_cache, value_cache
    poisoned.block_tables = tables
    return poisoned
