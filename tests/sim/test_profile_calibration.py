"""Calibration from operator profiles: the fit recovers a GPU's curves from profiles of some
models and predicts others; bad profiles are named by file, row and column."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kvpager.cli.app import app
from kvpager.sim.cost_model import (
    CalibrationError,
    CostModel,
    load_calibration,
    parse_calibration,
    shipped_calibration,
)
from kvpager.sim.cost_model.fit import dims_of, load_profiles
from kvpager.sim.cost_model.from_profiles import profile_calibration
from kvpager.sim.cost_model.gpu_model import GemmCurve, LayerDims, StreamCurve
from kvpager.sim.cost_model.profiles import (
    ELEMENTWISE_OPS,
    GEMM_OPS,
    LayerShape,
    ProfileError,
)

SHARED = Path(os.environ.get("KVPAGER_PROFILES_DIR", "/work/shared/profiles"))
PEAK = 312e12  # the A100 preset's
# The "true" GPU of the synthetic profiles.
GEMM = GemmCurve(bw=1.7e12, eff=0.72, launch=6e-6, sharpness=3.0, tile_m=64.0)
ELEMENTWISE = StreamCurve(bw=1.3e12, launch=2.5e-6)
MODELS = {  # org/name: (hidden, heads, kv_heads, intermediate)
    "syn/small": (2048, 16, 16, 5632),
    "syn/medium": (4096, 32, 8, 14336),
    "syn/large": (8192, 64, 8, 28672),
}
TOKENS = (1, 8, 32, 64, 128, 256, 384, 512, 1024, 2048, 4096)


def true_times(shape: LayerShape, tokens: int, tp: int) -> dict[str, float]:
    d = dims_of(shape, tp)
    t = np.array([float(tokens)])
    out = {op: float(GEMM.seconds(t, k, n, PEAK)[0]) for op, (k, n) in zip(
        GEMM_OPS, d.gemms(), strict=True)}
    sizes = d.elementwise_bytes(t)
    out |= {op: float(ELEMENTWISE.seconds(sizes[op])[0]) for op in ELEMENTWISE_OPS}
    return out


def write_mlp(path: Path, shape_row: tuple[int, int, int, int], *, drop: str | None = None,
              bad: tuple[int, str, str] | None = None) -> None:
    hidden, heads, kv, inter = shape_row
    shape = LayerShape(hidden, heads, kv, hidden // heads, inter, True)
    cols = [f"time_stats.{op}.median" for op in GEMM_OPS + ELEMENTWISE_OPS]
    cols += ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp",
             "num_tokens", "num_tensor_parallel_workers"]
    cols = [c for c in cols if c != drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        k = 0
        for tp in (1, 2, 4):
            for tokens in TOKENS:
                k += 1
                row = {f"time_stats.{op}.median": s * 1e3 for op, s in
                       true_times(shape, tokens, tp).items()}
                row |= {"n_head": heads, "n_kv_head": kv, "n_embd": hidden,
                        "n_expanded_embd": inter, "vocab_size": 32000, "use_gated_mlp": "True",
                        "num_tokens": tokens, "num_tensor_parallel_workers": tp}
                if bad is not None and bad[0] == k:
                    row[bad[1]] = bad[2]
                w.writerow(row)


def make_profiles(root: Path, models=MODELS, **kw) -> Path:
    for name, shape in models.items():
        write_mlp(root / "compute" / "a100" / name / "mlp.csv", shape, **kw)
    return root


def test_fit_recovers_the_gpu_and_predicts_a_model_it_has_not_seen(tmp_path):
    root = make_profiles(tmp_path / "p")
    doc = profile_calibration(root, "A100-80GB", exclude=["syn/medium"])
    assert doc["fitted_models"] == ["syn/large", "syn/small"]
    fit = parse_calibration(doc, "fit.json").gpu_fit
    shape = LayerShape(4096, 32, 8, 128, 14336, True)  # syn/medium, held out
    errors = []
    for tp in (1, 2, 4):
        for tokens in TOKENS:
            truth = sum(true_times(shape, tokens, tp).values())
            got = fit.layer_seconds(dims_of(shape, tp), np.array([tokens]))[0]
            errors.append(got / truth - 1)
    assert np.mean(np.abs(errors)) < 0.02, errors
    # and without the fit, the roofline is far off on the same shapes
    assert doc["gpu_fit"]["gemm"]["bw"] < 2.039e12  # held at or below the HBM peak


def test_calibrate_command_writes_a_file_simulate_accepts(tmp_path):
    root = make_profiles(tmp_path / "p")
    out = tmp_path / "a100.json"
    result = CliRunner().invoke(app, ["calibrate", "from-profiles", str(root), "--gpu",
                                      "a100-80gb", "-o", str(out)])
    assert result.exit_code == 0, result.output
    cal = load_calibration(out)
    assert cal.gpu == "A100-80GB" and cal.gpu_fit is not None and cal.decode == ()
    cost = CostModel("Llama-2-7B", "A100-80GB", calibration=cal)
    b = cost.breakdown(0, 0, 16, 16 * 1000)
    assert b.calibrated == ("linear",)  # no attention, network or CPU profiles given
    assert cost.calibration_notes["overhead"] == "roofline (no CPU profile)"
    assert b.linear_s != CostModel("Llama-2-7B", "A100-80GB").breakdown(
        0, 0, 16, 16 * 1000).linear_s
    sim = CliRunner().invoke(app, ["simulate", str(Path(__file__).parents[2] / "examples"
                                                   / "azure_conv_sample.csv"),
                                   "--cache", "paged", "--limit", "20", "--calibration",
                                   str(out), "--out", str(tmp_path / "run"), "--json"])
    assert sim.exit_code == 0, sim.output


@pytest.mark.parametrize("kw, message", [
    ({"drop": "time_stats.mlp_up_proj.median"},
     "mlp.csv: row 0 (header): column 'time_stats.mlp_up_proj.median': missing"),
    ({"bad": (3, "time_stats.attn_pre_proj.median", "-1")},
     "mlp.csv: row 3: column 'time_stats.attn_pre_proj.median': expected a finite number "
     "> 0, got '-1'"),
    ({"bad": (5, "time_stats.add.median", "nan")},
     "mlp.csv: row 5: column 'time_stats.add.median': expected a finite number > 0, got "
     "'nan'"),
    ({"bad": (2, "num_tokens", "many")},
     "mlp.csv: row 2: column 'num_tokens': expected an integer > 0, got 'many'"),
])
def test_bad_profile_rows_name_file_row_and_column(tmp_path, kw, message):
    root = make_profiles(tmp_path / "p", {"syn/small": MODELS["syn/small"]}, **kw)
    with pytest.raises(ProfileError) as info:
        load_profiles(root, "A100-80GB")
    assert str(info.value).endswith(message)
    assert str(root / "compute" / "a100" / "syn" / "small") in str(info.value)


def test_bad_folders_and_gpus_exit_2(tmp_path):
    runner = CliRunner()
    root = make_profiles(tmp_path / "p", {"syn/small": MODELS["syn/small"]})
    (tmp_path / "empty").mkdir()
    for args, message in [
        ([str(tmp_path / "empty"), "--gpu", "a100-80gb"], "not a profile folder"),
        ([str(tmp_path / "nothere"), "--gpu", "a100-80gb"], "no such directory"),
        ([str(root), "--gpu", "h200"], "the profiles cover a100-80gb, h100-80gb, not 'H200'"),
        ([str(root), "--gpu", "h100-80gb"], "no compute profiles for this GPU (have: a100)"),
        ([str(root), "--gpu", "a100-80gb", "--topology", "ring"], "--topology: expected"),
        ([str(root), "--gpu", "a100-80gb", "--exclude-model", "gpt-5"],
         "--exclude-model: no a100 profile of 'gpt-5'; have syn/small"),
    ]:
        result = runner.invoke(app, ["calibrate", "from-profiles", *args, "-o",
                                     str(tmp_path / "x.json")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert not (tmp_path / "x.json").exists()


def test_bad_gpu_fit_section_is_named():
    doc = shipped_calibration("A100-80GB")
    assert doc.gpu_fit is not None
    raw = json.loads((Path(__file__).parents[2] / "kvpager" / "sim" / "cost_model"
                      / "calibrations" / "a100-80gb.json").read_text())
    raw["gpu_fit"]["gemm"]["eff"] = -1
    with pytest.raises(CalibrationError, match=r"cal.json: field gpu_fit.gemm.eff: expected "
                                               r"a finite number > 0, got -1"):
        parse_calibration(raw, "cal.json")
    raw["gpu_fit"]["gemm"]["eff"] = 0.7
    raw["version"] = 1
    with pytest.raises(CalibrationError, match="'gpu_fit': needs version 2"):
        parse_calibration(raw, "cal.json")


def test_shipped_calibrations_cover_the_terms_and_fall_back_where_not_profiled():
    cal = shipped_calibration("a100-80gb")
    tp2 = CostModel("Llama-2-70B", "A100-80GB", tp=2, calibration=cal)
    assert set(tp2.breakdown(0, 0, 8, 8000).calibrated) == {
        "linear", "decode_attention", "prefill_attention", "allreduce", "overhead"}
    tp8 = CostModel("Llama-2-70B", "A100-80GB", tp=8, calibration=cal)
    assert tp8.calibration_notes["allreduce"].startswith("roofline (no all-reduce profile "
                                                         "over 8 GPUs")
    assert "allreduce" not in tp8.breakdown(0, 0, 8, 8000).calibrated
    with pytest.raises(CalibrationError, match="A100-80GB"):
        CostModel("Llama-2-7B", "H100-80GB", calibration=cal)
    h100 = CostModel("Llama-2-7B", "H100-80GB", calibration=shipped_calibration("H100-80GB"))
    assert "scaled by peak ratios" in h100.calibration_notes["decode_attention"]


def test_fitted_step_time_is_the_breakdown_total_and_grows_with_work():
    cost = CostModel("Llama-3-8B", "A100-80GB", calibration=shipped_calibration("A100-80GB"))
    last = 0.0
    for seqs in (1, 8, 64, 256):
        t = cost.step_time(0, 0, seqs, seqs * 1000)
        assert t == cost.breakdown(0, 0, seqs, seqs * 1000).total_s and t > last
        last = t
    assert cost.step_time(0, 0, 0, 0) == 0.0


def test_layer_dims_replicate_kv_heads_beyond_their_count():
    d = LayerDims.of(8192, 64, 8, 128, 28672, True, tp=16)
    assert (d.q, d.kv, d.inter) == (4 * 128, 128, 1792)


shared = pytest.mark.skipif(not (SHARED / "vidur" / "compute").is_dir(),
                            reason=f"{SHARED}: the public operator profiles are not here")


@shared
def test_shipped_calibrations_are_what_the_command_makes_from_the_profiles():
    for gpu in ("A100-80GB", "H100-80GB"):
        path = Path(__file__).parents[2] / "kvpager/sim/cost_model/calibrations" / \
            f"{gpu.lower()}.json"
        shipped = json.loads(path.read_text())
        made = profile_calibration(SHARED, gpu)
        made_flat, shipped_flat = dict(_flat(made["gpu_fit"])), dict(_flat(shipped["gpu_fit"]))
        assert made_flat.keys() == shipped_flat.keys()
        for key, value in made_flat.items():
            if isinstance(value, str):
                assert value == shipped_flat[key]
            else:
                assert value == pytest.approx(shipped_flat[key], rel=1e-6), key


def _flat(doc: object, path: str = ""):
    """(path, value) of every leaf of a JSON document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _flat(v, f"{path}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _flat(v, f"{path}[{i}]")
    else:
        yield path, doc


@shared
def test_a100_held_out_model_linear_error_is_within_six_percent():
    """Fit without Llama-2-7B, predict its profiled rows (every 7th, to stay fast)."""
    doc = profile_calibration(SHARED, "A100-80GB", exclude=["Llama-2-7b-hf"])
    fit = parse_calibration(doc, "fit.json").gpu_fit
    rows = load_profiles(SHARED, "A100-80GB").linear["meta-llama/Llama-2-7b-hf"][::7]
    err = [fit.layer_seconds(dims_of(r.shape, r.tp), np.array([r.tokens]))[0] / r.total - 1
           for r in rows]
    assert np.mean(np.abs(err)) <= 0.06
