"""Which requests to disaggregate: `--pd-decider always|threshold:N|cost`.

- always: every request prefills on the prefill pool.
- threshold:N: only requests with more than N prompt tokens the decode replica does not
  hold (llm-d's P/D decider: short or mostly cached prompts prefill where they decode).
- cost: estimated from the cost model with the replicas' state at arrival. Served locally,
  the decode replica's prefill of its `u_D` uncached tokens takes `prefill(u_D)` and stalls
  every request decoding there for as long: that is what disaggregating saves. It costs this
  request `ttft_dis - ttft_agg`, with
      ttft_agg = backlog_D + prefill(u_D)
      ttft_dis = backlog_P + prefill(u_P) + transfer(prompt - cached_D)
  where a backlog is `prefill()` of the prompt tokens waiting in that replica's queue and
  `prefill(n)` is the cost model's step time of a lone n-token prefill. Disaggregate when
  `prefill(u_D) >= ttft_dis - ttft_agg`. It ignores how long the request waits for room on
  the decode replica and the link's queue (unknown at arrival).

A request that is not disaggregated prefills on its decode replica, as in an aggregated run.
"""

from __future__ import annotations

from kvpager.sim.cluster.disagg_config import DisaggConfig
from kvpager.sim.cluster.transfer import KVLink
from kvpager.sim.cost_model import CostModel, prefill_attention_work


class Decider:
    """Answers `disaggregate(...)` for one request (see the module docstring)."""

    def __init__(self, config: DisaggConfig, cost: CostModel, link: KVLink) -> None:
        self.kind, self.threshold = config.decider, config.threshold_tokens
        self.cost, self.link = cost, link

    def prefill_seconds(self, tokens: int, cached: int = 0) -> float:
        """Step time of a lone prefill of `tokens` new tokens after `cached` ones."""
        if tokens <= 0:
            return 0.0
        work = max(prefill_attention_work(tokens, cached), float(tokens))
        return self.cost.step_time(tokens, work, 0, 0, 1)

    def disaggregate(self, prompt: int, cached_decode: int, cached_prefill: int,
                     backlog_decode: int, backlog_prefill: int) -> bool:
        """prompt: tokens; cached_*: prompt tokens each side holds (prefix hits);
        backlog_*: prompt tokens waiting in each side's queue."""
        uncached = prompt - cached_decode
        if self.kind == "always":
            return True
        if self.kind == "threshold":
            return uncached > self.threshold
        saved = self.prefill_seconds(uncached, cached_decode)
        agg = self.prefill_seconds(backlog_decode) + saved
        moved = self.link.data_seconds(uncached) + self.link.latency_s
        dis = (self.prefill_seconds(backlog_prefill)
               + self.prefill_seconds(prompt - cached_prefill, cached_prefill) + moved)
        return saved >= dis - agg
