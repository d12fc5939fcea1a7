"""Routers and the prefix index on their own: what each one picks from what it sees."""

from __future__ import annotations

import numpy as np
import pytest

from kvpager.sim.cluster.config import ClusterConfig, parse_weights
from kvpager.sim.cluster.prefix_index import PrefixIndex, RoutedLRU
from kvpager.sim.cluster.routers import PrefixRouter, RoundRobin, _pick
from kvpager.sim.cluster.summary import imbalance


def test_match_is_the_held_run_from_the_first_key_per_replica():
    index = PrefixIndex(3)
    index.stored(0, [1, 2, 3])
    index.stored(1, [1, 2])
    index.stored(2, [2, 3])  # no first key: no prefix
    assert index.match([1, 2, 3, 4]).tolist() == [3, 2, 0]
    index.removed(0, [2])
    assert index.match([1, 2, 3]).tolist() == [1, 2, 0]
    index.cleared(1)
    assert index.holds(1) == set() and index.holds(0) == {1, 3}


def test_routed_lru_evicts_the_tail_of_the_oldest_prompt_first():
    index = PrefixIndex(1)
    lru = RoutedLRU(index, capacity=4)
    lru.routed(0, [10, 11, 12])
    lru.routed(0, [20, 21])  # one over: 12, the old prompt's last block, goes
    assert index.holds(0) == {10, 11, 20, 21}
    assert index.match([10, 11, 12]).tolist() == [2]


def test_pick_breaks_ties_by_fewest_in_flight():
    assert _pick(np.array([1.0, 1.0, 0.0]), np.array([5, 2, 0])) == 1


def test_round_robin_cycles():
    rr = RoundRobin(3)
    assert [rr.route((), 0.0) for _ in range(5)] == [0, 1, 2, 0, 1]


class _Board:
    """A stand-in load board: fixed loads."""

    def __init__(self, in_flight, queued, kv):
        self.replicas = [None] * len(in_flight)
        self._a = (np.array(in_flight), np.array(queued), np.array(kv, dtype=float))

    def arrays(self, now):
        return self._a


def test_prefix_approx_follows_what_it_routed_unless_load_or_a_short_match_says_no():
    board = _Board([0, 1], [0, 0], [0, 0])
    router = PrefixRouter("prefix-approx", board, 100, {})
    router.lru.routed(1, [1, 2, 3])
    assert router.route([1, 2, 9], 0.0) == 1  # 2 of 3 blocks cached on the busier one
    assert router.route([1, 5, 6, 7], 0.0) == 0  # 1 of 4: under the threshold, load decides
    busy = PrefixRouter("prefix-approx", _Board([0, 20], [0, 0], [0, 0]), 100, {})
    busy.lru.routed(1, [1, 2, 3])
    assert busy.route([1, 2, 3], 0.0) == 0  # 20 in flight over the idle one: balance


def test_kv_cost_trades_overlap_against_active_blocks():
    # replica 0 holds the prefix but is full; replica 1 is empty
    board = _Board([1, 0], [0, 0], [0.9, 0.0])
    router = PrefixRouter("kv-cost", board, 100, {"overlap": 1.0})
    router.lru.routed(0, list(range(10)))
    assert router.route(list(range(10)), 0.0) == 1  # 90 active > 10 to prefill
    heavy = PrefixRouter("kv-cost", board, 100, {"overlap": 20.0})
    heavy.lru.routed(0, list(range(10)))
    assert heavy.route(list(range(10)), 0.0) == 0  # 90 < 20 x 10 prefill blocks


def test_weighted_sums_its_scorers():
    board = _Board([3, 0], [3, 0], [0.5, 0.5])
    queue_only = PrefixRouter("weighted", board, 100, {"queue": 1.0})
    queue_only.lru.routed(0, [1, 2])
    assert queue_only.route([1, 2], 0.0) == 1
    prefix_heavy = PrefixRouter("weighted", board, 100, {"prefix": 3.0, "queue": 1.0})
    prefix_heavy.lru.routed(0, [1, 2])
    assert prefix_heavy.route([1, 2], 0.0) == 0


def test_weights_parse_and_name_the_option():
    assert parse_weights("prefix=3, queue=2,kv=2", "weighted") == {
        "prefix": 3.0, "queue": 2.0, "kv": 2.0}
    assert parse_weights("overlap=0.5", "kv-cost") == {"overlap": 0.5}
    for text in ("prefix=3,prefix=1", "queue=1,=2", "overlap=1", "prefix=0"):
        with pytest.raises(ValueError, match="--router-weights"):
            parse_weights(text, "weighted")


def test_cluster_config_names_bad_values():
    with pytest.raises(ValueError, match="--replicas"):
        ClusterConfig(replicas=0)
    with pytest.raises(ValueError, match="--router-signal-delay"):
        ClusterConfig(signal_delay_s=float("nan"))


def test_imbalance_is_time_weighted_max_over_mean():
    # [2, 0] for 1 s (ratio 2), then [1, 1] for 3 s (ratio 1), then an empty cluster
    got = imbalance([0.0, 1.0, 4.0, 5.0], [[2, 0], [1, 1], [0, 0], [0, 0]])
    assert got["max_over_mean"] == pytest.approx((2 * 1 + 1 * 3) / 4)
    assert got["peak"] == 2.0


def test_a_delayed_board_answers_with_the_load_of_delay_seconds_ago():
    from kvpager.core.sched.request import Request
    from kvpager.sim.cluster.signals import LoadBoard
    from kvpager.sim.config import SimConfig
    from kvpager.sim.replica import Replica
    from kvpager.sim.run import cost_model, resolve

    class _Run:
        requests = None

        def all_arrived(self):
            return False

        def next_arrival(self):
            return None

        def request_done(self):
            pass

    config = resolve(SimConfig(num_gpu_blocks=100))
    replica = Replica(config, "paged", cost_model(config), 0, _Run(), False, 1.0)
    board = LoadBoard([replica], delay=0.5)
    replica.add(Request(0, 10, 5))
    board.record(0, 1.0)
    assert board.loads(1.2)[0].in_flight == 0  # the change at 1.0 is not visible yet
    assert board.loads(1.5)[0].in_flight == 1
    assert LoadBoard([replica], delay=0.0).loads(1.0)[0].in_flight == 1
