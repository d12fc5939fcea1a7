"""Just-in-time build of the CUDA extension: flags, cache directory, file lock, loader.

The kernels are compiled on first real use, never at import or install time: an install needs
no nvcc, and the build targets exactly the GPU it will run on. The result is cached under
`$KVPAGER_CUDA_CACHE` (default `~/.cache/kvpager/cuda`, or `$XDG_CACHE_HOME/kvpager/cuda`) in a
directory named after a digest of the sources, the flags and the torch/CUDA/Python versions, so
a changed source or another torch never loads a stale binary and several versions coexist.

Environment:
    KVPAGER_CUDA_ARCH      architectures to build for, e.g. "9.0a", "8.0", "8.0;9.0",
                           "8.6+PTX" (default: the current device's compute capability)
    KVPAGER_CUDA_CACHE     build directory root
    KVPAGER_DISABLE_CUDA   "1" turns the backend off (reported by the registry, nothing built)
    KVPAGER_CUDA_VERBOSE   "1" shows the compiler output
    MAX_JOBS               parallel compiler jobs (torch's ninja build honours it)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from kvpager.core.errors import KVPagerError

ENV_ARCH = "KVPAGER_CUDA_ARCH"
ENV_CACHE = "KVPAGER_CUDA_CACHE"
ENV_DISABLE = "KVPAGER_DISABLE_CUDA"
ENV_VERBOSE = "KVPAGER_CUDA_VERBOSE"

CSRC = Path(__file__).resolve().parent / "csrc"
#: Host-side flags of the binding (.cpp). The C++ standard is left to torch (C++17 up to
#: torch 2.11, C++20 later): its headers decide what they need; binding.cpp compiles with both.
CXX_FLAGS = ["-O3"]
#: nvcc flags besides the -gencode ones (the .cu files include no torch header, so they pick
#: their own standard). No --use_fast_math: FP8 quantization divides by the
#: scale with IEEE division so the cache bytes match torch's `(x / scale).to(fp8)` exactly.
#: -lineinfo lets compute-sanitizer and Nsight point at source lines, at no runtime cost.
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]
#: How long a process waits for another one that is building the same extension.
LOCK_TIMEOUT_S = 3600.0

_log = logging.getLogger("kvpager.backends.cuda")
_ARCH_RE = re.compile(r"^(\d{1,2})\.(\d)([af]?)(\+PTX)?$")


class CudaBuildError(KVPagerError, RuntimeError):
    """The CUDA extension cannot be built or loaded here (no nvcc, CPU-only torch, compile
    error). The message says what is missing and how to fix or avoid it."""


# ---- configuration ---------------------------------------------------------------------------

def disabled() -> bool:
    """True when `$KVPAGER_DISABLE_CUDA` asks for the backend to be off."""
    return os.environ.get(ENV_DISABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def parse_arch_list(value: str) -> list[str]:
    """nvcc `-gencode` flags for an architecture list such as "9.0a", "8.0;9.0" or "8.6+PTX".

    Entries are separated by ';', ',' or spaces; "+PTX" also embeds PTX for newer GPUs.
    Raises ValueError naming `KVPAGER_CUDA_ARCH` for anything else.
    """
    entries = [e for e in re.split(r"[;,\s]+", value.strip()) if e]
    if not entries:
        raise ValueError(f"{ENV_ARCH} is empty; give an architecture such as '8.0' or '9.0a'")
    flags: list[str] = []
    for entry in entries:
        match = _ARCH_RE.match(entry)
        if match is None:
            raise ValueError(
                f"{ENV_ARCH}: {entry!r} is not an architecture like '8.0', '9.0a' or '8.6+PTX'"
            )
        major, minor, suffix, ptx = match.groups()
        sm = f"{major}{minor}{suffix}"
        flags += ["-gencode", f"arch=compute_{sm},code=sm_{sm}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{sm},code=compute_{sm}"]
    return flags


def arch_string() -> str:
    """`$KVPAGER_CUDA_ARCH`, else the compute capability of the current CUDA device."""
    value = os.environ.get(ENV_ARCH, "").strip()
    if value:
        return value
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def cache_root() -> Path:
    """Root of the build cache: `$KVPAGER_CUDA_CACHE`, else `~/.cache/kvpager/cuda`."""
    value = os.environ.get(ENV_CACHE, "").strip()
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kvpager" / "cuda"


def source_files() -> list[Path]:
    """Translation units of the extension: every .cu under csrc/ plus the torch binding's .cpp
    files (binding.cpp holds the module definition)."""
    return [*sorted(CSRC.glob("*.cu")), *sorted(CSRC.glob("*.cpp"))]


def _digest(arch_flags: list[str]) -> str:
    """Digest of every file under csrc/, the flags and the toolchain versions."""
    import torch

    h = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    for part in (*CXX_FLAGS, *NVCC_FLAGS, *arch_flags, torch.__version__,
                 str(torch.version.cuda), sys.version.split()[0]):
        h.update(part.encode())
    return h.hexdigest()[:16]


def extension_name(arch_flags: list[str]) -> str:
    """Python module name of the built extension (a digest keeps versions apart)."""
    return f"kvpager_cuda_{_digest(arch_flags)}"


def build_directory(arch_flags: list[str]) -> Path:
    return cache_root() / extension_name(arch_flags)


def find_nvcc() -> str | None:
    """Path of nvcc: `$CUDA_HOME/bin/nvcc` (as torch resolves it), else the one on PATH."""
    try:
        from torch.utils.cpp_extension import CUDA_HOME as cuda_home
    except ImportError:
        cuda_home = None
    if cuda_home:
        candidate = Path(cuda_home) / "bin" / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("nvcc")


def prebuilt_library(arch_flags: list[str]) -> Path | None:
    """The already-built shared library for these flags, if a previous run left one."""
    directory = build_directory(arch_flags)
    path = directory / f"{extension_name(arch_flags)}.so"
    return path if path.is_file() else None


# ---- locking ---------------------------------------------------------------------------------

@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S, poll_s: float = 0.5) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if missing), held for the `with` body.

    flock locks belong to an open file description, so two processes, or two threads that
    each call this, exclude each other; the kernel drops the lock if the holder dies, so a
    crashed build never leaves a stale lock behind. Raises CudaBuildError after `timeout_s`.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CudaBuildError(
                        f"timed out after {timeout_s:.0f}s waiting for {path}: another process "
                        "is building the kvpager CUDA extension (remove nothing; wait or set "
                        f"{ENV_CACHE} to another directory)"
                    ) from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---- loading ---------------------------------------------------------------------------------

_module: ModuleType | None = None
_module_lock = threading.Lock()


def torch_problem() -> str | None:
    """Why torch cannot run CUDA extensions at all here, or None."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not installed ({exc})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    return None


