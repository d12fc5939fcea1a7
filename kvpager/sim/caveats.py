"""What a run's table does not say by itself: the conditions under which its figures are not
what a planner would read them as, each with its fix.

`run_caveats(metrics)` is computed once at the end of `simulate` and stored as
`metrics["caveats"]`; the CLI prints every caveat above and below the table. Today's kinds:

- `rejected`: more than `REJECTED_SHARE_WARN` of the trace was refused (a context too short
  for the trace, most often). Every latency, throughput and hit-rate figure then describes
  the survivors only (a prefix hit rate over survivors can exceed the trace's own reuse
  ceiling), so the run is not an estimate for the trace.
"""

from __future__ import annotations

from kvpager.sim.presets import MODELS

#: Share of the trace's requests rejected above which a run carries a `rejected` caveat.
REJECTED_SHARE_WARN = 0.02


def run_caveats(metrics: dict) -> list[dict]:
    """Caveats of a `metrics.json` content: [{"kind", "strategies", "message", ...}]."""
    return _rejections(metrics)


def _rejections(metrics: dict) -> list[dict]:
    by_share: dict[tuple[int, int], list[str]] = {}
    for name, m in metrics.get("strategies", {}).items():
        req = m.get("requests") or {}
        arrived, rejected = int(req.get("arrived") or 0), int(req.get("rejected") or 0)
        if arrived and rejected / arrived > REJECTED_SHARE_WARN:
            by_share.setdefault((rejected, arrived), []).append(name)
    out = []
    for (rejected, arrived), names in by_share.items():
        kinds = metrics["strategies"][names[0]]["requests"].get("rejected_kinds") or {}
        out.append({
            "kind": "rejected", "strategies": names, "rejected": rejected,
            "arrived": arrived, "share": rejected / arrived,
            "message": _rejection_message(names, rejected, arrived, kinds,
                                          metrics.get("config", {}))})
    return out


def _rejection_message(names: list[str], rejected: int, arrived: int, kinds: dict,
                       config: dict) -> str:
    every = len(names) > 1 and len(names) == len(config.get("strategies", names))
    who = "every strategy" if every else ", ".join(names)
    text = (f"{who} rejected {rejected:,} of {arrived:,} requests ({100 * rejected / arrived:.1f}%"
            "): the latency, throughput and hit-rate figures describe only the requests "
            "served, not the trace.")
    limit_names = {e.get("limit_name") for e in kinds.values()}
    longest = max((e.get("longest_total") or e.get("longest_prompt") or 0
                   for k, e in kinds.items() if e.get("limit_name") == "max_model_len"),
                  default=0)
    if longest:
        limit = config.get("max_model_len")
        fixes = _longer_models(longest)
        text += (f" Requests reach {longest:,} tokens against max_model_len {limit:,}; to "
                 "serve them: " + (f"a longer-context --model ({fixes}), " if fixes else
                                   "a model spec file with a longer max_context, ")
                 + "--max-model-len L up to the model's context, or --long-prompts truncate.")
    for name, fix in _OTHER_FIXES.items():
        if name in limit_names:
            text += f" {fix}"
    return text


#: What serves a request refused by a limit other than the context (the kind's limit name;
#: None: "needs more KV blocks than the cache has").
_OTHER_FIXES = {
    "max_num_batched_tokens": "Prompts longer than a step's token budget need "
                              "--chunked-prefill (or a larger --max-num-batched-tokens).",
    "max_num_seqs": "Requests wider than --max-num-seqs (n or beam width) need a larger one.",
    None: "Requests larger than the whole KV cache need more KV memory (--tp, a larger "
          "--gpu, --kv-cache-memory, a lower --kv-cache-dtype) or --long-prompts truncate.",
}


def _longer_models(tokens: int, most: int = 2) -> str:
    """Dense presets whose context holds `tokens`, shortest context first (a hybrid or
    mixture-of-experts model is a different deployment, not a longer-context stand-in)."""
    fit = sorted((m.max_context, m.num_params, key) for key, m in MODELS.items()
                 if m.max_context >= tokens and not m.is_hybrid and m.moe is None
                 and m.mla is None)
    return ", ".join(f"{key}: {context:,} tokens" for context, _, key in fit[:most])
