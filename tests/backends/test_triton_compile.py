"""The Triton backend's kernels compile for real GPU targets, checked without a GPU.

The interpreter runs kernels as numpy and accepts code the compiler refuses (types that
differ between branches, returns inside loops, unsupported dot shapes), so the CPU tests
alone would not catch them. Here every kernel is compiled ahead of time to PTX and cubin for
sm_80 (A100) and sm_90 (H100 / H200) with the ptxas shipped in the Triton wheel, over a set
of configurations that takes every compile-time switch both ways, and ptxas's resource
report is checked for register spills in the configurations the benchmark runs. Runs in a
subprocess because this session may have imported the kernels in interpreter mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# builds for real GPU targets take minutes on a small CPU: `python -m pytest -m compile`
pytestmark = pytest.mark.compile

SCRIPT = r"""
import subprocess, sys, tempfile
from pathlib import Path
import torch
import triton
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    print("SKIP no ahead-of-time compile API:", exc)
    sys.exit(0)
from kvpager.backends.triton import attention_kernels as ak, cache_ops, merge, mla_kernels
from kvpager.backends.triton.attention import attention_config
from kvpager.backends.triton.mla import mla_config

PTR = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32"}
X = {"float16": 8, "bfloat16": 8, "float32": 4}

def build(fn, signature, constexprs, arch, num_warps):
    signature = dict(signature, **{k: "constexpr" for k in constexprs})
    try:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    except TypeError as exc:
        print("SKIP this Triton's ASTSource takes other arguments:", exc)
        sys.exit(0)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps})
    assert "ptx" in compiled.asm and compiled.asm.get("cubin"), fn
    return compiled

def attention(arch, dtype, kv, heads, kv_heads, head, bs, partitioned, ptrs):
    t, cfg = PTR[dtype], attention_config(head, bs, heads, kv_heads, getattr(torch, dtype),
                                          interpreted=False)
    cache = "*u8" if kv else t
    sig = dict(out_ptr=t, exp_sums_ptr="*fp32", max_logits_ptr="*fp32", tmp_out_ptr=t,
               q_ptr=t, k_cache_ptr=cache, v_cache_ptr=cache, block_tables_ptr="*i32",
               seq_lens_ptr="*i32", alibi_ptr="*fp32", sinks_ptr="*fp32",
               k_scale="*fp32" if ptrs else "fp32", v_scale="*fp32" if ptrs else "fp32",
               qk_factor="fp32", v_factor="fp32", q_seq_stride="i32", k_block_stride="i32",
               v_block_stride="i32", table_stride="i32", max_partitions="i32",
               num_kv_heads="i32", group="i32", per_program="i32", has_alibi="i32",
               tp_rank="i32",
               sparse_local="i32", sparse_vert="i32", sparse_block="i32", sparse_step="i32",
               window="i32", has_sinks="i32")
    const = dict(HEAD_SIZE=head, HEAD_PAD=cfg.head_pad, BLOCK_SIZE=bs, X=16 if kv else X[dtype],
                 GROUP_PAD=cfg.group_pad, TILE=cfg.tile, PARTITION_SIZE=512,
                 PARTITIONED=partitioned, KV_FP8=kv, K_SCALE_PTR=ptrs, V_SCALE_PTR=ptrs,
                 USE_DOT=cfg.use_dot, DOT_F32=False, NUM_STAGES=cfg.num_stages)
    return build(ak.paged_attention_kernel, sig, const, arch, cfg.num_warps)

def spills(compiled):
    # ptxas's resource report: "REG:n STACK:m ..."; a non-zero stack means spilled registers.
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name],
                             capture_output=True, text=True).stdout
    line = next(row for row in out.splitlines() if "STACK:" in row)
    return int(line.split("STACK:")[1].split()[0])

