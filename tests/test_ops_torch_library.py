"""torch.library registration: lazy, correct mutation annotations, traceable by torch.compile.

The compile tests use the "aot_eager" backend: it runs Dynamo capture, the fake
implementations and AOTAutograd's functionalization of the in-place ops (what inductor would
see) without inductor's C++ code generation, which takes tens of seconds on this CPU.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import kvpager.ops as ops

OP_WRITES = {
    "paged_attention_v1": {"out"},
    "paged_attention_v2": {"out", "exp_sums", "max_logits", "tmp_out"},
    "reshape_and_cache": {"key_cache", "value_cache"},
    "copy_blocks": {"key_caches", "value_caches"},
    "swap_blocks": {"dst"},
    "merge_attn_states": {"output", "output_lse"},
}


def test_import_kvpager_imports_no_torch_and_registers_nothing() -> None:
    code = (
        "import sys, kvpager, kvpager.backends\n"
        "assert 'torch' not in sys.modules, 'kvpager imported torch'\n"
        "import torch\n"
        "assert not hasattr(torch.ops.kvpager, 'paged_attention_v1')\n"
        "import kvpager.ops\n"
        "assert hasattr(torch.ops.kvpager, 'paged_attention_v1')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(OP_WRITES))
def test_schema_declares_exactly_what_each_op_writes(name) -> None:
    schema = getattr(torch.ops.kvpager, name).default._schema
    written = {a.name for a in schema.arguments if a.alias_info and a.alias_info.is_write}
    assert written == OP_WRITES[name]
    assert [r for r in schema.returns] == []


def _small_attention(dtype=torch.float32, kv_cache_dtype="auto"):
    gen = torch.Generator().manual_seed(0)
    key_cache, value_cache = ops.allocate_kv_cache(8, 2, 64, 16, dtype=dtype,
                                                   kv_cache_dtype=kv_cache_dtype)
    key = torch.randn(40, 2, 64, generator=gen).to(dtype)
    value = torch.randn(40, 2, 64, generator=gen).to(dtype)
    slots = torch.arange(40) + 16  # blocks 1, 2, 3 (partly)
    query = torch.randn(3, 4, 64, generator=gen).to(dtype)
    tables = torch.tensor([[1, 2, 3]] * 3, dtype=torch.int32)
    lens = torch.tensor([1, 17, 40], dtype=torch.int32)
    return query, key, value, key_cache, value_cache, slots, tables, lens


def _opcheck_calls():
    q, k, v, kc, vc, slots, tables, lens = _small_attention()
    out = torch.empty_like(q)
    es, ml, tmp = ops.v2_workspace(3, 4, 64, 40, dtype=q.dtype)
    one = torch.tensor(1.0)
    attention = (q, kc, vc, 2, 0.125, tables, lens, 16, 40, None, "auto", one, one)
    lse = torch.randn(4, 3)
    return {
        "paged_attention_v1": (out, *attention),
        "paged_attention_v2": (out, es, ml, tmp, *attention),
        "reshape_and_cache": (k, v, kc, vc, slots, "auto", one, one),
        "copy_blocks": ([kc, kc.clone()], [vc, vc.clone()], torch.tensor([[1, 5], [2, 6]])),
        "swap_blocks": (kc, kc[:4].clone(), torch.tensor([[1, 0], [3, 2]])),
        "merge_attn_states": (out, q, lse, q.clone(), lse.clone(), lse.clone()),
    }


@pytest.mark.parametrize("name", sorted(OP_WRITES))
def test_opcheck(name) -> None:
    """torch's own checks: mutations match the schema, fake impl matches, AOT dispatch works."""
    args = _opcheck_calls()[name]
    torch.library.opcheck(getattr(torch.ops.kvpager, name).default, args)


def _pipeline(q, k, v, kc, vc, slots, tables, lens, prefix_lse):
    """Write the cache, attend with v1 and v2, merge the two, copy and swap blocks."""
    ops.reshape_and_cache(k, v, kc, vc, slots, "auto", 1.0, torch.tensor(1.0))
    out1 = torch.empty_like(q)
    ops.paged_attention_v1(out1, q, kc, vc, 2, 0.125, tables, lens, 16, 40, None, "auto",
                           1.0, 1.0)
    out2 = torch.empty_like(q)
    es = torch.empty(3, 4, 1)
    ml = torch.empty(3, 4, 1)
    tmp = torch.empty(3, 4, 1, 64, dtype=q.dtype)
    ops.paged_attention_v2(out2, es, ml, tmp, q, kc, vc, 2, 0.125, tables, lens, 16, 40,
                           None, "auto", 1.0, 1.0)
    merged = torch.empty_like(q)
    ops.merge_attn_states(merged, out1, prefix_lse, out2 * 2, prefix_lse + 1.0)
    ops.copy_blocks([kc], [vc], torch.tensor([[1, 6], [2, 7]]))
    spare = torch.zeros_like(vc[:2])
    ops.swap_blocks(vc, spare, torch.tensor([[6, 0], [7, 1]]))
    return out1 * 1.0, out2 + 0.0, merged, spare


def test_compiles_with_fullgraph_and_matches_eager() -> None:
    torch._dynamo.reset()
    inputs = _small_attention()
    lse = torch.randn(4, 3)

    def fresh():
        return [t.clone() for t in inputs] + [lse]

    eager_args, compiled_args = fresh(), fresh()
    want = _pipeline(*eager_args)
    compiled = torch.compile(_pipeline, fullgraph=True, backend="aot_eager")
    got = compiled(*compiled_args)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    # the in-place writes reached the caller's tensors
    torch.testing.assert_close(compiled_args[3], eager_args[3])
    torch.testing.assert_close(compiled_args[4], eager_args[4])


def test_torch_ops_called_directly_compile_too() -> None:
    torch._dynamo.reset()
    q, _, _, kc, vc, _, tables, lens = _small_attention()
    kc.normal_()
    vc.normal_()
    one = torch.tensor(1.0)

    def f(q):
        out = torch.empty_like(q)
        torch.ops.kvpager.paged_attention_v1(out, q, kc, vc, 2, 0.125, tables, lens, 16, 40,
                                             None, "auto", one, one, backend="reference")
        return out.sum(-1)

    want = f(q)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(q), want)


def test_fake_implementation_checks_arguments_while_tracing() -> None:
    torch._dynamo.reset()
    q, _, _, kc, vc, _, tables, lens = _small_attention()

    def f(q):
        out = torch.empty_like(q)
        ops.paged_attention_v1(out, q, kc, vc, 3, 0.125, tables, lens, 16, 40, None, "auto",
                               1.0, 1.0)  # 3 kv heads do not divide 4 query heads
        return out

    with pytest.raises(Exception, match="num_kv_heads"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(q)
