"""Every argument check of kvpager.ops: a ValueError naming the argument, nothing written."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import kvpager.ops as ops
from kvpager.backends.validation import OpArgumentError

S, H, KVH, D, BS, BLOCKS = 3, 4, 2, 64, 16, 10
META = torch.device("meta")  # a second device that exists without a GPU


def attention_kwargs(kv_cache_dtype: str = "auto") -> dict:
    gen = torch.Generator().manual_seed(0)
    key_cache, value_cache = ops.allocate_kv_cache(BLOCKS, KVH, D, BS, dtype=torch.float16,
                                                   kv_cache_dtype=kv_cache_dtype)
    key_cache.random_(0, 60, generator=gen)
    value_cache.random_(0, 60, generator=gen)
    return dict(
        out=torch.full((S, H, D), 5.0, dtype=torch.float16),
        query=torch.randn(S, H, D, generator=gen).half(), key_cache=key_cache,
        value_cache=value_cache, num_kv_heads=KVH, scale=0.125,
        block_tables=torch.tensor([[3, -1, -1, -1], [1, 2, -1, 99], [4, 5, 6, 7]],
                                  dtype=torch.int32),
        seq_lens=torch.tensor([1, 20, 64], dtype=torch.int32), block_size=BS, max_seq_len=64,
        alibi_slopes=None, kv_cache_dtype=kv_cache_dtype, k_scale=1.0, v_scale=1.0,
    )


def v2_kwargs() -> dict:
    kw = attention_kwargs()
    kw["exp_sums"] = torch.full((S, H, 1), 5.0)
    kw["max_logits"] = torch.full((S, H, 1), 5.0)
    kw["tmp_out"] = torch.full((S, H, 1, D), 5.0, dtype=torch.float16)
    return kw


def cache_kwargs(kv_cache_dtype: str = "auto") -> dict:
    key_cache, value_cache = ops.allocate_kv_cache(BLOCKS, KVH, D, BS, dtype=torch.float16,
                                                   kv_cache_dtype=kv_cache_dtype)
    return dict(key=torch.randn(5, KVH, D).half(), value=torch.randn(5, KVH, D).half(),
                key_cache=key_cache, value_cache=value_cache,
                slot_mapping=torch.tensor([0, 17, -1, 40, 159]),
                kv_cache_dtype=kv_cache_dtype, k_scale=1.0, v_scale=1.0)


def copy_kwargs() -> dict:
    return dict(key_caches=[torch.randn(BLOCKS, KVH, 8, BS, 8) for _ in range(2)],
                value_caches=[torch.randn(BLOCKS, KVH, D, BS) for _ in range(2)],
                block_mapping=torch.tensor([[0, 1], [2, 3]]))


def swap_kwargs() -> dict:
    return dict(src=torch.randn(BLOCKS, KVH, D, BS), dst=torch.randn(4, KVH, D, BS),
                block_mapping=torch.tensor([[9, 0], [2, 3]]))


def merge_kwargs() -> dict:
    return dict(output=torch.full((5, H, D), 5.0), prefix_output=torch.randn(5, H, D),
                prefix_lse=torch.randn(H, 5), suffix_output=torch.randn(5, H, D),
                suffix_lse=torch.randn(H, 5), output_lse=torch.full((H, 5), 5.0))


def _set(name: str, value) -> Callable[[dict], None]:
    def apply(kw: dict) -> None:
        kw[name] = value(kw) if callable(value) else value
    return apply


def _edit(fn: Callable[[dict], None]) -> Callable[[dict], None]:
    return fn


def _table_entry(row: int, col: int, value: int) -> Callable[[dict], None]:
    def apply(kw: dict) -> None:
        kw["block_tables"] = kw["block_tables"].clone()
        kw["block_tables"][row, col] = value
    return apply


def _seq_len(row: int, value: int) -> Callable[[dict], None]:
    def apply(kw: dict) -> None:
        kw["seq_lens"] = kw["seq_lens"].clone()
        kw["seq_lens"][row] = value
    return apply


ATTENTION_CASES = [
    ("query", _set("query", [1.0])),
    ("query", _set("query", lambda kw: kw["query"][0])),
    ("query", _set("query", lambda kw: kw["query"].double())),
    ("query", _set("query", lambda kw: torch.randn(S, H, 48).half())),  # head size 48
    ("query", _set("query", lambda kw: torch.randn(S, H, 2 * D).half()[:, :, ::2])),
    ("out", _set("out", lambda kw: kw["out"].float())),
    ("out", _set("out", lambda kw: kw["out"][:2])),
    ("out", _set("out", lambda kw: kw["out"].to(META))),
    ("out", _set("out", lambda kw: torch.zeros(H, S, D).half().transpose(0, 1))),
    ("num_kv_heads", _set("num_kv_heads", 3)),
    ("num_kv_heads", _set("num_kv_heads", 0)),
    ("num_kv_heads", _set("num_kv_heads", 2.0)),
    ("num_kv_heads", _set("num_kv_heads", 4)),  # divides 4 heads, but the caches hold 2
    ("kv_cache_dtype", _set("kv_cache_dtype", "int8")),
    ("key_cache", _set("key_cache", lambda kw: kw["key_cache"].float())),
    ("key_cache", _set("kv_cache_dtype", "fp8")),  # an fp16 cache is not an FP8 cache
    ("key_cache", _set("key_cache", lambda kw: kw["key_cache"].reshape(BLOCKS, KVH, 4, BS, 16))),
    ("key_cache", _set("key_cache", lambda kw: kw["key_cache"].to(META))),
    ("key_cache", _set("key_cache", lambda kw: kw["key_cache"].transpose(2, 4).contiguous()
                       .transpose(2, 4))),
    ("value_cache", _set("value_cache", lambda kw: kw["value_cache"][:, :1])),
    ("value_cache", _set("value_cache", lambda kw: kw["value_cache"].float())),
    ("block_size", _set("block_size", 8)),
    ("block_size", _edit(lambda kw: kw.update(
        key_cache=torch.zeros(BLOCKS, KVH, D // 8, 64, 8).half(),
        value_cache=torch.zeros(BLOCKS, KVH, D, 64).half(), block_size=64))),
    ("block_tables", _set("block_tables", lambda kw: kw["block_tables"].long())),
    ("block_tables", _set("block_tables", lambda kw: kw["block_tables"][:2])),
    ("block_tables", _set("block_tables", lambda kw: kw["block_tables"].t().contiguous().t())),
    ("seq_lens", _set("seq_lens", lambda kw: kw["seq_lens"].long())),
    ("seq_lens", _set("seq_lens", lambda kw: kw["seq_lens"][:2])),
    ("max_seq_len", _set("max_seq_len", 0)),
    ("max_seq_len", _set("max_seq_len", 64.0)),
    ("scale", _set("scale", 0.0)),
    ("scale", _set("scale", float("nan"))),
    ("scale", _set("scale", torch.tensor(0.1))),
    ("alibi_slopes", _set("alibi_slopes", torch.ones(H + 1))),
    ("alibi_slopes", _set("alibi_slopes", torch.ones(H, dtype=torch.float16))),
    ("k_scale", _set("k_scale", 0.0)),
    ("k_scale", _set("k_scale", -1.0)),
    ("k_scale", _set("k_scale", torch.tensor(1.0, dtype=torch.float64))),
    ("k_scale", _set("k_scale", torch.ones(2))),
    ("k_scale", _set("k_scale", torch.tensor(0.0))),  # data check
    ("v_scale", _set("v_scale", float("inf"))),
    ("v_scale", _set("v_scale", torch.tensor(float("nan")))),  # data check
    ("tp_rank", _set("tp_rank", -1)),
    ("blocksparse_local_blocks", _set("blocksparse_local_blocks", -1)),
    ("blocksparse_block_size", _edit(lambda kw: kw.update(blocksparse_vert_stride=4,
                                                          blocksparse_block_size=24))),
    # integers beyond int32 (kernels hold them in 32-bit registers), and bools
    ("tp_rank", _set("tp_rank", 2**63)),
    ("tp_rank", _set("tp_rank", True)),
    ("blocksparse_head_sliding_step", _set("blocksparse_head_sliding_step", 2**63)),
    ("blocksparse_head_sliding_step", _set("blocksparse_head_sliding_step", -(2**63))),
    ("blocksparse_block_size", _set("blocksparse_block_size", 2**63)),
    ("blocksparse_vert_stride", _set("blocksparse_vert_stride", 2**31)),
    ("blocksparse_local_blocks", _set("blocksparse_local_blocks", 2**40)),
    ("blocksparse_vert_stride", _set("blocksparse_vert_stride", False)),
    ("max_seq_len", _set("max_seq_len", 2**63)),
    ("max_seq_len", _set("max_seq_len", True)),
    ("block_size", _set("block_size", 2**64)),
    ("num_kv_heads", _set("num_kv_heads", True)),
    ("num_kv_heads", _set("num_kv_heads", 2**70)),
    ("scale", _set("scale", 10**400)),  # float(10**400) overflows
    ("scale", _set("scale", True)),
    ("k_scale", _set("k_scale", 10**400)),
    # with sparsity on, the pattern offset (tp_rank * H + h) * |step| + 1 stays within int32
    ("blocksparse_head_sliding_step", _edit(lambda kw: kw.update(
        blocksparse_vert_stride=4, blocksparse_block_size=16,
        blocksparse_head_sliding_step=2**29))),
    ("tp_rank", _edit(lambda kw: kw.update(blocksparse_vert_stride=4, blocksparse_block_size=16,
                                           tp_rank=2**30))),
    # the meta device holds no data: named, not "no backend can run this call"
    ("query", _edit(lambda kw: kw.update({k: t.to(META) for k, t in kw.items()
                                          if isinstance(t, torch.Tensor)}))),
    # data checks
    ("seq_lens", _seq_len(0, -1)),
    ("seq_lens", _seq_len(2, 65)),  # beyond max_seq_len
    ("seq_lens", _edit(lambda kw: (_seq_len(2, 65)(kw), kw.update(max_seq_len=100)))),
    ("block_tables", _table_entry(1, 1, BLOCKS)),  # read by sequence 1 (20 tokens)
    ("block_tables", _table_entry(2, 3, -1)),
]


def _snapshot(kw: dict) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    tensors = []
    for name, value in kw.items():
        for i, t in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                tensors.append((f"{name}[{i}]", t, t.clone()))
    return tensors


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_rejected(op: Callable, kw: dict, argument: str) -> None:
    before = _snapshot(kw)
    with pytest.raises(OpArgumentError) as info:
        op(**kw)
    assert isinstance(info.value, ValueError)
    assert info.value.argument == argument
    assert str(info.value).startswith(argument), str(info.value)
    for name, tensor, copy in before:  # compared as bytes, so NaN == NaN
        assert torch.equal(_bytes(tensor), _bytes(copy)), f"{name} changed"


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_paged_attention_v1_rejects(case) -> None:
    argument, mutate = case
    kw = attention_kwargs()
    mutate(kw)
    _assert_rejected(ops.paged_attention_v1, kw, argument)


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=[c[0] for c in ATTENTION_CASES])
def test_paged_attention_v2_rejects(case) -> None:
    argument, mutate = case
    kw = v2_kwargs()
    mutate(kw)
    _assert_rejected(ops.paged_attention_v2, kw, argument)


V2_CASES = [
    ("exp_sums", _set("exp_sums", torch.zeros(S, H, 2))),  # 2 partitions for max_seq_len 64
    ("max_logits", _set("max_logits", torch.zeros(S, H, 1, dtype=torch.float16))),
    ("tmp_out", _set("tmp_out", torch.zeros(S, H, 1, D))),
    ("tmp_out", _set("tmp_out", torch.zeros(S, H, 1, D + 1).half())),
]


@pytest.mark.parametrize("case", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_paged_attention_v2_rejects_workspace(case) -> None:
    argument, mutate = case
    kw = v2_kwargs()
    mutate(kw)
    _assert_rejected(ops.paged_attention_v2, kw, argument)


def test_valid_arguments_pass_and_padding_is_allowed() -> None:
    """The baselines above are valid: padding (-1, 99) sits only in unread table columns."""
    kw = attention_kwargs()
    ops.paged_attention_v1(**kw)
    assert not kw["out"].eq(5.0).all()
    ops.paged_attention_v2(**v2_kwargs())


def test_check_indices_false_skips_only_data_checks() -> None:
    kw = attention_kwargs()
    kw["k_scale"] = torch.tensor(0.0)  # unused by an "auto" cache; only a data check sees it
    ops.paged_attention_v1(**kw, check_indices=False)
    with pytest.raises(OpArgumentError, match=r"^k_scale"):
        ops.paged_attention_v1(**kw)
    kw["k_scale"] = 0.0  # a float is checked statically, whatever check_indices says
    with pytest.raises(OpArgumentError, match=r"^k_scale"):
        ops.paged_attention_v1(**kw, check_indices=False)


CACHE_CASES = [
    ("key", _set("key", lambda kw: kw["key"][0])),
    ("key", _set("key", lambda kw: kw["key"].to(torch.int32))),
    ("value", _set("value", lambda kw: kw["value"][:4])),
    ("value", _set("value", lambda kw: kw["value"].float())),
    ("value", _set("value", lambda kw: kw["value"].to(META))),
    ("kv_cache_dtype", _set("kv_cache_dtype", "fp16")),
    ("key_cache", _set("key_cache", lambda kw: kw["key_cache"].float())),
    ("key_cache", _set("key_cache", lambda kw: kw["key_cache"][:, :1])),
    ("value_cache", _set("value_cache", lambda kw: kw["value_cache"][..., :8])),
    ("slot_mapping", _set("slot_mapping", lambda kw: kw["slot_mapping"].int())),
    ("slot_mapping", _set("slot_mapping", lambda kw: kw["slot_mapping"][:3])),
    ("slot_mapping", _set("slot_mapping", torch.tensor([0, 17, -1, 40, 160]))),  # data
    ("slot_mapping", _set("slot_mapping", torch.tensor([0, 17, -1, 17, 3]))),  # data
    ("k_scale", _set("k_scale", -2.0)),
    ("v_scale", _set("v_scale", torch.tensor([0.5, 0.5]))),
    ("v_scale", _set("v_scale", -(10**400))),
    ("key", _edit(lambda kw: kw.update({k: t.to(META) for k, t in kw.items()
                                        if isinstance(t, torch.Tensor)}))),
]


@pytest.mark.parametrize("case", CACHE_CASES, ids=[c[0] for c in CACHE_CASES])
def test_reshape_and_cache_rejects(case) -> None:
    argument, mutate = case
    kw = cache_kwargs()
    mutate(kw)
    _assert_rejected(ops.reshape_and_cache, kw, argument)


def test_fp8_cache_needs_head_size_multiple_of_16() -> None:
    kw = cache_kwargs("fp8")
    kw["key"], kw["value"] = torch.randn(5, KVH, 120).half(), torch.randn(5, KVH, 120).half()
    kw["key_cache"] = torch.zeros(BLOCKS, KVH, 7, BS, 16, dtype=torch.uint8)
    kw["value_cache"] = torch.zeros(BLOCKS, KVH, 120, BS, dtype=torch.uint8)
    _assert_rejected(ops.reshape_and_cache, kw, "kv_cache_dtype")
    with pytest.raises(ValueError, match="head_size 120"):
        ops.kv_cache_shapes(4, 2, 120, 16, torch.uint8)


COPY_CASES = [
    ("key_caches", _set("key_caches", lambda kw: kw["key_caches"][0])),
    ("value_caches", _set("value_caches", lambda kw: kw["value_caches"][:1])),
    ("key_caches[1]", _set("key_caches", lambda kw: [kw["key_caches"][0],
                                                      kw["key_caches"][1].half()])),
    ("value_caches[0]", _set("value_caches", lambda kw: [v[:5] for v in kw["value_caches"]])),
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 1]], dtype=torch.int32))),
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 1, 2]]))),
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 1]], device=META))),
    ("block_mapping", _set("block_mapping", torch.tensor([[0, BLOCKS]]))),  # data
    ("block_mapping", _set("block_mapping", torch.tensor([[-1, 2]]))),  # data
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 2], [1, 2]]))),  # data
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 2], [2, 3]]))),  # data
    ("key_caches[0]", _edit(lambda kw: kw.update(
        key_caches=[t.to(META) for t in kw["key_caches"]],
        value_caches=[t.to(META) for t in kw["value_caches"]],
        block_mapping=kw["block_mapping"].to(META)))),
]


@pytest.mark.parametrize("case", COPY_CASES, ids=[c[0] for c in COPY_CASES])
def test_copy_blocks_rejects(case) -> None:
    argument, mutate = case
    kw = copy_kwargs()
    mutate(kw)
    _assert_rejected(ops.copy_blocks, kw, argument)


SWAP_CASES = [
    ("src", _set("src", 3.0)),
    ("dst", _set("dst", lambda kw: kw["dst"].half())),
    ("dst", _set("dst", lambda kw: kw["dst"][:, :1])),
    ("dst", _set("dst", lambda kw: kw["dst"].transpose(2, 3).contiguous().transpose(2, 3))),
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 1]], device=META))),
    ("block_mapping", _set("block_mapping", torch.tensor([0, 1]))),
    ("block_mapping", _set("block_mapping", torch.tensor([[BLOCKS, 0]]))),  # data
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 4]]))),  # data
    ("block_mapping", _set("block_mapping", torch.tensor([[0, 1], [2, 1]]))),  # data
    ("dst", _set("dst", lambda kw: kw["dst"].to(META))),  # CPU -> meta: no data to write
]


@pytest.mark.parametrize("case", SWAP_CASES, ids=[c[0] for c in SWAP_CASES])
def test_swap_blocks_rejects(case) -> None:
    argument, mutate = case
    kw = swap_kwargs()
    mutate(kw)
    _assert_rejected(ops.swap_blocks, kw, argument)


MERGE_CASES = [
    ("output", _set("output", lambda kw: kw["output"][0])),
    ("output", _set("output", lambda kw: kw["output"].double())),
    ("prefix_output", _set("prefix_output", lambda kw: kw["prefix_output"].half())),
    ("suffix_output", _set("suffix_output", lambda kw: kw["suffix_output"][:, :2])),
    ("suffix_output", _set("suffix_output", lambda kw: kw["suffix_output"].to(META))),
    ("prefix_lse", _set("prefix_lse", lambda kw: kw["prefix_lse"].half())),
    ("suffix_lse", _set("suffix_lse", lambda kw: kw["suffix_lse"].t())),
    ("output_lse", _set("output_lse", lambda kw: kw["output_lse"][:, :4])),
    ("output", _edit(lambda kw: kw.update({k: t[..., :0] if t.dim() == 3 else t
                                           for k, t in kw.items()}))),  # head_size 0
    ("output", _edit(lambda kw: kw.update({k: t.to(META) for k, t in kw.items()}))),
]


@pytest.mark.parametrize("case", MERGE_CASES, ids=[c[0] for c in MERGE_CASES])
def test_merge_attn_states_rejects(case) -> None:
    argument, mutate = case
    kw = merge_kwargs()
    mutate(kw)
    _assert_rejected(ops.merge_attn_states, kw, argument)


def test_paged_attention_convenience_names_bad_arguments() -> None:
    kw = attention_kwargs()
    with pytest.raises(OpArgumentError, match=r"^query"):
        ops.paged_attention(kw["query"][0], kw["key_cache"], kw["value_cache"],
                            kw["block_tables"], kw["seq_lens"])
    with pytest.raises(OpArgumentError, match=r"^value_cache"):
        ops.paged_attention(kw["query"], kw["key_cache"], kw["value_cache"][0],
                            kw["block_tables"], kw["seq_lens"])
    with pytest.raises(OpArgumentError, match=r"^max_seq_len"):
        ops.paged_attention(kw["query"], kw["key_cache"], kw["value_cache"],
                            kw["block_tables"], kw["seq_lens"], max_seq_len=-5)


@pytest.mark.parametrize("max_seq_len", [2**63, 10**30, True])
def test_paged_attention_convenience_checks_max_seq_len_before_allocating(max_seq_len) -> None:
    """A huge max_seq_len once sized v2's workspace first (an allocation error from torch)."""
    kw = attention_kwargs()
    with pytest.raises(OpArgumentError, match=r"^max_seq_len"):
        ops.paged_attention(kw["query"], kw["key_cache"], kw["value_cache"],
                            kw["block_tables"], kw["seq_lens"], max_seq_len=max_seq_len)


