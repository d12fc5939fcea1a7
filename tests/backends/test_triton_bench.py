"""The attention benchmark harness (`kvpager.bench.attention`), run on tiny shapes.

On the CPU it times the reference backend (and the interpreted Triton kernels when the
interpreter is on) only to check the harness: the record's fields, its byte counts against
hand-computed ones, agreement with SDPA, and the calibration file. No timing is asserted.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kvpager.bench.attention import AttentionBenchConfig, main, run_attention_benchmark
from kvpager.bench.attention_shapes import DecodeShape
from kvpager.bench.calibration import calibration_document, gpu_preset
from kvpager.sim.cost_model import load_calibration

TINY = ["--preset", "tiny", "--device", "cpu"]


@pytest.fixture
def recorded(tmp_path):
    out, cal = tmp_path / "attention.json", tmp_path / "cal.json"
    assert main([*TINY, "--out", str(out), "--calibration", str(cal)]) == 0
    return json.loads(out.read_text()), cal


def test_record_has_machine_versions_command_and_every_point(recorded) -> None:
    doc, _ = recorded
    assert doc["benchmark"] == "attention"
    assert "--preset tiny" in doc["command"] and doc["date"].endswith("+00:00")
    env = doc["environment"]
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    for key in ("machine", "processor", "python", "triton", "kvpager"):
        assert key in env
    results = doc["results"]
    assert results["config"]["device"] == "cpu" and results["config"]["backends"] == [
        "reference"]
    # tiny: batches (1, 3) x contexts (16, 40) x kv heads (2, 4) x one dtype, v1 and v2
    assert len(results["points"]) == 8 * 2 and len(results["baselines"]) == 8 * 2
    assert results["skipped"] == [] and results["summary"] == {}
    for p in results["points"]:
        assert p["timing"] == "cpu" and p["repeats"] == 2 and p["us_per_call"] > 0
        assert p["matches_sdpa"], p
        assert p["gb_per_s"] == pytest.approx(p["bytes"] / p["us_per_call"] / 1e3, rel=1e-3,
                                              abs=1e-3)
    assert {b["kind"] for b in results["baselines"]} == {"sdpa", "copy"}


def test_byte_counts_by_hand(recorded) -> None:
    """batch 3, context 40, 2 kv heads of 32 float32 values, 4 query heads:
    K + V = 2 * 3 * 40 * 2 * 32 * 4 = 61,440 bytes; query + output = 2 * 3 * 4 * 32 * 4 =
    3,072; the copy moves the caches' 3 blocks of 16 tokens per sequence twice (read and
    write): 2 * (2 * 3 * 48 * 2 * 32 * 4) = 147,456."""
    doc, _ = recorded
    point = next(p for p in doc["results"]["points"]
                 if (p["batch"], p["context"], p["num_kv_heads"]) == (3, 40, 2))
    assert point["bytes"] == 61_440 + 3_072
    copy = next(b for b in doc["results"]["baselines"] if b["kind"] == "copy"
                and (b["batch"], b["context"], b["num_kv_heads"]) == (3, 40, 2))
    assert copy["bytes"] == 147_456
    shape = DecodeShape(3, 40, 4, 2, 32, 16, "fp8")
    assert shape.kv_bytes == 61_440 // 4 and shape.kv_cache_dtype == "fp8_e4m3"


def test_calibration_file_is_accepted_by_the_simulator(recorded) -> None:
    doc, cal_path = recorded
    cal = load_calibration(cal_path)
    raw = json.loads(cal_path.read_text())
    assert raw["backend"] == "reference" and raw["num_kv_heads"] == 2  # the first kv heads
    assert {(p.batch, p.context) for p in cal.decode} == {(1, 16), (1, 40), (3, 16), (3, 40)}
    for entry in cal.decode:  # the version `ops.paged_attention` picks: v1 for one partition
        point = next(p for p in doc["results"]["points"] if p["num_kv_heads"] == 2
                     and (p["batch"], p["context"]) == (entry.batch, entry.context)
                     and p["version"] == "v1")
        assert entry.seconds == pytest.approx(point["us_per_call"] / 1e6)


def _point(batch, context, us, version="v1", auto="v1") -> dict:
    return {"backend": "triton", "dtype_name": "float16", "dtype": "float16",
            "kv_cache_dtype": "auto", "num_heads": 32, "num_kv_heads": 8, "head_size": 128,
            "block_size": 16, "batch": batch, "context": context, "version": version,
            "auto_version": auto, "us_per_call": us, "timing": "cuda-graph"}


def test_calibration_grid_drops_the_sparsest_row_and_versions_by_rule() -> None:
    points = [_point(b, c, 10.0 * b + c / 100) for b in (1, 8, 64) for c in (512, 4096)
              if (b, c) != (64, 4096)]  # skipped for memory
    points += [_point(8, 512, 1.0, version="v2")]  # faster, but not what auto picks
    doc = calibration_document(points, backend="triton", dtype="float16", num_kv_heads=8,
                               gpu="H200", model="Llama-3-8B")
    grid = {(e["batch"], e["context"]): e["seconds"] for e in doc["entries"]}
    assert set(grid) == {(1, 512), (1, 4096), (8, 512), (8, 4096)}
    assert grid[8, 512] == pytest.approx(85.12e-6)
    best = calibration_document(points, backend="triton", dtype="float16", num_kv_heads=8,
                                version="best")
    assert {e["seconds"] for e in best["entries"] if e["batch"] == 8 and e["context"] == 512} \
        == {1e-6}
    with pytest.raises(ValueError, match="no measurement for backend 'cuda'"):
        calibration_document(points, backend="cuda", dtype="float16", num_kv_heads=8)


@pytest.mark.parametrize(("name", "memory", "preset"), [
    ("NVIDIA H200", None, "H200"), ("NVIDIA H100 80GB HBM3", None, "H100-80GB"),
    ("NVIDIA A100-SXM4-80GB", 80 * 2**30, "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB", 40 * 2**30, "A100-40GB"), ("NVIDIA L4", None, None),
])
def test_gpu_names_map_to_simulator_presets(name, memory, preset) -> None:
    assert gpu_preset(name, memory) == preset


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batches": (0,)}, "^batches must be"),
    ({"kv_heads": (3,)}, r"^kv_heads \[3\] do not divide num_heads 32"),
    ({"dtypes": ("int8",)}, "^dtypes must be among"),
    ({"versions": ("v3",)}, "^versions must be among"),
    ({"repeats": 0}, "^repeats must be a positive int"),
])
def test_bad_configuration_is_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        AttentionBenchConfig(**kwargs)


def test_bad_command_line_exits_2_naming_the_option(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--batches", "1,x"])
    assert info.value.code == 2 and "--batches" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--calibration-dtype", "bfloat16"], "--calibration-dtype 'bfloat16' is not among"),
    (["--calibration-kv-heads", "8"], "--calibration-kv-heads 8 is not among"),
    (["--calibration-model", "Llama-3-8B"], "--calibration-model Llama-3-8B has heads"),
    (["--backends", "nope"], "unknown backend 'nope'"),
])
def test_calibration_and_backend_options_are_checked_before_measuring(
    extra, fragment, tmp_path, capsys
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--no-record", "--calibration", str(tmp_path / "c.json"), *extra])
    assert info.value.code == 2 and fragment in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


def test_shapes_over_the_memory_budget_are_skipped_with_a_reason() -> None:
    config = AttentionBenchConfig(batches=(1,), contexts=(16,), num_heads=4, kv_heads=(2,),
                                  head_size=32, dtypes=("float32",), device="cpu", warmup=0,
                                  repeats=1, max_memory_gb=1e-6)
    results = run_attention_benchmark(config)
    assert results["points"] == [] and len(results["skipped"]) == 1
    assert "--max-memory-gb" in results["skipped"][0]["reason"]


def test_interpreted_triton_agrees_with_sdpa_in_the_harness() -> None:
    """The harness's own check: each kernel's output against SDPA over contiguous K/V."""
    from kvpager.backends.triton import BACKEND

    if BACKEND.unavailable_reason() or BACKEND.device_reason(torch.device("cpu")):
        pytest.skip("Triton cannot run on CPU tensors here")
    config = AttentionBenchConfig(batches=(2,), contexts=(600,), num_heads=8, kv_heads=(2,),
                                  head_size=64, dtypes=("float32", "fp8_e5m2"), device="cpu",
                                  backends=("triton",), warmup=0, repeats=1)
    results = run_attention_benchmark(config)
    assert len(results["points"]) == 4
    assert all(p["matches_sdpa"] for p in results["points"]), results["points"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_uses_graphs_and_reports_the_summary(tmp_path) -> None:
    out = tmp_path / "a.json"
    assert main(["--batches", "8,32", "--contexts", "4096,32768", "--kv-heads", "8",
                 "--dtypes", "float16", "--repeats", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    triton = [p for p in results["points"] if p["backend"] == "triton"]
    assert triton and all(p["timing"] == "cuda-graph, L2 flushed" for p in triton)
    assert all(p["matches_sdpa"] for p in results["points"])
    summary = results["summary"]["triton/float16/kv8"]
    assert summary["v2_speedup_over_v1_batch_8_context_32768"] is not None
    assert summary["shapes_in_that_range"] == 2
