"""Compile checks of the CUDA backend sources; needs nvcc, not a GPU.

* every .cu file under kvpager/backends/cuda/csrc compiles with `nvcc -c` for sm_80 and
  sm_90a, with warnings as errors (nvcc, host compiler and ptxas, register spills included);
* the torch binding (binding*.cpp) compiles with g++ against torch's headers, and every kvp::
  function it calls is defined by one of the .cu objects (the plain C++ interface is
  consistent).

Marked `compile` (measured on two cores shared with other work: 150-270 s wall and about 180
CPU-seconds for the .cu files, plus about a minute for the binding's three .cpp files):
deselected by default, run with `python -m pytest -m compile`; CI runs it as its own step.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "kvpager" / "backends" / "cuda" / "csrc"
_HOME_NVCC = os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc")
NVCC = shutil.which("nvcc") or (_HOME_NVCC if os.path.isfile(_HOME_NVCC) else None)

pytestmark = [
    pytest.mark.compile,
    pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)"),
]

GENCODE = [
    "-gencode", "arch=compute_80,code=sm_80",
    "-gencode", "arch=compute_90a,code=sm_90a",
]
# What torch.utils.cpp_extension adds to every nvcc command line: the kernels must compile
# under the same defines the JIT build uses.
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]
STRICT = [
    "-Werror", "all-warnings",
    "-Xcompiler", "-Wall,-Wextra,-Werror",
    "-Xptxas", "-warn-spills,-Werror",
]


def _nvcc_flags() -> list[str]:
    from kvpager.backends.cuda.build import NVCC_FLAGS

    return [*NVCC_FLAGS, *TORCH_NVCC_FLAGS, *GENCODE, *STRICT, "-Xcompiler", "-fPIC"]


def _compile_cu(source: Path, out_dir: Path) -> tuple[Path, int, str, float]:
    obj = out_dir / (source.stem + ".o")
    start = time.monotonic()
    proc = subprocess.run(
        [NVCC, "-c", str(source), "-o", str(obj), "-I", str(CSRC), *_nvcc_flags()],
        capture_output=True, text=True, check=False,
    )
    return obj, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


@pytest.fixture(scope="module")
def cu_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every .cu compiled once, in parallel over the available cores."""
    out_dir = tmp_path_factory.mktemp("cuda_objects")
    sources = sorted(CSRC.glob("*.cu"))
    assert sources, f"no .cu files under {CSRC}"
    workers = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    start = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Longest first (attention head sizes) so the short files fill the tail.
    order = sorted(sources, key=lambda p: (not p.name.startswith("attention_hs"), p.name))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda s: _compile_cu(s, out_dir), order))
    wall = time.monotonic() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    failures = [(obj.name, log) for obj, rc, log, _ in results if rc != 0]
    timing = ", ".join(f"{obj.stem} {t:.0f}s" for obj, _, _, t in results)
    print(f"\ncompiled {len(sources)} .cu files for sm_80+sm_90a on {workers} cores in "
          f"{wall:.0f}s wall, {cpu:.0f} CPU-seconds ({timing})")
    assert not failures, "\n\n".join(f"{name}:\n{log[-4000:]}" for name, log in failures)
    return [obj for obj, *_ in results]


def test_every_cu_file_compiles_for_sm80_and_sm90a(cu_objects: list[Path]) -> None:
    names = {p.stem for p in cu_objects}
    head_files = {n for n in names if n.startswith("attention_hs")}
    from kvpager.backends.cuda.backend import HEAD_SIZES

    # One translation unit per advertised head size: what capability_reason promises exists.
    assert head_files == {f"attention_hs{n}" for n in HEAD_SIZES}
    for obj in cu_objects:
        assert obj.stat().st_size > 0


def test_head_size_list_matches_the_cuda_dispatch() -> None:
    from kvpager.backends.cuda.backend import HEAD_SIZES

    text = (CSRC / "attention.cu").read_text()
    supported = re.search(r"attention_head_size_supported.*?\{(.*?)return true", text, re.S)
    assert supported is not None
    cases = sorted(int(n) for n in re.findall(r"case (\d+):", supported.group(1)))
    assert cases == list(HEAD_SIZES)


