"""Calibration files: measured times replace the roofline where they exist."""

from __future__ import annotations

import json

import pytest

from kvpager.sim.cost_model import (
    CalibrationError,
    CostModel,
    load_calibration,
    parse_calibration,
    prefill_attention_work,
)

BATCHES, CONTEXTS = (1, 8, 32), (256, 1024, 4096)


def kernel_seconds(b: int, c: int) -> float:
    """Synthetic measurements of the form a + k b c: bilinear, so interpolation is exact."""
    return 5e-6 + 2e-11 * b * c


def grid_entries() -> list[dict]:
    return [{"kind": "decode_attention", "batch": b, "context": c,
             "seconds": kernel_seconds(b, c)} for b in BATCHES for c in CONTEXTS]


def model(entries: list[dict], **meta) -> CostModel:
    cal = parse_calibration({"version": 1, "entries": entries, **meta}, "cal.json")
    return CostModel("Llama-2-7B", "A100-80GB", calibration=cal)


def test_decode_attention_grid_points_and_bilinear_interpolation():
    c = model(grid_entries())
    for b in BATCHES:
        for ctx in CONTEXTS:
            got = c.breakdown(0, 0, b, b * ctx).decode_attention_s
            assert got == pytest.approx(32 * kernel_seconds(b, ctx))  # one call per layer
    got = c.breakdown(0, 0, 20, 20 * 2000).decode_attention_s  # between grid points
    assert got == pytest.approx(32 * kernel_seconds(20, 2000))


def test_decode_attention_outside_the_grid_is_a_continuous_scaled_roofline():
    c = model(grid_entries())
    plain = CostModel("Llama-2-7B", "A100-80GB")
    at_edge = c.breakdown(0, 0, 32, 32 * 4096).decode_attention_s
    ratio = at_edge / plain.roofline_decode_attention(32, 32 * 4096)
    beyond = c.breakdown(0, 0, 64, 64 * 8192).decode_attention_s
    assert beyond == pytest.approx(ratio * plain.roofline_decode_attention(64, 64 * 8192))
    just_past = c.breakdown(0, 0, 32, 32 * 4097).decode_attention_s
    assert just_past == pytest.approx(at_edge, rel=1e-3)


def test_step_entries_override_the_whole_step():
    plain = CostModel("Llama-2-7B", "A100-80GB")
    steps = [(0, 8, 8 * 1000, 0.020), (0, 64, 64 * 1000, 0.040), (2048, 0, 0, 0.300)]
    entries = [{"kind": "step", "prefill_tokens": p, "decode_seqs": d,
                "decode_context_tokens": ctx, "seconds": s} for p, d, ctx, s in steps]
    c = model(entries)
    for p, d, ctx, s in steps:  # measured points are reproduced
        assert c.step_time(p, prefill_attention_work(p, 0), d, ctx) == pytest.approx(s)
    # between two measured steps: linear in the roofline time
    x0 = plain.step_time(0, 0, 8, 8000)
    x1 = plain.step_time(0, 0, 64, 64000)
    x = plain.step_time(0, 0, 32, 32000)
    assert x0 < x < x1
    expect = 0.020 + (x - x0) / (x1 - x0) * (0.040 - 0.020)
    assert c.step_time(0, 0, 32, 32000) == pytest.approx(expect)
    # below the smallest measured step: the roofline scaled by the ratio there
    small = plain.step_time(0, 0, 1, 10)
    assert small < x0
    assert c.step_time(0, 0, 1, 10) == pytest.approx(small * 0.020 / x0)


def test_metadata_must_match_the_cost_model():
    with pytest.raises(CalibrationError, match=r"^cal.json: field 'gpu': measured for "
                                               r"'H100-80GB', but the cost model is for"):
        model(grid_entries(), gpu="H100-80GB")
    with pytest.raises(CalibrationError, match=r"^cal.json: field 'tp': measured at tp=2"):
        model(grid_entries(), tp=2)
    assert model(grid_entries(), gpu="a100-80gb", model="LLAMA-2-7B", tp=1).tp == 1


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": "prefill", "seconds": 1}, "cal.json: entries[1]: field 'kind': expected one of "
                                        "decode_attention, step, got \"prefill\""),
    ({"kind": "step", "decode_seqs": 1, "decode_context_tokens": 9},
     "cal.json: entries[1]: field 'seconds': missing field"),
    ({"kind": "step", "prefill_tokens": 0, "decode_seqs": 1, "decode_context_tokens": 9,
      "seconds": 0}, "cal.json: entries[1]: field 'seconds': expected a finite number > 0, "
                     "got 0"),
    ({"kind": "step", "prefill_tokens": 0, "decode_seqs": 4, "decode_context_tokens": 3,
      "seconds": 1}, "cal.json: entries[1]: field 'decode_context_tokens': expected an "
                     "integer >= 4, got 3"),
    ({"kind": "step", "prefill_tokens": 0, "decode_seqs": 0, "decode_context_tokens": 0,
      "seconds": 1}, "cal.json: entries[1]: a step needs prefill_tokens or decode_seqs > 0"),
    ({"kind": "decode_attention", "batch": 1.5, "context": 8, "seconds": 1},
     "cal.json: entries[1]: field 'batch': expected an integer >= 1, got 1.5"),
    ({"kind": "decode_attention", "batch": 1, "context": 256, "seconds": 1},
     "cal.json: entries[1]: duplicate point batch=1, context=256 (also entries[0])"),
    ({"kind": "decode_attention", "batch": 2, "context": 256, "seconds": 1},
     "cal.json: decode_attention entries must form a full grid of batch x context: missing "
     "batch=2, context=1024"),
    ("x", "cal.json: entries[1]: expected an object, got \"x\""),
])
def test_bad_entries(entry, message):
    entries = [grid_entries()[0], entry, grid_entries()[1]]
    with pytest.raises(CalibrationError) as info:
        parse_calibration({"version": 1, "entries": entries}, "cal.json")
    assert str(info.value) == message


def test_bad_documents_and_files(tmp_path):
    for doc, message in [
        ([], "cal.json: expected a JSON object with 'version' and 'entries'"),
        ({"entries": grid_entries()}, "cal.json: field 'version': expected 1 or 2, got null"),
        ({"version": 1, "entries": []}, "cal.json: field 'entries': expected a non-empty list"),
        ({"version": 1, "entries": grid_entries(), "tp": 0},
         "cal.json: field 'tp': expected an integer >= 1, got 0"),
    ]:
        with pytest.raises(CalibrationError) as info:
            parse_calibration(doc, "cal.json")
        assert str(info.value) == message
    with pytest.raises(CalibrationError, match="no such file"):
        load_calibration(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,')
    with pytest.raises(CalibrationError, match=r"bad.json: invalid JSON at line 1, column 15"):
        load_calibration(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"version": 1, "gpu": "A100-80GB", "notes": "ignored",
                                "entries": grid_entries()}))
    cal = load_calibration(good)
    assert cal.gpu == "A100-80GB" and len(cal.decode) == 9 and cal.steps == ()
