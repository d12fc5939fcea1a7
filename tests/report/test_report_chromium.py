"""Reports opened for real in headless Chromium: every figure renders, the console stays
clean, nothing is fetched from the network, and hostile trace strings stay text.

CI installs Debian's `chromium` (`.ci/run`); elsewhere these tests skip when no Chromium
binary is on PATH.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("plotly")

from kvpager.report import write_report, write_sweep_report
from tests.report.chromium import Chromium, find_chromium
from tests.report.synthetic import (
    EVIL_ID,
    EVIL_REASON,
    EVIL_SOURCE,
    SHARES_A,
    SHARES_B,
    write_run,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BINARY = find_chromium()
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="no chromium on PATH (CI installs Debian's chromium package)")

DONE = ("document.documentElement && (document.documentElement.getAttribute("
        "'data-kvpager-rendered') || document.documentElement.getAttribute("
        "'data-kvpager-error'))")
FIGURES = """Array.from(document.querySelectorAll('div.kv-figure')).map(d => ({
  id: d.id, traces: (d._fullData || []).length, svg: d.querySelectorAll('svg.main-svg').length,
  drawn: Array.from(d.querySelectorAll('g.trace path')).filter(
    p => (p.getAttribute('d') || '').length > 2).length}))"""


def open_report(path: Path) -> tuple[dict, Chromium]:
    browser = Chromium(BINARY, timeout=90)
    browser.open(path)
    state = browser.wait_for(DONE, timeout=90)
    return {"state": state,
            "rendered": browser.evaluate("document.documentElement.getAttribute("
                                         "'data-kvpager-rendered')"),
            "error": browser.evaluate("document.documentElement.getAttribute("
                                      "'data-kvpager-error')"),
            "figures": browser.evaluate(FIGURES)}, browser


def assert_clean(result: dict, browser: Chromium, path: Path, expected: int) -> None:
    assert result["error"] is None, result["error"]
    assert result["rendered"] == str(expected)
    assert len(result["figures"]) == expected
    for fig in result["figures"]:
        assert fig["svg"] >= 1 and fig["traces"] >= 1 and fig["drawn"] >= 1, fig
    assert browser.log.errors == []
    assert browser.log.requests == [path.resolve().as_uri()]  # offline: only the file itself


@pytest.fixture(scope="module")
def simulated_report(tmp_path_factory) -> Path:
    pytest.importorskip("simpy")
    from kvpager.sim import SimConfig, simulate
    from kvpager.sim.traces import load_trace

    root = tmp_path_factory.mktemp("sim")
    trace = load_trace(EXAMPLES / "mooncake_conv_sample.jsonl", limit=60)
    simulate(trace, SimConfig(gpu="a100-40gb", prefix_caching=True, preemption="swap",
                              swap_space_gib=16), ["paged"], out_dir=root / "run")
    return write_report(root / "run", root / "report.html")


def test_a_simulated_run_renders_every_figure(simulated_report):
    result, browser = open_report(simulated_report)
    try:
        # waste, memory, batch, latency and (prefix caching on) the hit-rate figure
        assert_clean(result, browser, simulated_report, expected=5)
        ids = [f["id"] for f in result["figures"]]
        assert ids == ["fig-waste", "fig-memory", "fig-batch", "fig-latency", "fig-prefix"]
        title = browser.evaluate("document.querySelector('header h1').textContent")
        assert title == "kvpager simulation report"
    finally:
        browser.close()


def test_a_cluster_run_renders_its_replica_figures(tmp_path):
    pytest.importorskip("simpy")
    from kvpager.sim import SimConfig, simulate
    from kvpager.sim.cluster.config import ClusterConfig
    from kvpager.sim.traces import load_trace

    trace = load_trace(EXAMPLES / "mooncake_conv_sample.jsonl", limit=60)
    simulate(trace, SimConfig(model="llama-3.1-8b", gpu="h100-80gb", prefix_caching=True),
             ["paged"], out_dir=tmp_path / "run",
             cluster=ClusterConfig(replicas=3, router="prefix-precise", slo_ttft_s=2.0))
    path = write_report(tmp_path / "run", tmp_path / "report.html")
    result, browser = open_report(path)
    try:
        assert_clean(result, browser, path, expected=7)
        by_id = {f["id"]: f for f in result["figures"]}
        # 3 replicas x (KV in use, running, waiting) + the imbalance line; 3 bars
        assert by_id["fig-replicas-0"]["traces"] == 3 * 3 + 1
        assert by_id["fig-replica-hits"]["traces"] == 1
    finally:
        browser.close()


def test_hostile_strings_stay_text(tmp_path):
    run = write_run(tmp_path / "run", {"paged": {"memory": SHARES_A},
                                       "orca-max": {"memory": SHARES_B}},
                    ids=[EVIL_ID] * 12, rejected={2: EVIL_REASON}, source=EVIL_SOURCE,
                    swapped=[0, 1, 3, 1, 0] * 4)
    out = write_report(run, tmp_path / "evil.html")
    result, browser = open_report(out)
    try:
        assert_clean(result, browser, out, expected=4)
        assert browser.evaluate("typeof window.__pwned") == "undefined"
        assert browser.evaluate("document.querySelectorAll('main img, main svg b').length") \
            == 0
        text = browser.evaluate("document.body.innerText")
        assert EVIL_ID in text and EVIL_REASON in text
        assert EVIL_SOURCE.split("/")[-1] in text
    finally:
        browser.close()


def test_a_sweep_report_renders(tmp_path):
    pytest.importorskip("simpy")
    from kvpager.sim import SimConfig
    from kvpager.sweep import SweepSpec, run_sweep

    spec = SweepSpec(str(EXAMPLES / "azure_conv_sample.csv"), SimConfig(), ("paged",),
                     rates=(2.0, 8.0), limit=80)
    out = write_sweep_report(run_sweep(spec, workers=1), tmp_path / "sweep.html")
    result, browser = open_report(out)
    try:
        assert_clean(result, browser, out, expected=2)
    finally:
        browser.close()


def test_a_broken_figure_is_detected(two_figures_broken):
    """The checks above can fail: corrupt one figure's data and the page reports it."""
    result, browser = open_report(two_figures_broken)
    try:
        assert result["rendered"] is None
        assert result["error"] and "JSON" in result["error"]
        assert browser.log.errors  # the uncaught rejection reached the console too
        banner = browser.evaluate("document.getElementById('kv-error').hidden")
        assert banner is False
    finally:
        browser.close()


@pytest.fixture
def two_figures_broken(tmp_path) -> Path:
    run = write_run(tmp_path / "run", {"paged": {"memory": SHARES_A}})
    out = write_report(run, tmp_path / "r.html")
    html = out.read_text()
    broken, n = re.subn(r'(id="fig-memory-data">)\{', r"\1{oops", html, count=1)
    assert n == 1
    out.write_text(broken)
    return out
