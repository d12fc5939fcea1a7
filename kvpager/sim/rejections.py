"""Rejected requests grouped by kind, with the real range of what was refused.

A rejection reason reads like "prompt of 9120 + output of 240 tokens exceeds
max_model_len=4096". Counting reasons verbatim gives one line per request; replacing every
number by N (as 0.1 did) loses the figures a planner needs. A *kind* drops the per-request
numbers ("prompt + output tokens exceeds max_model_len") and keeps beside its count the limit
it hit and the longest prompt and prompt + output among the requests of that kind, so the
summary can say how far past the limit the trace goes.
"""

from __future__ import annotations

import re

import numpy as np

_PER_REQUEST = re.compile(r" of \d+|^\d+ ")
_LIMIT = re.compile(r"(\w+)=(\d+)")


def kind_of(reason: str) -> tuple[str, str | None, int | None]:
    """(kind, limit name, limit value) of one reason ("rejected: " prefix optional)."""
    text = reason.removeprefix("rejected: ")
    limit = _LIMIT.search(text)
    kind = _LIMIT.sub(lambda m: m.group(1), _PER_REQUEST.sub("", text))
    if limit is None:
        return kind, None, None
    return kind, limit.group(1), int(limit.group(2))


def rejection_kinds(
    reasons: dict[int, str], prompt_tokens: np.ndarray, requested_output: np.ndarray | None,
) -> dict[str, dict]:
    """Per kind, most frequent first: {"count", "limit_name", "limit", "longest_prompt",
    "longest_total"} (`longest_total` = prompt + requested output tokens; None without
    `requested_output`).

    Args:
        reasons: request index -> its rejection reason.
        prompt_tokens: int64 [num_requests] each request's prompt length as served.
        requested_output: int64 [num_requests] output tokens each request asked for, or None.
    """
    kinds: dict[str, dict] = {}
    for i, reason in reasons.items():
        kind, name, value = kind_of(reason)
        entry = kinds.setdefault(kind, {"count": 0, "limit_name": name, "limit": value,
                                        "longest_prompt": 0, "longest_total": None})
        entry["count"] += 1
        prompt = int(prompt_tokens[i])
        entry["longest_prompt"] = max(entry["longest_prompt"], prompt)
        if requested_output is not None:
            total = prompt + int(requested_output[i])
            entry["longest_total"] = max(entry["longest_total"] or 0, total)
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]["count"]))


def describe(kind: str, entry: dict) -> str:
    """One line: "8,158 x prompt + output tokens exceeds max_model_len (limit 4,096; longest
    prompt 120,000; longest prompt + output 120,340)"."""
    parts = []
    if entry.get("limit") is not None:
        parts.append(f"limit {entry['limit']:,}")
    if entry.get("longest_prompt"):
        parts.append(f"longest prompt {entry['longest_prompt']:,}")
    if entry.get("longest_total") and "output" in kind:
        parts.append(f"longest prompt + output {entry['longest_total']:,}")
    return f"{entry['count']:,} x {kind}" + (f" ({'; '.join(parts)})" if parts else "")
