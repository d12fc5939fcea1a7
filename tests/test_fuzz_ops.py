"""A short, fixed run of the ops fuzzer (`tools/fuzz_ops.py`; run it longer by hand).

Valid random calls of every op against independent oracles, and calls with one argument
broken that must raise ValueError / TypeError naming an argument before anything is written.
A fixed number of cases (not a time budget) keeps the run deterministic: a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "fuzz_ops.py"


@pytest.fixture(scope="module")
def fuzz_ops():
    spec = importlib.util.spec_from_file_location("fuzz_ops", TOOLS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_ops"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("fuzz_ops", None)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KVPAGER_BACKEND", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _report(fuzzer, seed: int) -> str:
    return "\n".join(f.line(seed) for f in fuzzer.findings[:10])


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_backend_survives_the_fuzzer(fuzz_ops, seed: int) -> None:
    fuzzer = fuzz_ops.Fuzzer(seed, "reference")
    findings = fuzzer.run(cases=1000, seconds=120)
    assert fuzzer.counts["valid"] > 400 and fuzzer.counts["invalid"] > 250
    assert not findings, _report(fuzzer, seed)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, fed NaN on purpose
def test_triton_backend_survives_the_fuzzer_on_tiny_shapes(fuzz_ops) -> None:
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from kvpager.backends.triton import BACKEND

    reason = BACKEND.unavailable_reason() or BACKEND.device_reason(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"{reason} (the GPU tests run the Triton kernels)")
    fuzzer = fuzz_ops.Fuzzer(3, "triton", tiny=True)
    findings = fuzzer.run(cases=150, seconds=120)
    assert not findings, _report(fuzzer, 3)


def test_the_fuzzer_notices_a_wrong_result_and_a_bad_error(fuzz_ops, monkeypatch) -> None:
    """Not vacuous: a merge that hides NaN, and an int check that lets 2^63 through to torch,
    are both reported."""
    import kvpager.backends.reference.merge as merge
    from kvpager.backends import validation

    def zeros(output, *args) -> None:
        output.zero_()

    monkeypatch.setattr(merge, "merge_attn_states", zeros)
    original = validation.check_int
    monkeypatch.setattr(validation, "check_int",
                        lambda name, value, minimum=None, maximum=None: original(
                            name, value, minimum, None))
    fuzzer = fuzz_ops.Fuzzer(0, "reference")
    fuzzer.run(cases=300, seconds=120)
    kinds = {(f.op, f.kind) for f in fuzzer.findings}
    assert ("merge_attn_states", "wrong result") in kinds
    assert any(op.startswith("paged_attention") and kind in (
        "wrong exception type", "broken argument accepted") for op, kind in kinds), kinds


def test_a_case_replays_the_same_call(fuzz_ops) -> None:
    import random

    first = fuzz_ops.attention_call(random.Random("7:11"), "reference", False)
    again = fuzz_ops.attention_call(random.Random("7:11"), "reference", False)
    assert first.note == again.note
    for name, value in first.args.items():
        other = again.args[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(fuzz_ops._bytes(value), fuzz_ops._bytes(other)), name
        else:
            assert value == other or (value != value and other != other), name
