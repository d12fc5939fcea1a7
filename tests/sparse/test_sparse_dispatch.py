"""Backend choice of the sparse ops, and what importing the package pulls in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvpager.backends import BackendUnavailableError
from kvpager.sparse import convert_vertical_slash_indexes
from kvpager.sparse._dispatch import select_backend, triton_reason

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
needs_triton = pytest.mark.skipif(
    triton_reason(CUDA) is not None, reason=f"Triton does not import: {triton_reason(CUDA)}"
)


def test_auto_is_the_reference_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even where Triton could run
    assert select_backend("auto", CPU) == "reference"


@needs_triton
def test_auto_is_triton_on_cuda() -> None:
    assert select_backend("auto", CUDA) == "triton"


def test_environment_names_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVPAGER_BACKEND", "reference")
    assert select_backend("auto", CUDA) == "reference"
    # A name the sparse ops do not have (the CUDA backend lacks them) leaves auto in charge.
    monkeypatch.setenv("KVPAGER_BACKEND", "cuda")
    assert select_backend("auto", CPU) == "reference"
    # An explicit argument wins over the environment.
    monkeypatch.setenv("KVPAGER_BACKEND", "triton")
    assert select_backend("reference", CPU) == "reference"


@needs_triton
def test_triton_on_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        select_backend("triton", CPU)
    monkeypatch.setenv("KVPAGER_BACKEND", "triton")  # named through the environment: same
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        select_backend("auto", CPU)


@needs_triton
def test_triton_refuses_other_devices() -> None:
    with pytest.raises(BackendUnavailableError, match="meta"):
        select_backend("triton", torch.device("meta"))


@pytest.mark.parametrize("name", ["cuda", "Triton", "", None, 1])
def test_unknown_names_list_the_choices(name: object) -> None:
    with pytest.raises(ValueError, match="backend must be one of auto, reference, triton"):
        select_backend(name, CPU)


def test_environment_routes_a_call_to_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """KVPAGER_BACKEND=triton makes an auto call run the Triton launchers."""
    if triton_reason(CPU) is not None:
        pytest.skip(f"Triton cannot run on CPU here: {triton_reason(CPU)}")
    from kvpager.sparse import triton_vertical_slash

    calls = []
    monkeypatch.setattr(
        triton_vertical_slash, "vertical_slash_blocks", lambda *a: calls.append("blocks")
    )
    monkeypatch.setattr(
        triton_vertical_slash, "vertical_slash_columns", lambda *a: calls.append("columns")
    )
    monkeypatch.setenv("KVPAGER_BACKEND", "triton")
    one = torch.tensor([4], dtype=torch.int32)
    convert_vertical_slash_indexes(one, one, one.view(1, 1, 1), one.view(1, 1, 1), 4, 4, 4)
    assert calls == ["blocks", "columns"]


def test_importing_the_package_imports_no_heavy_dependency() -> None:
    code = (
        "import sys, kvpager, kvpager.sparse\n"
        "heavy = [m for m in ('torch', 'triton', 'simpy', 'plotly') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    import kvpager

    root = str(Path(kvpager.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": path})