def test_paged_attention_convenience_checks_seq_lens_before_reading_them() -> None:
    kw = attention_kwargs()
    for seq_lens, argument in ((kw["seq_lens"].to(META), "seq_lens"),
                               (kw["seq_lens"].to(torch.complex64), "seq_lens")):
        with pytest.raises(OpArgumentError, match=f"^{argument}"):
            ops.paged_attention(kw["query"], kw["key_cache"], kw["value_cache"],
                                kw["block_tables"], seq_lens)


# ---- zero-size tensors are valid arguments (issue 12) -----------------------------------------
def _transposed_empty(rows: int, cols: int, **kw) -> torch.Tensor:
    """An empty [rows, cols] tensor whose strides are not row-major: still nothing to read."""
    return torch.empty(cols, rows, **kw).t()


@pytest.mark.parametrize("layout", ["fresh", "transposed"])
def test_merge_attn_states_with_no_tokens_does_nothing(layout: str) -> None:
    lse = (lambda: torch.empty(H, 0)) if layout == "fresh" else (lambda: _transposed_empty(H, 0))
    outputs = [torch.empty(0, H, D) for _ in range(3)]
    ops.merge_attn_states(outputs[0], outputs[1], lse(), outputs[2], lse(), lse())
    ops.merge_attn_states(outputs[0], outputs[1], lse(), outputs[2], lse())
    no_heads = torch.empty(4, 0, D)
    ops.merge_attn_states(no_heads, no_heads.clone(), torch.empty(0, 4), no_heads.clone(),
                          torch.empty(0, 4))


