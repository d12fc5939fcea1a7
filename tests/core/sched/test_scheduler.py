"""Scheduler: hand-computed timelines, preemption both ways, chunked prefill, limits, and a
property that any workload runs to completion with correct data and exact token counts."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.sched.request import GroupStatus, Request
from kvpager.core.sched.scheduler import Scheduler

from .shadow_executor import ShadowExecutor, generated_per_group


def setup(gpu, bs=4, cpu=0, prefix=False, **sched):
    m = KVCacheManager(num_gpu_blocks=gpu, block_size=bs, num_cpu_blocks=cpu, watermark=0.0,
                       enable_prefix_caching=prefix)
    s = Scheduler(m, **sched)
    return m, s, ShadowExecutor(s)


def ids(groups):
    return [g.request_id for g in groups]


def test_timeline_of_a_small_batch_with_parallel_sampling():
    m, s, ex = setup(8, max_num_seqs=4, max_num_batched_tokens=64)
    s.add_request(Request("a", 5, 3))
    s.add_request(Request("b", 6, 10, n=2))
    s.add_request(Request("c", 9, 4))
    out = s.schedule()  # all three prompts fit one prefill step: 2 + 2 + 3 blocks
    assert [(c.seq.seq_id, c.start, c.count) for c in out.prefills] == [
        (("a", 0), 0, 5), (("b", 0), 0, 6), (("c", 0), 0, 9)]
    assert ids(ex.run(out).first_token) == ["a", "b", "c"]
    assert m.num_free_blocks() == 1
    out = s.schedule()  # b forked into 2 samples; the first of them copies the shared tail
    assert [q.seq_id for q in out.decode_seqs] == [("a", 0), ("b", 0), ("b", 1), ("c", 0)]
    assert out.copies.tolist() == [[3, 7]]
    assert out.decode_slots.tolist() == [5, 7 * 4 + 2, 3 * 4 + 2, 6 * 4 + 1]
    ex.run(out)
    finished_at = {}
    while s.has_unfinished():
        step = ex.steps
        for g in ex.run(s.schedule()).finished:
            finished_at[g.request_id] = step
    # a: 1 token from the prefill (step 0) + 2 decodes; c: 1 + 3; b: 1 + 9
    assert finished_at == {"a": 2, "c": 3, "b": 9}
    assert m.num_free_blocks() == 8 and len(m) == 0


def test_recompute_preemption_of_the_latest_request():
    _m, s, ex = setup(6, max_num_batched_tokens=64, preemption="recompute")
    a = s.add_request(Request("a", 8, 8))
    b = s.add_request(Request("b", 8, 8))
    events = []
    while s.has_unfinished():
        out, step = s.schedule(), ex.steps
        events += [(step, "preempt", g.request_id, mode) for g, mode in out.preempted]
        events += [(step, "prefill", c.seq.seq_id[0], c.count) for c in out.prefills]
        events += [(step, "finish", g.request_id) for g in ex.run(out).finished]
        ex.check_data()
    # step 5: both need a 4th block and none is free; b (admitted last) is recomputed:
    # its 12 computed tokens + 1 sampled are prefilled again once a finishes
    assert events == [(0, "prefill", "a", 8), (0, "prefill", "b", 8),
                      (5, "preempt", "b", "recompute"), (7, "finish", "a"),
                      (8, "prefill", "b", 13), (10, "finish", "b")]
    assert b.num_recomputed_tokens == 12 and b.num_preemptions == 1
    assert generated_per_group(ex, a) == {("a", 0): 8}
    assert generated_per_group(ex, b) == {("b", 0): 8}
    assert s.num_preempted == {"swap": 0, "recompute": 1}


def test_swap_preemption_of_a_sampling_group():
    m, s, ex = setup(7, cpu=8, max_num_batched_tokens=64)
    s.add_request(Request("a", 8, 9))
    b = s.add_request(Request("b", 6, 6, n=2))
    kinds = []
    while s.has_unfinished():
        out = s.schedule()
        kinds += [(g.request_id, mode) for g, mode in out.preempted]
        if out.swap_in.size:
            kinds.append(("swap-in", out.swap_in.shape[0]))
        ex.run(out)
        ex.check_data()
    assert kinds[0] == ("b", "swap") and ("swap-in", 3) in kinds
    assert generated_per_group(ex, b) == {("b", 0): 6, ("b", 1): 6}
    assert m.num_free_blocks("cpu") == 8 and m.num_free_blocks("gpu") == 7
    assert m.num_blocks_swapped_out == m.num_blocks_swapped_in


def test_chunked_prefill_shares_steps_with_decodes():
    _m, s, ex = setup(32, chunked_prefill=True, max_num_batched_tokens=8)
    s.add_request(Request("a", 3, 10))
    ex.run(s.schedule())
    s.add_request(Request("b", 20, 2))
    chunks = []
    while s.has_unfinished():
        out = s.schedule()
        assert out.num_batched_tokens <= 8
        chunks += [(c.start, c.count) for c in out.prefills]
        ex.run(out)
        ex.check_data()
    # a decodes first each step (1 token), b's prompt takes the remaining 7, 7, then 6
    assert chunks == [(0, 7), (7, 7), (14, 6)]


def test_requests_that_can_never_run_are_rejected_with_a_reason():
    _m, s, ex = setup(4, max_num_batched_tokens=16, max_model_len=40, max_num_seqs=2)
    assert "max_model_len" in s.add_request(Request("long", 40, 1)).finish_reason
    assert "max_num_batched_tokens" in s.add_request(Request("big", 17, 1)).finish_reason
    assert "max_num_seqs" in s.add_request(Request("wide", 4, 1, n=3)).finish_reason
    huge = s.add_request(Request("huge", 16, 4))  # 16 tokens = 4 blocks, all of them: ok
    ok = s.add_request(Request("ok", 3, 2))
    out = s.schedule()
    assert ids(out.admitted) == ["huge"]  # ok waits: FCFS, no blocks left
    ex.run(out)
    assert huge.status is GroupStatus.RUNNING and ok.status is GroupStatus.WAITING
    assert s.num_rejected == 3
    too_big = setup(4, max_num_batched_tokens=64)[1]
    g = too_big.add_request(Request("x", 17, 1))  # 5 blocks > 4 in the whole cache
    assert too_big.schedule().rejected == [g]
    assert "KV blocks" in g.finish_reason and not too_big.has_unfinished()


def test_generation_stops_at_max_model_len():
    _m, s, ex = setup(16, max_model_len=16)
    g = s.add_request(Request("a", 10, 100))
    ex.run_to_completion()
    assert generated_per_group(ex, g) == {("a", 0): 6}


def test_multi_step_decoding_advances_k_tokens():
    m, s, ex = setup(16)
    s.add_request(Request("a", 5, 10))
    ex.run(s.schedule())
    out = s.schedule(num_decode_steps=3)
    assert out.decode_slots.tolist() == [5, 6, 7] and out.num_decode_tokens == 3
    ex.run(out)
    assert m.num_tokens(("a", 0)) == 8
    ex.check_data()


def test_end_of_sequence_reported_by_the_executor():
    m, s, ex = setup(16)
    g = s.add_request(Request("a", 5, 10))
    ex.run(s.schedule())
    result = ex.run(s.schedule(), eos=(("a", 0),))
    assert result.finished == [g] and g.finish_reason == "finished" and len(m) == 0


def test_beam_search_forks_and_prunes_through_the_scheduler():
    m, s, ex = setup(16)
    g = s.add_request(Request("a", 6, 5, beam_width=3))
    ex.run(s.schedule())
    assert [q.seq_id for q in g.seqs] == [("a", 0), ("a", 1), ("a", 2)]
    assert m.gpu.ref_count(m.block_table(("a", 0))[0]) == 3
    ex.run(s.schedule())
    s.free_seq(("a", 1))  # a pruned beam
    child = s.fork_seq(("a", 0))  # the best beam continues twice
    ex.values[child.seq_id] = list(ex.values[("a", 0)])
    assert child.seq_id == ("a", 3)
    ex.run_to_completion()
    assert g.status is GroupStatus.FINISHED and m.num_free_blocks() == 16
    with pytest.raises(ValueError, match="unknown"):
        s.fork_seq(("a", 0))


def test_prefix_cache_hits_skip_computing_the_shared_prompt():
    _m, s, ex = setup(32, prefix=True)
    s.add_request(Request("a", 10, 3, block_hashes=["h0", "h1"]))
    ex.run(s.schedule())
    s.add_request(Request("b", 11, 3, block_hashes=["h0", "h1", "h2"]))
    out = s.schedule()
    assert [(c.start, c.count) for c in out.prefills] == [(8, 3)]
    ex.run(out)
    ex.check_data()


def test_abort_frees_everything():
    m, s, ex = setup(16, cpu=4)
    s.add_request(Request("a", 5, 10))
    s.add_request(Request("b", 5, 10))
    ex.run(s.schedule())
    assert s.abort("a").finish_reason == "aborted"
    assert s.abort("b").status is GroupStatus.FINISHED
    assert not s.has_unfinished() and m.num_free_blocks() == 16
    with pytest.raises(ValueError, match="not waiting, running or swapped"):
        s.abort("a")


@pytest.mark.parametrize(("field", "value"), [("max_num_seqs", 0), ("preemption", "drop"),
                                              ("max_model_len", 1),
                                              ("num_lookahead_slots", -1)])
def test_bad_scheduler_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        setup(4, **{field: value})


requests = st.lists(
    st.tuples(st.integers(1, 24), st.integers(1, 12), st.sampled_from([1, 1, 1, 2, 3]),
              st.booleans(), st.sampled_from([None, "p", "q"])),
    min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=requests, gpu=st.integers(8, 24), cpu=st.sampled_from([0, 6, 16]),
       chunked=st.booleans(), preemption=st.sampled_from(["auto", "swap", "recompute"]),
       prefix=st.booleans())
def test_any_workload_finishes_with_exact_tokens_and_intact_data(
    reqs, gpu, cpu, chunked, preemption, prefix
):
    m, s, ex = setup(gpu, cpu=cpu, prefix=prefix, chunked_prefill=chunked,
                     max_num_batched_tokens=24 if not chunked else 7, max_num_seqs=6,
                     preemption=preemption)
    groups = []
    for i, (p, o, width, beam, pfx) in enumerate(reqs):
        hashes = [f"{pfx}{j}" for j in range(p // 4)] if pfx else None
        groups.append(s.add_request(Request(i, p, o, n=1 if beam else width,
                                            beam_width=width if beam else 1,
                                            block_hashes=hashes)))
    ex.run_to_completion(max_steps=2_000)
    for g, (_p, o, width, _beam, _pfx) in zip(groups, reqs, strict=True):
        assert g.status is GroupStatus.FINISHED
        if g.finish_reason.startswith("rejected"):  # at arrival, or dropped once it ran
            got = generated_per_group(ex, g)
            assert all(n < o for n in got.values())
            assert got == {} or g.num_preemptions or "outgrew" in g.finish_reason
            continue
        assert generated_per_group(ex, g) == {(g.request_id, j): o for j in range(width)}
    assert len(m) == 0 and m.gpu.num_used == 0
    assert m.cpu is None or m.cpu.num_free == cpu


def test_static_batching_admits_the_next_batch_only_when_all_finished():
    _m, s, ex = setup(32, batching="static", max_num_batched_tokens=64)
    s.add_request(Request("a", 4, 2))
    s.add_request(Request("b", 4, 6))
    ex.run(s.schedule())
    s.add_request(Request("c", 4, 2))
    admitted_at = {}
    while s.has_unfinished():
        out, step = s.schedule(), ex.steps
        for g in out.admitted:
            admitted_at[g.request_id] = step
        ex.run(out)
    assert admitted_at == {"c": 6}  # b's last decode is step 5; continuous would admit at 1
    _m, s2, ex2 = setup(32, max_num_batched_tokens=64)
    s2.add_request(Request("a", 4, 2))
    ex2.run(s2.schedule())
    s2.add_request(Request("c", 4, 2))
    assert [g.request_id for g in s2.schedule().admitted] == ["c"]


def test_a_window_that_does_not_fit_shrinks_to_one_step_without_preemption():
    _m, s, ex = setup(3, max_num_batched_tokens=64)  # 12 slots
    s.add_request(Request("a", 3, 9))
    s.add_request(Request("b", 3, 9))
    ex.run(s.schedule())  # 2 blocks used, 1 free
    out = s.schedule(num_decode_steps=4)  # 4 more tokens each needs 2 new blocks: no
    assert out.num_decode_steps == 1 and not out.preempted
    assert out.decode_slots.size == 2
    ex.run(out)
    ex.check_data()


def test_finish_seqs_ends_samples_between_steps():
    m, s, ex = setup(16)
    g = s.add_request(Request("a", 5, 10, n=3))
    ex.run(s.schedule())  # the prompt is computed and forked into 3 samples
    assert len(g.seqs) == 3
    assert s.finish_seqs([("a", 1)]) == []  # one sample drew end-of-sequence first
    assert [q.seq_id for q in g.seqs] == [("a", 0), ("a", 2)] and ("a", 1) not in m
    assert s.finish_seqs([("a", 0), ("a", 2)]) == [g]
    assert g.finish_reason == "finished" and len(m) == 0 and not s.has_unfinished()
    with pytest.raises(ValueError, match="unknown"):
        s.finish_seqs([("a", 0)])


# ---- one max_model_len, owned by the manager --------------------------------------------
def test_the_managers_max_model_len_is_the_schedulers():
    """The crash of the issue: a manager limited to 8 tokens under a default scheduler used
    to raise SequenceTooLongError out of every schedule() once 'a' reached 8 tokens."""
    m = KVCacheManager(num_gpu_blocks=16, block_size=4, max_model_len=8)
    s = Scheduler(m)
    assert s.max_model_len == 8
    a = s.add_request(Request("a", 4, 20))
    ex = ShadowExecutor(s)
    ex.run_to_completion()
    assert a.finish_reason == "finished"
    assert ex.generated[("a", 0)] == 4  # 4 + 4 = 8 tokens: generation stopped at the limit
    assert m.num_free_blocks() == 16


def test_other_requests_keep_being_served_past_a_long_one():
    m = KVCacheManager(num_gpu_blocks=16, block_size=4, max_model_len=8)
    s = Scheduler(m)
    ex = ShadowExecutor(s)
    s.add_request(Request("a", 4, 20))
    s.add_request(Request("b", 3, 2))
    ex.run(s.schedule())
    for _ in range(6):  # 'a' reaches 8 tokens here: the next steps must still run
        ex.run(s.schedule())
    c = s.add_request(Request("c", 2, 3))
    ex.run_to_completion()
    assert c.finish_reason == "finished" and ex.generated[("c", 0)] == 3
    assert ex.generated[("b", 0)] == 2 and ex.generated[("a", 0)] == 4


def test_a_request_that_never_fits_is_refused_at_add_request_with_its_reason():
    m = KVCacheManager(num_gpu_blocks=16, block_size=4, max_model_len=8)
    s = Scheduler(m)
    g = s.add_request(Request("p", 8, 1))
    assert g.status is GroupStatus.FINISHED
    assert g.finish_reason == "rejected: prompt of 8 tokens reaches max_model_len=8"
    strict = Scheduler(KVCacheManager(num_gpu_blocks=16, block_size=4, max_model_len=8),
                       reject_over_length=True)
    g = strict.add_request(Request("a", 4, 20))
    assert g.status is GroupStatus.FINISHED and not strict.has_unfinished()
    assert g.finish_reason == ("rejected: prompt of 4 + output of 20 tokens exceeds "
                               "max_model_len=8")
    assert strict.add_request(Request("b", 4, 4)).status is GroupStatus.WAITING


def test_a_conflicting_scheduler_max_model_len_is_an_error():
    m = KVCacheManager(num_gpu_blocks=16, block_size=4, max_model_len=8)
    with pytest.raises(ValueError, match="max_model_len: SchedulerConfig says 16"):
        Scheduler(m, max_model_len=16)
    assert Scheduler(m, max_model_len=8).max_model_len == 8  # repeating it is fine
    # a manager without a limit: the scheduler's own applies
    assert Scheduler(KVCacheManager(num_gpu_blocks=4), max_model_len=6).max_model_len == 6


def test_a_finished_request_leaves_the_scheduler_and_its_group_keeps_the_outcome():
    s = Scheduler(KVCacheManager(num_gpu_blocks=16, block_size=4))
    a = s.add_request(Request("a", 4, 2))
    assert s.group("a") is a
    ShadowExecutor(s).run_to_completion()
    assert a.status is GroupStatus.FINISHED and a.finish_reason == "finished"
    with pytest.raises(ValueError, match="finished requests leave the scheduler"):
        s.group("a")


def test_stop_lengths_are_a_column_of_the_managers_rows_and_reset_on_reuse():
    """The running set keeps no array of its own: the stop lengths are the manager's row
    table's column, and a row reused by a later request gets that request's own."""
    m, s, ex = setup(16, max_num_seqs=1)
    s.add_request(Request("long", 3, 9))
    s.add_request(Request("short", 3, 2))
    ex.run(s.schedule())  # long's prompt; it decodes from now on
    row = int(m.rows_of([("long", 0)])[0])
    assert m.rows.stop_target[row] == 3 + 9 - 1  # stop when it holds prompt + output - 1
    seen = {}
    while s.has_unfinished():
        out = s.schedule()
        for q, r in zip(out.decode_seqs, out.decode_rows.tolist(), strict=True):
            seen[q.seq_id] = (r, int(m.rows.stop_target[r]))
        ex.run(out)
    assert seen == {("long", 0): (row, 11), ("short", 0): (row, 3 + 2 - 1)}