# (dtype, kv format, heads, kv heads, head size, block, v2, tensor scales); ALiBi, sparsity
# and the group size are run-time arguments, compiled once with the rest.
SWITCHES = [
    ("float16", 0, 32, 8, 128, 16, False, False),
    ("bfloat16", 1, 32, 8, 80, 16, True, True),
    ("float32", 2, 8, 8, 256, 32, True, False),
    ("float16", 1, 40, 40, 112, 8, False, False),
    ("bfloat16", 2, 64, 1, 192, 32, False, True),
    ("float32", 0, 16, 2, 32, 8, True, True),
    ("float16", 2, 32, 4, 120, 16, True, False),
    ("bfloat16", 0, 8, 1, 96, 8, True, False),
]
# The benchmark's shapes: 32 query heads, 8 or 32 kv heads, head 128, block 16.
BENCH = [(dtype, kv, 32, kv_heads, 128, 16, v2, False)
         for dtype, kv in (("float16", 0), ("bfloat16", 0), ("float16", 1))
         for kv_heads in (8, 32) for v2 in (False, True)]
arch_list = [int(a) for a in sys.argv[1:]]
for arch in arch_list:
    for args in SWITCHES:
        attention(arch, *args)
    for args in BENCH if arch == 90 else []:
        stack = spills(attention(arch, *args))
        assert stack in (None, 0), f"register spills ({stack} bytes of stack) for {args}"
    for dtype in PTR:
        for chunk in (1, 32):
            build(ak.reduce_partitions_kernel,
                  dict(out_ptr=PTR[dtype], exp_sums_ptr="*fp32", max_logits_ptr="*fp32",
                       tmp_out_ptr=PTR[dtype], seq_lens_ptr="*i32", sinks_ptr="*fp32",
                       num_heads="i32", max_partitions="i32", window="i32", has_sinks="i32"),
                  dict(HEAD_SIZE=80, HEAD_PAD=128, PARTITION_SIZE=512, CHUNK=chunk), arch, 4)
    for dtype, kv, ptrs in (("float16", 0, False), ("bfloat16", 1, True), ("float32", 2, False)):
        cache = "*u8" if kv else PTR[dtype]
        build(cache_ops.reshape_and_cache_kernel,
              dict(key_ptr=PTR[dtype], value_ptr=PTR[dtype], key_cache_ptr=cache,
                   value_cache_ptr=cache, slot_mapping_ptr="*i64",
                   k_scale="*fp32" if ptrs else "fp32", v_scale="*fp32" if ptrs else "fp32",
                   key_token_stride="i32", value_token_stride="i32", k_block_stride="i32",
                   v_block_stride="i32"),
              dict(HEAD_SIZE=96, HEAD_PAD=128, BLOCK_SIZE=16, X=16 if kv else X[dtype],
                   KV_FP8=kv, K_SCALE_PTR=ptrs, V_SCALE_PTR=ptrs), arch, 1)
    for dtype in PTR:
        for lse in (False, True):
            build(merge.merge_attn_states_kernel,
                  dict(output_ptr=PTR[dtype], prefix_ptr=PTR[dtype], prefix_lse_ptr="*fp32",
                       suffix_ptr=PTR[dtype], suffix_lse_ptr="*fp32",
                       output_lse_ptr="*fp32" if lse else PTR[dtype], num_tokens="i32",
                       output_stride="i32", prefix_stride="i32", suffix_stride="i32"),
                  dict(HEAD_SIZE=120, HEAD_PAD=128, WRITE_LSE=lse), arch, 1)
    # MLA decode: DeepSeek-V3's 512 + 64 in each dtype and block size, an odd layout, no rope.
    for dtype, rank, rope, bs in (("bfloat16", 512, 64, 64), ("float16", 512, 64, 16),
                                  ("float32", 512, 64, 32), ("bfloat16", 96, 32, 8),
                                  ("float16", 128, 0, 16)):
        config = mla_config(rank, rope, getattr(torch, dtype), interpreted=False)
        build(mla_kernels.paged_mla_decode_kernel,
              dict(out_ptr=PTR[dtype], q_ptr=PTR[dtype], cache_ptr=PTR[dtype],
                   block_tables_ptr="*i32", seq_lens_ptr="*i32", scale="fp32",
                   q_seq_stride="i32", cache_block_stride="i32", table_stride="i32",
                   num_heads="i32", window="i32"),
              dict(config, BLOCK_SIZE=bs), arch, 4 if rank <= 128 else 8)
print("COMPILED", arch_list)
"""


@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_gpu_targets(arch: int) -> None:
    import kvpager

    root = str(Path(kvpager.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(arch)], env=env, capture_output=True, text=True,
        timeout=900,
    )
    if done.returncode == 0 and done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and "COMPILED" in done.stdout, done.stderr[-4000:]
