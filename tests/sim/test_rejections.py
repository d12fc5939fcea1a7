"""Rejections grouped by kind, with the limit and the longest request of each kind."""

import numpy as np

from kvpager.sim.rejections import describe, kind_of, rejection_kinds


def test_kinds_drop_per_request_numbers_and_keep_the_limit():
    assert kind_of("rejected: prompt of 9120 + output of 240 tokens exceeds max_model_len=4096") \
        == ("prompt + output tokens exceeds max_model_len", "max_model_len", 4096)
    assert kind_of("prompt of 8 tokens reaches max_model_len=8") == (
        "prompt tokens reaches max_model_len", "max_model_len", 8)
    assert kind_of("3 sequences exceed max_num_seqs=2") == (
        "sequences exceed max_num_seqs", "max_num_seqs", 2)
    assert kind_of("needs more KV blocks than the cache has") == (
        "needs more KV blocks than the cache has", None, None)


def test_ranges_are_the_real_longest_requests_of_each_kind():
    reasons = {0: "rejected: prompt of 5000 + output of 10 tokens exceeds max_model_len=4096",
               2: "rejected: prompt of 4000 + output of 900 tokens exceeds max_model_len=4096",
               3: "rejected: needs more KV blocks than the cache has"}
    prompts = np.array([5000, 10, 4000, 7000])
    outputs = np.array([10, 5, 900, 1])
    kinds = rejection_kinds(reasons, prompts, outputs)
    assert list(kinds) == ["prompt + output tokens exceeds max_model_len",
                           "needs more KV blocks than the cache has"]
    length = kinds["prompt + output tokens exceeds max_model_len"]
    assert length == {"count": 2, "limit_name": "max_model_len", "limit": 4096,
                      "longest_prompt": 5000, "longest_total": 5010}
    assert describe("prompt + output tokens exceeds max_model_len", length) == (
        "2 x prompt + output tokens exceeds max_model_len (limit 4,096; longest prompt 5,000; "
        "longest prompt + output 5,010)")
    assert describe("needs more KV blocks than the cache has",
                    kinds["needs more KV blocks than the cache has"]) == (
        "1 x needs more KV blocks than the cache has (longest prompt 7,000)")