def nvcc_problem() -> str | None:
    """Why the kernels cannot be compiled here (no nvcc), or None."""
    if find_nvcc() is not None:
        return None
    import torch

    return (
        "nvcc not found: the cuda backend compiles its kernels on first use; install the CUDA "
        f"toolkit (torch was built with CUDA {torch.version.cuda}) and set CUDA_HOME or put "
        f"nvcc on PATH, or set {ENV_DISABLE}=1 to use the triton/reference backends"
    )


def resolve_arch_flags() -> list[str]:
    """-gencode flags for `$KVPAGER_CUDA_ARCH` or the current device; CudaBuildError if
    neither says which GPU to build for."""
    try:
        return parse_arch_list(arch_string())
    except ValueError as exc:
        raise CudaBuildError(str(exc)) from None
    except (RuntimeError, AssertionError) as exc:  # torch.cuda without a usable device
        raise CudaBuildError(
            f"cannot tell which GPU to compile for ({exc}); set {ENV_ARCH}, e.g. '9.0a'"
        ) from None


def load_extension() -> ModuleType:
    """The compiled extension module, building it first if this machine has no cached build.

    Thread-safe and process-safe (file lock in the build directory). Raises CudaBuildError
    with a one-paragraph explanation instead of a compiler traceback.
    """
    global _module
    with _module_lock:
        if _module is not None:
            return _module
        if disabled():
            raise CudaBuildError(f"the cuda backend is disabled by {ENV_DISABLE}=1")
        problem = torch_problem()
        if problem is not None:
            raise CudaBuildError(f"cannot use the cuda backend: {problem}")
        arch_flags = resolve_arch_flags()
        problem = nvcc_problem()
        if problem is None:
            _module = _build_and_load(arch_flags)
            return _module
        prebuilt = prebuilt_library(arch_flags)
        if prebuilt is None:
            raise CudaBuildError(problem)
        # A machine without nvcc (a serving image) can still use a build from the cache.
        _module = _import_library(extension_name(arch_flags), prebuilt)
        return _module


def _import_library(name: str, path: Path) -> ModuleType:
    import importlib.util

    import torch  # noqa: F401  (the extension links against torch's libraries)

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CudaBuildError(f"cannot load the prebuilt kvpager CUDA extension {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_and_load(arch_flags: list[str]) -> ModuleType:
    from torch.utils import cpp_extension

    name = extension_name(arch_flags)
    directory = build_directory(arch_flags)
    directory.mkdir(parents=True, exist_ok=True)
    verbose = os.environ.get(ENV_VERBOSE, "").strip() in {"1", "true", "yes"}
    with file_lock(directory / "kvpager-build.lock"):
        if prebuilt_library(arch_flags) is None:
            _log.warning(
                "kvpager: compiling the CUDA kernels for %s into %s (first use only; a few "
                "minutes)", " ".join(arch_flags[1::2]), directory,
            )
        try:
            return cpp_extension.load(
                name=name,
                sources=[str(p) for p in source_files()],
                extra_cflags=CXX_FLAGS,
                extra_cuda_cflags=[*NVCC_FLAGS, *arch_flags],
                extra_include_paths=[str(CSRC)],
                build_directory=str(directory),
                verbose=verbose,
                with_cuda=True,
            )
        except Exception as exc:  # compiler, linker and import failures alike
            detail = str(exc).strip().splitlines()
            tail = " | ".join(detail[-6:]) if detail else type(exc).__name__
            raise CudaBuildError(
                f"building the kvpager CUDA extension in {directory} failed: {tail}. Rerun "
                f"with {ENV_VERBOSE}=1 to see the compiler output, or set {ENV_DISABLE}=1 to "
                "use the triton/reference backends."
            ) from exc


__all__ = [
    "CSRC",
    "ENV_ARCH",
    "ENV_CACHE",
    "ENV_DISABLE",
    "ENV_VERBOSE",
    "NVCC_FLAGS",
    "CudaBuildError",
    "arch_string",
    "build_directory",
    "cache_root",
    "disabled",
    "extension_name",
    "file_lock",
    "find_nvcc",
    "load_extension",
    "nvcc_problem",
    "parse_arch_list",
    "resolve_arch_flags",
    "source_files",
    "torch_problem",
]
