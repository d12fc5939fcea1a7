"""The CUDA backend's Python side, on any machine: availability, build configuration, locking,
capability answers and the rule that kernel sources never include torch headers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

import pytest

from kvpager.backends.cuda import build
from kvpager.backends.cuda.backend import CudaBackend

REPO = Path(__file__).resolve().parents[2]


def _cuda_usable() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.version.cuda is not None and torch.cuda.is_available()


no_cuda = pytest.mark.skipif(_cuda_usable(), reason="this machine has a CUDA device")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KVPAGER_* settings from the caller's shell, and a private build cache."""
    for var in (build.ENV_ARCH, build.ENV_DISABLE, build.ENV_VERBOSE):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(build.ENV_CACHE, str(cache))
    return cache


# ---- import and availability -----------------------------------------------------------------

def test_importing_the_backend_imports_no_torch() -> None:
    code = (
        "import sys, kvpager.backends.cuda as c; "
        "assert c.BACKEND.name == 'cuda'; "
        "print(sorted(m for m in ('torch', 'triton') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout
    assert out.strip() == "[]"


@no_cuda
def test_without_a_gpu_the_reason_says_so_and_nothing_is_built(clean_env: Path) -> None:
    reason = CudaBackend().unavailable_reason()
    assert reason is not None
    assert reason.startswith("no CUDA device (torch.cuda is not available")
    assert not clean_env.exists()  # no build directory, no lock file: nothing was compiled


def test_disable_variable_wins_over_everything(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(build.ENV_DISABLE, "1")
    assert CudaBackend().unavailable_reason() == "disabled by KVPAGER_DISABLE_CUDA=1"
    with pytest.raises(build.CudaBuildError, match="disabled by KVPAGER_DISABLE_CUDA=1"):
        build.load_extension()


@no_cuda
def test_registry_reports_cuda_with_its_reason(clean_env: Path) -> None:
    from kvpager import backends

    backends._loaded.pop("cuda", None)  # the registry caches; start from scratch
    try:
        reason = backends.status()["cuda"]
        assert reason is not None and "no CUDA device" in reason
        assert "cuda" not in backends.available()
        with pytest.raises(backends.BackendUnavailableError, match="no CUDA device"):
            backends.get("cuda")
    finally:
        backends._loaded.pop("cuda", None)


@no_cuda
def test_an_op_without_cuda_raises_a_build_error_not_a_traceback(clean_env: Path) -> None:
    torch = pytest.importorskip("torch")
    backend = CudaBackend()
    x = torch.zeros(1, 1, 8)
    with pytest.raises(build.CudaBuildError, match=r"cannot use the cuda backend: torch .*CUDA"):
        backend.merge_attn_states(x, x, torch.zeros(1, 1), x, torch.zeros(1, 1))
    assert not clean_env.exists()


def test_missing_nvcc_message_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    message = build.nvcc_problem()
    assert message is not None
    assert "nvcc not found" in message
    assert "CUDA_HOME" in message and "KVPAGER_DISABLE_CUDA=1" in message


def test_find_nvcc_uses_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = build.find_nvcc()
    # torch's CUDA_HOME (a CUDA build of torch) takes precedence; otherwise PATH decides.
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        CUDA_HOME = None
    if not CUDA_HOME:
        assert found == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    if not CUDA_HOME:
        assert build.find_nvcc() is None


# ---- build configuration ---------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9.0a", ["-gencode", "arch=compute_90a,code=sm_90a"]),
        ("8.0", ["-gencode", "arch=compute_80,code=sm_80"]),
        ("8.0;9.0", ["-gencode", "arch=compute_80,code=sm_80",
                     "-gencode", "arch=compute_90,code=sm_90"]),
        (" 8.6 , 10.0a ", ["-gencode", "arch=compute_86,code=sm_86",
                           "-gencode", "arch=compute_100a,code=sm_100a"]),
        ("8.9+PTX", ["-gencode", "arch=compute_89,code=sm_89",
                     "-gencode", "arch=compute_89,code=compute_89"]),
    ],
)
def test_parse_arch_list(value: str, expected: list[str]) -> None:
    assert build.parse_arch_list(value) == expected


@pytest.mark.parametrize("value", ["", "sm_90", "9", "9.0b", "90", "9.0;x"])
def test_parse_arch_list_rejects_bad_values_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="KVPAGER_CUDA_ARCH"):
        build.parse_arch_list(value)


