"""The Triton backend in the registry: when it runs, why it does not, what it accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kvpager
import kvpager.backends as registry
import kvpager.ops as ops
from kvpager.backends import BackendUnavailableError
from kvpager.backends.triton import BACKEND, TritonBackend, runtime

ROOT = str(Path(kvpager.__file__).resolve().parent.parent)


def test_importing_the_backend_imports_neither_torch_nor_triton() -> None:
    """The registry lists backends without importing their dependencies."""
    code = ("import sys, kvpager.backends.triton as t; "
            "print(sorted(m for m in ('torch', 'triton') if m in sys.modules)); "
            "print(type(t.BACKEND).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": ROOT, "PATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "TritonBackend"]


def test_registered_under_its_name() -> None:
    assert "triton" in registry.names()
    assert BACKEND.name == "triton" and isinstance(BACKEND, TritonBackend)


def test_missing_triton_is_a_reason_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_state", {})  # forget the cached answer
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise
    monkeypatch.setitem(sys.modules, "triton.language", None)
    reason = TritonBackend().unavailable_reason()
    assert reason is not None and reason.startswith("cannot import triton")


def test_cuda_tensors_are_always_accepted() -> None:
    assert BACKEND.device_reason(torch.device("cuda")) is None
    assert BACKEND.device_reason(torch.device("cuda", 1)) is None


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_state", {})  # kernels not imported yet: the variable rules
    monkeypatch.delenv(runtime.INTERPRET_ENV, raising=False)
    reason = BACKEND.device_reason(torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    monkeypatch.setenv(runtime.INTERPRET_ENV, "1")
    assert BACKEND.device_reason(torch.device("cpu")) is None


def test_the_mode_of_imported_kernels_wins_over_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Triton fixes interpreted or compiled when a kernel is defined, so setting the variable
    afterwards does not make compiled kernels accept CPU tensors, and the reason says so."""
    monkeypatch.setattr(runtime, "_state", {"interpreted": False})
    monkeypatch.setenv(runtime.INTERPRET_ENV, "1")
    reason = BACKEND.device_reason(torch.device("cpu"))
    assert reason is not None and "imported before TRITON_INTERPRET=1" in reason
    monkeypatch.setattr(runtime, "_state", {"interpreted": True})
    monkeypatch.delenv(runtime.INTERPRET_ENV)
    assert BACKEND.device_reason(torch.device("cpu")) is None


def test_other_devices_are_refused_with_the_device_named() -> None:
    reason = BACKEND.device_reason(torch.device("meta"))
    assert reason is not None and "meta" in reason


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"dtype": torch.float64}, "float64"),
    ({"dtype": torch.int8}, "int8"),
    ({"kv_cache_dtype": "int4"}, "int4"),
    ({"head_size": 0}, "must be positive"),
])
def test_capability_reasons_name_what_is_missing(kwargs, fragment) -> None:
    args = {"head_size": 128, "block_size": 16, "dtype": torch.float16,
            "kv_cache_dtype": "auto", **kwargs}
    reason = BACKEND.capability_reason(**args)
    assert reason is not None and fragment in reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3", "fp8_e5m2"])
def test_every_supported_configuration_is_accepted(dtype, kv_cache_dtype) -> None:
    for head_size in (32, 80, 120, 256):
        for block_size in (8, 16, 32):
            assert BACKEND.capability_reason(head_size=head_size, block_size=block_size,
                                             dtype=dtype, kv_cache_dtype=kv_cache_dtype) is None


def test_auto_on_cpu_never_picks_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    picked = registry.resolve("auto", torch.device("cpu"), head_size=64, block_size=16,
                              dtype=torch.float16)
    assert picked.name == "reference"


def test_named_triton_on_cpu_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for by name and unable to serve the call: an error, never another backend."""
    monkeypatch.setattr(runtime, "_state", {"interpreted": False})
    monkeypatch.delenv(runtime.INTERPRET_ENV, raising=False)
    key_cache, value_cache = ops.allocate_kv_cache(2, 1, 64, 16, dtype=torch.float16)
    query = torch.randn(1, 2, 64).half()
    out = torch.full_like(query, 7.0)
    with pytest.raises(BackendUnavailableError, match="backend 'triton' cannot run this call"):
        ops.paged_attention_v1(out, query, key_cache, value_cache, 1, 0.125,
                               torch.tensor([[0]], dtype=torch.int32),
                               torch.tensor([3], dtype=torch.int32), 16, 3, None, "auto",
                               1.0, 1.0, backend="triton")
    assert out.eq(7.0).all()


@pytest.mark.parametrize(("head_size", "block_size", "ok"), [
    (128, 16, True), (80, 8, True), (64, 64, True), (64, 12, False), (64, 1024, False),
])
def test_tile_configuration(head_size, block_size, ok) -> None:
    from kvpager.backends.triton.attention import attention_config

    if not ok:
        with pytest.raises(ValueError, match=r"^block_size must be a power of two"):
            attention_config(head_size, block_size, 8, 2, torch.float16, interpreted=False)
        return
    cfg = attention_config(head_size, block_size, 8, 2, torch.float16, interpreted=False)
    assert cfg.head_pad >= head_size and cfg.head_pad & (cfg.head_pad - 1) == 0
    assert cfg.tile % block_size == 0 and 512 % cfg.tile == 0
    assert cfg.group == 4 and cfg.group_pad == 16 and cfg.use_dot
    mha = attention_config(head_size, block_size, 8, 8, torch.float16, interpreted=False)
    assert mha.group_pad == 1 and not mha.use_dot