@pytest.mark.parametrize("version", [1, 2])
def test_block_tables_without_columns_for_empty_sequences(version: int) -> None:
    """block_tables [S, 0] (nobody holds a block yet) with every seq_len 0: outputs 0."""
    kw = v2_kwargs() if version == 2 else attention_kwargs()
    kw["block_tables"] = torch.empty(S, 0, dtype=torch.int32)
    kw["seq_lens"] = torch.zeros(S, dtype=torch.int32)
    op = ops.paged_attention_v2 if version == 2 else ops.paged_attention_v1
    op(**kw)
    assert kw["out"].eq(0).all()
    kw["seq_lens"] = torch.tensor([0, 1, 0], dtype=torch.int32)  # ... but 1 token needs a block
    _assert_rejected(op, kw, "seq_lens")


@pytest.mark.parametrize("version", [1, 2])
def test_attention_over_no_sequences_does_nothing(version: int) -> None:
    kw = v2_kwargs() if version == 2 else attention_kwargs()
    for name in ("out", "query", "exp_sums", "max_logits", "tmp_out"):
        if name in kw:
            kw[name] = kw[name][:0]
    kw["block_tables"] = _transposed_empty(0, 4, dtype=torch.int32)
    kw["seq_lens"] = torch.empty(0, dtype=torch.int32)
    (ops.paged_attention_v2 if version == 2 else ops.paged_attention_v1)(**kw)
    assert ops.paged_attention(kw["query"], kw["key_cache"], kw["value_cache"],
                               kw["block_tables"], kw["seq_lens"]).shape == (0, H, D)


def test_cache_ops_with_nothing_to_move_do_nothing() -> None:
    kw = cache_kwargs()
    before = [kw["key_cache"].clone(), kw["value_cache"].clone()]
    kw.update(key=kw["key"][:0], value=kw["value"][:0], slot_mapping=kw["slot_mapping"][:0])
    ops.reshape_and_cache(**kw)
    assert torch.equal(kw["key_cache"], before[0]) and torch.equal(kw["value_cache"], before[1])
    no_pairs = _transposed_empty(0, 2, dtype=torch.int64)
    copy = copy_kwargs()
    ops.copy_blocks(copy["key_caches"], copy["value_caches"], no_pairs)
    swap = swap_kwargs()
    ops.swap_blocks(swap["src"], swap["dst"], no_pairs)