def test_attention_reads_q_k_v_only_in_16_byte_loads(tmp_path: Path) -> None:
    """In the PTX of every head-128 attention kernel, activations and cache elements are read
    with 16-byte vector loads only: a 1- or 2-byte global load would mean an fp8/fp16/bf16
    element fell back to scalar reads (the only scalar loads left are 4-byte indices, ALiBi
    slopes and scales)."""
    from kvpager.backends.cuda.build import NVCC_FLAGS

    ptx = tmp_path / "hs128.ptx"
    proc = subprocess.run(
        [NVCC, "-ptx", str(CSRC / "attention_hs128.cu"), "-o", str(ptx), "-I", str(CSRC),
         "-arch=compute_90a", *NVCC_FLAGS, *TORCH_NVCC_FLAGS],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    kernels = re.split(r"\.visible \.entry ", ptx.read_text())[1:]
    kernels = [k for k in kernels if "paged_attention_kernel" in k.split("(")[0]]
    assert len(kernels) == 27  # 3 dtypes x 3 kv kinds x 3 block sizes
    for body in kernels:
        name = body.split("(")[0]
        assert re.search(r"ld\.global(\.nc)?\.v4\.", body), f"{name}: no 16-byte loads"
        narrow = re.findall(r"ld\.global(?:\.nc)?\.(?:u8|s8|b8|u16|s16|b16|f16|bf16)\s", body)
        assert not narrow, f"{name}: {len(narrow)} scalar 1-/2-byte global loads"


def _torch_include_flags(tmp: Path) -> list[str] | None:
    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        return None
    paths = include_paths()
    flags = [f for p in paths for f in ("-isystem", p)]
    # A CPU-only torch ships c10/cuda headers but not the generated CMake macro header they
    # include; for a compile-only check a one-line stand-in is enough.
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in paths):
        shim = tmp / "shim" / "c10" / "cuda" / "impl"
        shim.mkdir(parents=True)
        (shim / "cuda_cmake_macros.h").write_text(
            "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"
        )
        flags += ["-isystem", str(tmp / "shim")]
    return flags


def _cuda_include_flags() -> list[str]:
    """The CUDA toolkit's include directories, as nvcc itself reports them (`--dryrun`)."""
    proc = subprocess.run([NVCC, "--dryrun", "-c", "-x", "cu", os.devnull],
                          capture_output=True, text=True, check=False)
    flags: list[str] = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if "INCLUDES=" in line:
            for path in re.findall(r'(?:-I|"-isystem" ")([^" ]+)', line):
                flags += ["-isystem", path]
    return flags


def _symbols(obj: Path, undefined: bool) -> set[str]:
    args = ["nm", "-C", "--undefined-only" if undefined else "--defined-only", str(obj)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        name = line.split(maxsplit=2 if not undefined else 1)[-1]
        if name.startswith("kvp::"):
            names.add(name)
    return names


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("nm") is None,
                    reason="g++ and nm are needed to compile the binding")
def test_binding_compiles_and_links_against_the_kernels(
    cu_objects: list[Path], tmp_path: Path
) -> None:
    torch_flags = _torch_include_flags(tmp_path)
    if torch_flags is None:
        pytest.skip("torch is not installed: cannot compile the binding")
    cuda_include = _cuda_include_flags()
    sources = sorted(CSRC.glob("*.cpp"))
    assert CSRC / "binding.cpp" in sources

    def compile_cpp(source: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
        obj = tmp_path / (source.stem + ".o")
        cmd = [
            "g++", "-std=c++17", "-O0", "-fPIC", "-c", str(source), "-o", str(obj),
            "-Wall", "-Wextra", "-Werror",
            *torch_flags, *cuda_include,
            "-isystem", sysconfig.get_paths()["include"], "-I", str(CSRC),
            "-DTORCH_EXTENSION_NAME=kvpager_cuda_check", "-DTORCH_API_INCLUDE_EXTENSION_H",
        ]
        return obj, subprocess.run(cmd, capture_output=True, text=True, check=False)

    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(compile_cpp, sources))
    for obj, proc in results:
        assert proc.returncode == 0, f"{obj.stem}.cpp:\n{proc.stderr[-6000:]}"

    objects = [obj for obj, _ in results]
    needed: set[str] = set()
    defined: set[str] = set()
    for obj in objects:
        needed |= _symbols(obj, undefined=True)
    for obj in [*cu_objects, *objects]:
        defined |= _symbols(obj, undefined=False)
    assert needed, "the binding calls no kvp:: function: the symbol check would be vacuous"
    missing = needed - defined
    assert not missing, f"binding.cpp calls kvp:: functions no .cu file defines: {sorted(missing)}"


if __name__ == "__main__":  # `python tests/backends/test_cuda_compile.py` times the build
    sys.exit(pytest.main([__file__, "-s", "-q"]))
