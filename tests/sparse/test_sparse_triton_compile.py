"""The Triton kernels compile for a CUDA GPU, checked on a machine without one.

The interpreter (TRITON_INTERPRET=1) runs kernels as numpy and accepts code the compiler
refuses (a variable with different types in two branches, say). Compiling ahead of time for
an sm_80 target catches that here; ptxas ships inside the Triton wheel. The compile runs in a
subprocess because this test session may have imported the kernels in interpreter mode.
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
import sys
import triton
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as exc:
    print("SKIP no ahead-of-time compile API:", exc)
    sys.exit(0)
from kvpager.sparse import triton_topk, triton_vertical_slash as vs

def sig(pointers, ints, constexprs, **types):
    out = {**{p: "*i32" for p in pointers}, **{i: "i32" for i in ints}, **types}
    out.update({name: "constexpr" for name in constexprs})
    return out

def build(fn, signature, constexprs):
    try:
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    except TypeError as exc:
        print("SKIP this Triton's ASTSource takes other arguments:", exc)
        sys.exit(0)
    compiled = triton.compile(source, target=GPUTarget("cuda", 80, 32))
    assert "ptx" in compiled.asm, fn

blocks_sig = (["q_seqlens_ptr", "kv_seqlens_ptr", "slash_ptr", "n_slash_ptr",
               "block_count_ptr", "block_offset_ptr"], ["num_heads", "rows", "nnz_s", "capacity"])
columns_sig = (["q_seqlens_ptr", "vertical_ptr", "n_vertical_ptr", "block_count_ptr",
                "block_offset_ptr", "column_count_ptr", "column_index_ptr"],
               ["num_heads", "rows", "nnz_v", "capacity"])
for causal in (True, False):
    for block_m, block_n in ((64, 64), (64, 32)):
        const = dict(BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, BLOCK_R=vs.BLOCK_R)
        build(vs._blocks_kernel, sig(*blocks_sig, const), const)
        const = dict(const, SEARCH_STEPS=6)
        build(vs._columns_kernel, sig(*columns_sig, const), const)
for logits_type in ("*fp32", "*bf16", "*fp16"):
    const = dict(BLOCK=triton_topk.BLOCK, RADIX_BITS=triton_topk.RADIX_BITS)
    signature = sig(["starts_ptr", "ends_ptr", "out_ptr"],
                    ["stride0", "stride1", "out_stride0", "out_stride1", "top_k"], const,
                    logits_ptr=logits_type)
    build(triton_topk._topk_kernel, signature, const)
print("COMPILED")
"""


def test_kernels_compile_for_sm80() -> None:
    import kvpager

    root = str(Path(kvpager.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode == 0 and done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and "COMPILED" in done.stdout, done.stderr[-4000:]
