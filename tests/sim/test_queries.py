"""The simulator's questions of a scheduler (`kvpager.sim.queries`): windows and memory."""

from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.sched.request import Request
from kvpager.core.sched.scheduler import Scheduler
from kvpager.sim import queries
from tests.core.sched.shadow_executor import ShadowExecutor


def setup(gpu, bs=4, **sched):
    m = KVCacheManager(num_gpu_blocks=gpu, block_size=bs, watermark=0.0)
    s = Scheduler(m, **sched)
    return m, s, ShadowExecutor(s)


def test_resident_reports_final_slots_of_gpu_sequences():
    m, s, ex = setup(32, max_model_len=12)
    s.add_request(Request("a", 4, 3))
    s.add_request(Request("b", 8, 20))
    ex.run(s.schedule())
    rows, final = queries.resident(s)
    assert m.seq_lens(rows).tolist() == [4, 8]
    assert final.tolist() == [6, 11]  # 4 + 3 - 1; min(8 + 20, 12) - 1
    assert queries.next_waiting(s) is None


def test_next_waiting_is_the_head_of_the_queue():
    _m, s, ex = setup(4)  # 16 slots
    s.add_request(Request("a", 12, 3))
    ex.run(s.schedule())
    s.add_request(Request("b", 6, 5))  # needs 2 blocks, 1 is free: waits
    ex.run(s.schedule())
    assert queries.next_waiting(s) == (6, 11)


def test_headroom_and_prefill_work_follow_the_running_set():
    _m, s, ex = setup(32, max_num_batched_tokens=64)
    assert queries.decode_headroom(s) == 0 and queries.decode_rows(s).size == 0
    s.add_request(Request("a", 4, 5))
    s.add_request(Request("b", 6, 9))
    out = s.schedule()
    assert queries.has_prefill_work(s)  # admitted, prompts not computed yet
    ex.run(out)
    assert not queries.has_prefill_work(s)
    # a holds 4 of its 8 final slots (stops at 4 + 5 - 1), b 6 of 14: a can take 4 steps
    assert queries.decode_headroom(s) == 4
    assert queries.decode_rows(s).size == 2
