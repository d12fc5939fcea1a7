"""The HTML report as a file: one plotly.js, the figures' data, escaping, size, bad output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("plotly")

from kvpager.report import write_report
from tests.report.synthetic import (
    EVIL_ID,
    EVIL_REASON,
    EVIL_SOURCE,
    SHARES_A,
    SHARES_B,
    write_run,
)

FIG_DATA = re.compile(r'<script type="application/json" id="(fig-[a-z]+)-data">(.*?)</script>',
                      re.S)


def figures(html: str) -> dict[str, dict]:
    return {m.group(1): json.loads(m.group(2)) for m in FIG_DATA.finditer(html)}


def values(arr) -> list[float]:
    """A Plotly data array: a list, or {"dtype", "bdata"} (base64 typed array)."""
    import base64

    import numpy as np

    if isinstance(arr, dict):
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).tolist()
    return list(arr)


@pytest.fixture
def two_strategies(tmp_path) -> Path:
    return write_run(tmp_path / "run", {"paged": {"memory": SHARES_A},
                                        "my-own": {"memory": SHARES_B, "recompute": 3}})


def test_one_self_contained_file_with_every_figure(two_strategies, tmp_path):
    out = write_report(two_strategies, tmp_path / "r.html")
    html = out.read_text()
    assert html.count("plotly.js v") == 1  # the library's header comment, embedded once
    assert not re.search(r'<script[^>]+src=', html)  # nothing loaded from elsewhere
    assert not re.search(r'<link[^>]+href=', html)
    figs = figures(html)
    assert set(figs) == {"fig-waste", "fig-memory", "fig-batch", "fig-latency"}
    assert html.count('class="kv-figure"') == 4
    assert "window.kvpagerReport" in html and "data-kvpager-rendered" in html


def test_waste_bars_are_the_time_averaged_shares(two_strategies, tmp_path):
    figs = figures(write_report(two_strategies, tmp_path / "r.html").read_text())
    bars = {t["name"]: values(t["y"]) for t in figs["fig-waste"]["data"]}
    assert bars["token states"] == pytest.approx([60.0, 20.0])
    assert bars["internal fragmentation"] == pytest.approx([5.0, 40.0])
    assert bars["external fragmentation"] == pytest.approx([0.0, 20.0])
    assert bars["prefix-cached (evictable)"] == pytest.approx([15.0, 0.0])
    assert bars["free"] == pytest.approx([10.0, 10.0])
    assert figs["fig-waste"]["data"][0]["x"] == ["paged", "my-own"]


def test_memory_areas_stack_to_the_whole_capacity(two_strategies, tmp_path):
    figs = figures(write_report(two_strategies, tmp_path / "r.html").read_text())
    traces = figs["fig-memory"]["data"]
    assert len(traces) == 12  # six kinds x two strategies
    first = [values(t["y"]) for t in traces[:6]]
    totals = [sum(col) for col in zip(*first, strict=True)]
    assert totals == pytest.approx([100.0] * len(totals), abs=1e-3)


def test_latency_cdfs_per_strategy(two_strategies, tmp_path):
    figs = figures(write_report(two_strategies, tmp_path / "r.html").read_text())
    traces = figs["fig-latency"]["data"]
    assert len(traces) == 6  # TTFT, TPOT, normalized x two strategies
    ttft = values(traces[0]["x"])
    # synthetic requests i = 0..11 have TTFT 0.1 (i + 1): the CDF steps through them in order
    assert ttft == pytest.approx([0.1 * (i + 1) for i in range(12)])
    assert values(traces[0]["y"])[-1] == pytest.approx(1.0)


def test_prefix_section_only_with_prefix_caching(tmp_path):
    without = write_report(write_run(tmp_path / "a", {"paged": {"memory": SHARES_A}}),
                           tmp_path / "a.html").read_text()
    with_prefix = write_report(write_run(tmp_path / "b", {"paged": {"memory": SHARES_A}},
                                         prefix_caching=True),
                               tmp_path / "b.html").read_text()
    assert "fig-prefix" not in figures(without)
    hit = figures(with_prefix)["fig-prefix"]["data"][0]
    assert max(values(hit["y"])) == pytest.approx(0.19)  # 0.01 per sample, 20 samples


def test_trace_strings_are_escaped(tmp_path):
    run = write_run(tmp_path / "run", {"paged": {"memory": SHARES_A}},
                    ids=[EVIL_ID] * 12, rejected={3: EVIL_REASON}, source=EVIL_SOURCE)
    html = write_report(run, tmp_path / "r.html").read_text()
    for raw in ("<script>window.__pwned", "<img src=x", "<b onmouseover", "<svg onload"):
        assert raw not in html
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "&lt;b onmouseover=alert(1)&gt;too long&lt;/b&gt; &amp; more" in html
    assert "&lt;svg onload=window.__pwned=3&gt;.csv" in html
    # the embedded metrics JSON cannot close its script element either
    embedded = re.search(r'id="kv-metrics">(.*?)</script>', html, re.S).group(1)
    assert "<" not in embedded and json.loads(embedded)["trace"]["source"] == EVIL_SOURCE


def test_long_runs_are_thinned(tmp_path):
    run = write_run(tmp_path / "run", {"paged": {"memory": SHARES_A},
                                       "static": {"memory": SHARES_B}}, samples=6000,
                    requests=3000)
    out = write_report(run, tmp_path / "r.html", max_points=500)
    figs = figures(out.read_text())
    for t in figs["fig-memory"]["data"] + figs["fig-batch"]["data"]:
        if t.get("x") is not None:
            assert len(values(t["x"])) <= 500
    for t in figs["fig-latency"]["data"]:
        assert len(values(t["x"])) <= 500
    from plotly.offline import get_plotlyjs

    assert out.stat().st_size < len(get_plotlyjs()) + 1_000_000


@pytest.mark.parametrize("name", ["report.txt", "report"])
def test_output_must_be_an_html_file(two_strategies, tmp_path, name):
    with pytest.raises(ValueError, match=r"must end in \.html"):
        write_report(two_strategies, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_output_directory_and_bad_max_points(two_strategies, tmp_path):
    (tmp_path / "d.html").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        write_report(two_strategies, tmp_path / "d.html")
    with pytest.raises(ValueError, match="max_points"):
        write_report(two_strategies, tmp_path / "r.html", max_points=3)


def test_a_strategy_with_nothing_finished_and_no_samples_still_reports(tmp_path):
    run = write_run(tmp_path / "run", {"paged": {"memory": SHARES_A},
                                       "static": {"memory": SHARES_B}},
                    rejected={i: "rejected: too long" for i in range(12)})
    (run / "memory_static.csv").write_text(
        "time_s,token,reserved,internal,external,free,running_seqs,waiting,swapped,"
        "prefix_hit_rate\n")
    html = write_report(run, tmp_path / "r.html").read_text()
    figs = figures(html)
    assert figs["fig-latency"]["data"] == []  # no finished request anywhere: no CDF lines
    notes = [a["text"] for a in figs["fig-memory"]["layout"]["annotations"]]
    assert "static: no memory samples" in notes
    assert "No finished requests." in html and html.count("rejected: too long") >= 2
