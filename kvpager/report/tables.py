"""The report's HTML tables: strategy summary, notable requests, configuration.

Plain functions from `metrics.json` / `RunData` to rows of strings; `page.table_html`
escapes every cell, so ids and reasons from traces are shown as text.
"""

from __future__ import annotations

import numpy as np

from kvpager.report.page import table_html
from kvpager.report.rundata import RunData
from kvpager.sim.summary import SUMMARY_ROWS, get_path


def summary_rows(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one column per strategy, one row per headline metric."""
    strategies = metrics["strategies"]
    names = list(strategies)
    rows = [[label, *(fmt(get_path(strategies[n], path)) for n in names)]
            for label, path, fmt in SUMMARY_ROWS]
    return ["metric", *names], rows


def summary_html(metrics: dict) -> str:
    headers, rows = summary_rows(metrics)
    return table_html(headers, rows, numeric=set(range(1, len(headers))))


def slowest_html(run: RunData, per_strategy: int = 5) -> str:
    """The requests with the highest normalized latency, per strategy."""
    rows = []
    for name in run.strategies:
        req = run.requests[name]
        done = np.nonzero(req.finished)[0]
        if done.size == 0:
            continue
        norm = req.e2e_s[done] / np.maximum(req.output_tokens[done], 1)
        for k in np.argsort(-norm, kind="stable")[:per_strategy]:
            i = int(done[k])
            rows.append([name, req.ids[i], int(req.prompt_tokens[i]),
                         int(req.output_tokens[i]), f"{req.ttft_s[i]:.3f}",
                         f"{req.e2e_s[i]:.2f}", f"{norm[k]:.4f}", int(req.preemptions[i])])
    if not rows:
        return "<p>No finished requests.</p>"
    return table_html(["strategy", "request id", "prompt tokens", "output tokens", "TTFT (s)",
                       "end-to-end (s)", "normalized (s/token)", "preemptions"], rows,
                      numeric={2, 3, 4, 5, 6, 7})


def rejected_html(run: RunData, per_strategy: int = 10) -> str:
    """Why requests were rejected (counts), and the first few rejected ids."""
    counts, examples = [], []
    for name in run.strategies:
        reasons = get_path(run.metrics["strategies"][name], ("requests", "rejected_reasons"))
        if isinstance(reasons, dict):
            counts += [[name, reason, n] for reason, n in reasons.items()]
        req = run.requests[name]
        rejected = np.nonzero(req.status == "rejected")[0][:per_strategy]
        examples += [[name, req.ids[i], int(req.prompt_tokens[i]), req.reasons[i]]
                     for i in rejected.tolist()]
    if not counts and not examples:
        return "<p>No request was rejected.</p>"
    out = table_html(["strategy", "reason", "requests"], counts, numeric={2}) if counts else ""
    if examples:
        out += table_html(["strategy", "request id", "prompt tokens", "reason"], examples,
                          numeric={2})
    return out


def flatten(obj: object, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts to ("a.b.c", value) pairs in their order; lists stay values."""
    if not isinstance(obj, dict):
        return [(prefix, obj)]
    out: list[tuple[str, object]] = []
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out += flatten(value, name)
        else:
            out.append((name, value))
    return out


def _value_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value_text(v) for v in value)
    return str(value)


def key_value_html(obj: dict) -> str:
    """A two-column table of a nested dict (configuration, capacity, trace summary)."""
    rows = [[k, _value_text(v)] for k, v in flatten(obj)]
    return table_html(["field", "value"], rows, key_column=True)
