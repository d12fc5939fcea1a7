"""The HTML report of one simulation run: figures, summary and configuration on one page.

    from kvpager.report import write_report
    write_report("runs/azure", "report.html")
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from kvpager.report.page import Section, render_page, script_json
from kvpager.report.rundata import RunData, load_run
from kvpager.report.tables import (
    key_value_html,
    rejected_html,
    slowest_html,
    summary_html,
)


def check_max_points(max_points: int) -> None:
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 10:
        raise ValueError(f"max_points must be an integer >= 10, got {max_points!r}")


def check_output(out: str | Path) -> Path:
    """The output path of a report: an .html file whose directory exists (or can be made)."""
    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report output {str(path)!r}: the file name must end in .html")
    if path.is_dir():
        raise ValueError(f"report output {str(path)!r} is a directory; give a file name")
    return path


def run_sections(run: RunData, max_points: int = 1000) -> list[Section]:
    """The sections of a run report, in reading order."""
    from kvpager.report.figures import (
        batch_figure,
        events_note,
        latency_figure,
        memory_figure,
        prefix_figure,
        waste_figure,
    )
    from kvpager.report.groups_report import group_section
    from kvpager.report.replica_report import replica_sections
    from kvpager.report.tier_report import tier_section

    m = run.metrics
    sections = [
        Section("summary", "Summary",
                "Headline numbers per cache strategy over the whole run.",
                body_html=summary_html(m)),
        Section("waste", "KV memory waste",
                "Share of the GPU KV cache holding token states, reserved for tokens still "
                "to come, lost to internal fragmentation (allocated, never filled) or "
                "external fragmentation (free but unusable), and free; time-averaged over "
                "the run.", figure=waste_figure(run)),
        Section("memory", "KV memory over time",
                "The same breakdown sampled over simulated time, one panel per strategy.",
                figure=memory_figure(run, max_points)),
        Section("batch", "Batch size, queues and events",
                "Sequences running, requests waiting and groups swapped out (peak per "
                "interval when thinned), with preemptions and swaps as events. "
                + events_note(run),
                figure=batch_figure(run, max_points)),
        Section("latency", "Latency CDFs",
                "Distribution over finished requests of time to first token, time per "
                "output token and normalized latency (end-to-end latency / output tokens).",
                figure=latency_figure(run, max_points)),
    ]
    groups = group_section(run, max_points)
    if groups is not None:
        sections.append(groups)
    if run.prefix_caching:
        sections.append(Section(
            "prefix", "Prefix-cache hit rate",
            "Share of looked-up prompt blocks found in the prefix cache so far.",
            figure=prefix_figure(run, max_points)))
    tier = tier_section(run, max_points)
    if tier is not None:
        sections.append(tier)
    sections += replica_sections(run, max_points)
    sections += [
        Section("slowest", "Slowest requests",
                "Highest normalized latency per strategy.", body_html=slowest_html(run)),
        Section("rejected", "Rejected requests", body_html=rejected_html(run)),
        Section("config", "Configuration",
                "Everything the run was configured with, its KV capacity and the trace it "
                "replayed.",
                body_html="<h3>simulation</h3>" + key_value_html(m.get("config", {}))
                + "<h3>capacity</h3>" + key_value_html(m.get("capacity", {}))
                + "<h3>cost model</h3>" + key_value_html(m.get("cost_model", {}))
                + "<h3>trace</h3>" + key_value_html(m.get("trace", {}))
                + '<script type="application/json" id="kv-metrics">'
                + script_json(_json(m)) + "</script>"),
    ]
    return sections


def _json(obj: object) -> str:
    """Compact JSON of the metrics embedded in the page; non-finite numbers become null."""
    import json
    import math

    def clean(o: object) -> object:
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return o

    return json.dumps(clean(obj), separators=(",", ":"), default=str)


def _subtitle(run: RunData) -> list[str]:
    m, cfg = run.metrics, run.config
    trace = m.get("trace", {}) if isinstance(m.get("trace"), dict) else {}
    source = trace.get("source") or "trace"
    lines = [f"{Path(str(source)).name}: {trace.get('requests', '?')} requests, "
             f"strategies {', '.join(run.strategies)}"]
    if cfg:
        lines.append(f"{cfg.get('model', '?')} on {cfg.get('tp', 1)} x {cfg.get('gpu', '?')}, "
                     f"block size {cfg.get('block_size', '?')}, preemption "
                     f"{cfg.get('preemption', '?')}")
    lines.append(f"run directory: {run.path}")
    return lines


def render_run_report(run: RunData, max_points: int = 1000) -> str:
    """The report of a loaded run as an HTML string."""
    from kvpager import __version__

    check_max_points(max_points)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return render_page("kvpager simulation report", _subtitle(run),
                       run_sections(run, max_points),
                       footer=f"kvpager {__version__}, generated {stamp}")


def write_report(run_dir: str | Path, out: str | Path, max_points: int = 1000) -> Path:
    """Write the self-contained HTML report of a run directory to `out`; returns the path.

    max_points: the most points per strategy and time series embedded (longer series are
    thinned, see `kvpager.report.downsample`).
    """
    path = check_output(out)
    check_max_points(max_points)
    text = render_run_report(load_run(run_dir), max_points)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
