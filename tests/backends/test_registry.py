"""Backend selection as kvpager.ops uses it: names, availability, capabilities, $KVPAGER_BACKEND."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import kvpager.backends as registry
import kvpager.ops as ops
from kvpager.backends import BackendUnavailableError
from kvpager.backends.reference import ReferenceBackend

FAKE_MODULE = "kvpager_tests_fake_backend"


class RecordingBackend(ReferenceBackend):
    """The reference, renamed, refusing head size 80, recording what it was asked to do."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def device_reason(self, device: torch.device) -> str | None:
        return None  # accepts even meta tensors, unlike the reference

    def capability_reason(self, *, head_size, block_size, dtype, kv_cache_dtype) -> str | None:
        return "head size 80 is not built" if head_size == 80 else None

    def paged_attention_v1(self, *args) -> None:
        self.calls.append(("paged_attention_v1", args))
        super().paged_attention_v1(*args)

    def reshape_and_cache(self, *args) -> None:
        self.calls.append(("reshape_and_cache", args))
        super().reshape_and_cache(*args)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> RecordingBackend:
    """Registry with two backends, "fake" (tried first) and "reference", plus "ghost"
    whose module does not exist."""
    backend = RecordingBackend()
    module = types.ModuleType(FAKE_MODULE)
    module.BACKEND = backend
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    monkeypatch.setattr(registry, "_MODULES", {
        "fake": FAKE_MODULE, "ghost": "kvpager_tests_no_such_module",
        "reference": "kvpager.backends.reference",
    })
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    return backend


def _attention_call(head_size: int = 64, kv_cache_dtype: str = "auto"):
    key_cache, value_cache = ops.allocate_kv_cache(4, 2, head_size, 16, dtype=torch.float16,
                                                   kv_cache_dtype=kv_cache_dtype)
    query = torch.randn(2, 4, head_size).half()
    out = torch.empty_like(query)
    args = (out, query, key_cache, value_cache, 2, 0.1,
            torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
            torch.tensor([5, 32], dtype=torch.int32), 16, 32, None, kv_cache_dtype, 1.0, 1.0)
    return out, args


def test_unknown_name_lists_choices_and_availability() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        registry.get("nope")
    message = str(info.value)
    assert "unknown backend 'nope'" in message
    assert "auto, cuda, triton, reference" in message
    assert "reference: available" in message
    assert isinstance(info.value, ValueError)


def test_unavailable_backend_says_why(fake) -> None:
    assert registry.available() == ["fake", "reference"]
    assert "cannot import kvpager_tests_no_such_module" in registry.status()["ghost"]
    with pytest.raises(BackendUnavailableError) as info:
        registry.get("ghost")
    message = str(info.value)
    assert "backend 'ghost' is unavailable" in message
    assert "fake: available" in message and "reference: available" in message
    _, args = _attention_call()
    with pytest.raises(BackendUnavailableError, match="ghost"):
        ops.paged_attention_v1(*args, backend="ghost")


def test_auto_skips_a_backend_that_cannot_serve_the_configuration(fake) -> None:
    meta = torch.device("meta")
    config = dict(block_size=16, dtype=torch.float16, kv_cache_dtype="auto")
    assert registry.resolve("auto", meta, head_size=64, **config) is fake
    with pytest.raises(BackendUnavailableError) as info:  # fake: head size; reference: meta
        registry.resolve("auto", meta, head_size=80, **config)
    message = str(info.value)
    assert "fake: head size 80 is not built" in message
    assert "reference: meta tensors hold no data" in message
    assert "ghost: cannot import" in message


def test_named_backend_that_cannot_serve_raises_instead_of_falling_back(fake) -> None:
    _, args = _attention_call(head_size=80)
    with pytest.raises(BackendUnavailableError) as info:
        ops.paged_attention_v1(*args, backend="fake")
    assert "backend 'fake' cannot run this call: head size 80 is not built" in str(info.value)
    assert "reference: available" in str(info.value)
    assert fake.calls == []
    ops.paged_attention_v1(*args, backend="reference")  # the same call is fine elsewhere


def test_environment_variable_sets_the_default(fake, monkeypatch) -> None:
    out, args = _attention_call()
    monkeypatch.setenv(registry.ENV_VAR, "fake")
    ops.paged_attention_v1(*args)
    assert [name for name, _ in fake.calls] == ["paged_attention_v1"]
    want = torch.empty_like(out)
    ops.paged_attention_v1(want, *args[1:], backend="reference")  # an explicit name wins
    assert len(fake.calls) == 1
    torch.testing.assert_close(out, want)

    monkeypatch.setenv(registry.ENV_VAR, "nope")
    with pytest.raises(BackendUnavailableError, match="unknown backend 'nope'"):
        ops.paged_attention_v1(*args)


def test_backends_receive_canonical_kv_cache_dtype(fake) -> None:
    _, args = _attention_call(kv_cache_dtype="fp8")
    ops.paged_attention_v1(*args, backend="fake")
    assert fake.calls[-1][1][0].kv_cache_dtype == "fp8_e4m3"
    key = torch.randn(3, 2, 64).half()
    key_cache, value_cache = args[2], args[3]
    ops.reshape_and_cache(key, key, key_cache, value_cache, torch.tensor([0, 1, 2]), "fp8",
                          1.0, 1.0, backend="fake")
    assert fake.calls[-1][0] == "reshape_and_cache"
    assert fake.calls[-1][1][0].kv_cache_dtype == "fp8_e4m3"


def test_cpu_auto_is_the_reference(monkeypatch) -> None:
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    backend = registry.resolve("auto", torch.device("cpu"), head_size=64, block_size=16,
                               dtype=torch.float32)
    assert backend.name == "reference"


def test_available_lists_only_what_is_usable_as_it_is(monkeypatch) -> None:
    """Triton without a CUDA GPU runs only in its interpreter: without TRITON_INTERPRET=1 it
    is not listed (selecting it would fail), and status() says why; with it, it is."""
    pytest.importorskip("triton")
    from kvpager.backends.triton import runtime

    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_state", {k: v for k, v in runtime._state.items()
                                            if k != "interpreted"})
    monkeypatch.delenv(runtime.INTERPRET_ENV, raising=False)
    assert "triton" not in registry.available()
    assert "reference" in registry.available()
    reason = registry.status()["triton"]
    assert "no CUDA GPU" in reason and "TRITON_INTERPRET=1" in reason
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        registry.resolve("triton", torch.device("cpu"), head_size=64, block_size=16,
                         dtype=torch.float32)
    monkeypatch.setenv(runtime.INTERPRET_ENV, "1")
    assert "triton" in registry.available()
    assert registry.status()["triton"] is None


def test_a_backend_whose_usability_check_raises_is_listed_as_unusable(fake, monkeypatch) -> None:
    def broken() -> str | None:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(fake, "usable_reason", broken)
    assert registry.available() == ["reference"]
    assert "driver exploded" in registry.status()["fake"]