def test_arch_variable_is_used_without_touching_the_device(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(build.ENV_ARCH, "9.0a")
    assert build.resolve_arch_flags() == ["-gencode", "arch=compute_90a,code=sm_90a"]
    monkeypatch.setenv(build.ENV_ARCH, "hopper")
    with pytest.raises(build.CudaBuildError, match="KVPAGER_CUDA_ARCH"):
        build.resolve_arch_flags()


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(build.ENV_CACHE, str(tmp_path / "explicit"))
    assert build.cache_root() == tmp_path / "explicit"
    monkeypatch.delenv(build.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "kvpager" / "cuda"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.cache_root() == tmp_path / "home" / ".cache" / "kvpager" / "cuda"


def test_sources_are_every_cu_file_plus_the_binding() -> None:
    names = [p.name for p in build.source_files()]
    cpp = [n for n in names if n.endswith(".cpp")]
    assert "binding.cpp" in cpp and all(n.startswith("binding") for n in cpp)
    assert sorted(set(names) - set(cpp)) == sorted(p.name for p in build.CSRC.glob("*.cu"))
    assert {f"attention_hs{n}.cu" for n in (32, 64, 80, 96, 112, 120, 128, 192, 256)} <= set(names)
    module_defs = [n for n in cpp if "PYBIND11_MODULE" in (build.CSRC / n).read_text()]
    assert module_defs == ["binding.cpp"]


def test_a_changed_source_gets_a_new_extension_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    copy = tmp_path / "csrc"
    copy.mkdir()
    for path in build.CSRC.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(build, "CSRC", copy)
    flags = build.parse_arch_list("9.0a")
    before = build.extension_name(flags)
    assert re.fullmatch(r"kvpager_cuda_[0-9a-f]{16}", before)
    assert build.extension_name(flags) == before  # stable
    assert build.extension_name(build.parse_arch_list("8.0")) != before  # flags count
    header = copy / "common.cuh"
    header.write_text(header.read_text() + "\n// edited\n")
    assert build.extension_name(flags) != before  # headers count, not only .cu files


def test_fast_math_is_never_used() -> None:
    # FP8 quantization relies on IEEE division to match torch's bytes exactly.
    assert not any("fast_math" in f or "fast-math" in f for f in build.NVCC_FLAGS)


# ---- locking ---------------------------------------------------------------------------------

def test_file_lock_excludes_a_second_holder_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / "build.lock"
    outcome: dict[str, object] = {}

    def contender() -> None:
        try:
            with build.file_lock(lock, timeout_s=0.3, poll_s=0.05):
                outcome["got"] = True
        except build.CudaBuildError as exc:
            outcome["error"] = str(exc)

    with build.file_lock(lock):
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join()
    assert "got" not in outcome
    assert "another process is building" in str(outcome["error"])

    thread = threading.Thread(target=contender)  # released: now it succeeds
    thread.start()
    thread.join()
    assert outcome.get("got") is True


def test_file_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    lock = tmp_path / "build.lock"
    with pytest.raises(RuntimeError, match="boom"), build.file_lock(lock):
        raise RuntimeError("boom")
    with build.file_lock(lock, timeout_s=0.1, poll_s=0.02):
        pass


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / "build.lock"
    code = (
        "import sys; from pathlib import Path; from kvpager.backends.cuda import build\n"
        "try:\n"
        "    with build.file_lock(Path(sys.argv[1]), timeout_s=0.3, poll_s=0.05): print('got')\n"
        "except build.CudaBuildError: print('blocked')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def other() -> str:
        return subprocess.run([sys.executable, "-c", code, str(lock)], capture_output=True,
                              text=True, check=True, env=env).stdout.strip()

    with build.file_lock(lock):
        assert other() == "blocked"
    assert other() == "got"


# ---- capability ------------------------------------------------------------------------------

@pytest.fixture
def torch_mod() -> ModuleType:
    return pytest.importorskip("torch")


@pytest.mark.parametrize("head_size", [32, 64, 80, 96, 112, 120, 128, 192, 256])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_every_compiled_configuration_is_accepted(
    torch_mod: ModuleType, head_size: int, block_size: int
) -> None:
    backend = CudaBackend()
    for dtype in (torch_mod.float32, torch_mod.float16, torch_mod.bfloat16):
        assert backend.capability_reason(
            head_size=head_size, block_size=block_size, dtype=dtype, kv_cache_dtype="auto"
        ) is None
        for kv in ("fp8", "fp8_e4m3", "fp8_e5m2"):
            reason = backend.capability_reason(
                head_size=head_size, block_size=block_size, dtype=dtype, kv_cache_dtype=kv
            )
            # 120 = 7.5 chunks of x = 16: the fp8 key layout cannot hold it.
            assert (reason is None) == (head_size != 120), reason


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"head_size": 48}, "head_size 48"),
        ({"head_size": 512}, "head_size 512"),
        ({"block_size": 64}, "block_size 64"),
        ({"block_size": 1}, "block_size 1"),
        ({"kv_cache_dtype": "int8"}, "kv_cache_dtype 'int8'"),
        ({"head_size": 120, "kv_cache_dtype": "fp8"}, "multiple of x = 16"),
    ],
)
def test_unsupported_configurations_are_explained(
    torch_mod: ModuleType, kwargs: dict, needle: str
) -> None:
    args = {"head_size": 128, "block_size": 16, "dtype": torch_mod.float16,
            "kv_cache_dtype": "auto", **kwargs}
    reason = CudaBackend().capability_reason(**args)
    assert reason is not None and needle in reason


def test_unsupported_dtype_is_explained(torch_mod: ModuleType) -> None:
    reason = CudaBackend().capability_reason(
        head_size=128, block_size=16, dtype=torch_mod.float64, kv_cache_dtype="auto"
    )
    assert reason is not None and "float64" in reason


def test_cpu_tensors_are_refused_by_device_reason(torch_mod: ModuleType) -> None:
    reason = CudaBackend().device_reason(torch_mod.device("cpu"))
    assert reason is not None and "cpu" in reason


def test_scales_become_values_unless_they_live_on_the_gpu(torch_mod: ModuleType) -> None:
    from kvpager.backends.cuda.backend import _split_scale

    assert _split_scale(0.5) == (None, 0.5)
    assert _split_scale(torch_mod.tensor(0.25)) == (None, 0.25)
    if torch_mod.cuda.is_available():
        t = torch_mod.tensor(0.125, device="cuda")
        tensor, value = _split_scale(t)
        assert tensor is t and value == 1.0


# ---- source hygiene --------------------------------------------------------------------------

def test_kernel_sources_include_no_torch_headers() -> None:
    torch_like = re.compile(r'#\s*include\s*[<"](torch|ATen|c10|pybind11)/')
    offenders = []
    for path in sorted(build.CSRC.iterdir()):
        if path.name.startswith("binding"):  # the torch binding is where torch belongs
            continue
        for line in path.read_text().splitlines():
            if torch_like.search(line):
                offenders.append(f"{path.name}: {line.strip()}")
    assert not offenders, offenders
