"""Cost model: capacity and step time against hand-computed values, published figures and
physical bounds (nothing may beat peak bandwidth or peak FLOP/s)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvpager.sim.cost_model import CostModel, ModelDoesNotFitError, prefill_attention_work
from kvpager.sim.presets import GiB, GPUSpec, get_gpu, get_model

KiB = 1024


def test_prefill_attention_work_counts_causal_pairs():
    for n, c in [(1, 0), (7, 0), (5, 11), (64, 1000)]:
        brute = sum(c + i + 1 for i in range(n))  # query i of the chunk sees c + i + 1 keys
        assert prefill_attention_work(n, c) == brute
    # chunking a prompt does not change the total work
    chunks = [(512, 0), (512, 512), (300, 1024)]
    assert sum(prefill_attention_work(n, c) for n, c in chunks) == prefill_attention_work(1324, 0)


def test_kv_bytes_with_tensor_parallelism_and_fp8():
    assert CostModel("Llama-2-70B", "A100-80GB", tp=4).kv_bytes_per_token == 80 * KiB
    # 8 KV heads over 16 GPUs: each GPU keeps one (replicated) head
    big = CostModel("Llama-2-70B", "H200", tp=16)
    assert big.kv_bytes_per_token == 2 * 80 * 1 * 128 * 2
    assert big.kv_bytes_per_token_total == 16 * big.kv_bytes_per_token
    fp8 = CostModel("Llama-2-7B", "A100-80GB", kv_cache_dtype="fp8")
    assert fp8.kv_bytes_per_token == 256 * KiB
    assert fp8.num_gpu_blocks(16) == pytest.approx(
        2 * CostModel("Llama-2-7B", "A100-80GB").num_gpu_blocks(16), abs=1)


def test_capacity_by_hand():
    c = CostModel("Llama-2-7B", "A100-80GB", activation_reserve_bytes=2 * GiB)
    budget = 0.9 * 81920 * 2**20
    weights = 6_738_415_616 * 2
    assert c.kv_capacity_bytes == pytest.approx(budget - weights - 2 * GiB)
    assert c.num_gpu_blocks(16) == int((budget - weights - 2 * GiB) // (512 * KiB * 16))
    assert c.kv_capacity_tokens == int((budget - weights - 2 * GiB) // (512 * KiB))
    assert c.num_cpu_blocks(4 * GiB, 16) == 4 * GiB // (512 * KiB * 16)  # 512


def test_default_reserve_formula():
    c = CostModel("Llama-2-7B", "A100-80GB")
    expect = 8192 * (2 * 4096 + 3 * 11008) * 2 + 256 * 32000 * 8 + GiB
    assert c.activation_reserve == pytest.approx(expect)


def test_vllm_paper_13b_on_a100_40gb():
    # vLLM (SOSP'23) Fig. 1: a 13B model on an A100-40GB keeps 65% of memory for weights
    # (26 GB) and about 30% for the KV cache. We must land in the same regime.
    c = CostModel("OPT-13B", "A100-40GB")
    share = c.kv_capacity_bytes / c.gpu.memory_bytes
    assert 0.20 < share < 0.35
    assert c.weight_bytes_per_gpu / 1e9 == pytest.approx(25.7, abs=0.1)


def test_model_that_does_not_fit():
    with pytest.raises(ModelDoesNotFitError) as info:
        CostModel("Llama-2-70B", "A100-80GB")  # 138 GB of fp16 weights on one 80 GB GPU
    assert str(info.value).startswith("model does not fit: Llama-2-70B needs 128.5 GiB")
    assert "raise tp or gpu_memory_utilization" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert CostModel("Llama-2-70B", "A100-80GB", tp=2).kv_capacity_bytes > 0


def test_decode_batch_one_is_memory_bound_near_weights_over_bandwidth():
    c = CostModel("Llama-2-7B", "A100-80GB")
    weights = 6_738_415_616 * 2
    physics = weights / 2.039e12  # 6.6 ms: no kernel can stream the weights faster
    t = c.step_time(0, 0, 1, 512)
    b = c.breakdown(0, 0, 1, 512)
    assert physics < t < 1.5 * physics + c.step_overhead_s
    # the GEMMs of one token are bound by reading the weights, not by FLOPs
    assert b.linear_s == pytest.approx((weights - 32000 * 4096 * 2) / (2.039e12 * 0.8))
    assert 2 * c.model.num_params / (312e12 * 0.6) < b.linear_s / 100


def test_long_prefill_is_compute_bound():
    c = CostModel("Llama-2-7B", "A100-80GB")
    n = 4096
    flops = 2 * 6.74e9 * n + 4 * 32 * 32 * 128 * prefill_attention_work(n, 0)
    t = c.step_time(n, prefill_attention_work(n, 0), 0, 0, prefill_seqs=1)
    assert t > flops / 312e12  # cannot beat peak
    assert t < flops / (312e12 * 0.4) + c.step_overhead_s
    b = c.breakdown(n, prefill_attention_work(n, 0), 0, 0, 1)
    assert b.linear_s > 10 * (6.74e9 * 2 / 2.039e12)  # compute, not weight streaming
    # the attention term is quadratic in the chunk: doubling n quadruples it (within 0.1%)
    b2 = c.breakdown(2 * n, prefill_attention_work(2 * n, 0), 0, 0, 1)
    assert b2.prefill_attention_s / b.prefill_attention_s == pytest.approx(4, rel=1e-3)


def test_gqa_reads_four_times_less_kv():
    l2 = CostModel("Llama-2-7B", "H100-80GB").breakdown(0, 0, 64, 64 * 2048)
    l3 = CostModel("Llama-3-8B", "H100-80GB").breakdown(0, 0, 64, 64 * 2048)
    assert l2.decode_attention_s / l3.decode_attention_s == pytest.approx(4)
    # decode attention is the KV read: 64 * 2048 tokens * 512 KiB at 80% of 3.35 TB/s
    assert l2.decode_attention_s == pytest.approx(64 * 2048 * 512 * KiB / (3.35e12 * 0.8))


def test_tensor_parallel_allreduce_by_hand():
    c = CostModel("Llama-2-70B", "H100-80GB", tp=4)
    tokens = 256
    b = c.breakdown(0, 0, tokens, tokens * 100)
    per = 2 * (4 - 1) / 4 * tokens * 8192 * 2 / (450e9 * 0.7) + 10e-6
    assert b.allreduce_s == pytest.approx(2 * 80 * per)
    assert CostModel("Llama-2-7B", "H100-80GB").breakdown(0, 0, tokens, tokens).allreduce_s == 0
    # sharding the weights 4 ways cuts the weight-streaming time of a decode step 4 ways
    c1 = CostModel("Llama-2-70B", "H200", tp=2)
    c2 = CostModel("Llama-2-70B", "H200", tp=8)
    assert c1.breakdown(0, 0, 1, 10).linear_s / c2.breakdown(0, 0, 1, 10).linear_s == (
        pytest.approx(4))


def test_swap_and_copy_times_by_hand():
    c = CostModel("Llama-2-7B", "A100-80GB")
    assert c.swap_time(10, 16) == pytest.approx(10 * 16 * 512 * KiB / (32e9 * 0.8))
    assert c.copy_time(10, 16) == pytest.approx(2 * 10 * 16 * 512 * KiB / (2.039e12 * 0.8))


def test_zero_work_costs_nothing():
    assert CostModel("Llama-3-8B", "H100-80GB").step_time(0, 0, 0, 0) == 0.0


@settings(max_examples=200, deadline=None)
@given(p=st.integers(0, 8192), d=st.integers(0, 512), ctx=st.integers(0, 4096),
       extra=st.integers(1, 4096), which=st.sampled_from(["p", "d", "ctx", "work"]))
def test_step_time_never_decreases_with_more_work(p, d, ctx, extra, which):
    c = CostModel("Llama-3-8B", "A100-80GB")
    work = prefill_attention_work(p, 0)
    base = c.step_time(p, work, d, d * ctx + d)
    if which == "p":
        more = c.step_time(p + extra, prefill_attention_work(p + extra, 0), d, d * ctx + d)
    elif which == "d":
        more = c.step_time(p, work, d + extra, (d + extra) * (ctx + 1))
    elif which == "ctx":
        more = c.step_time(p, work, d, d * (ctx + extra) + d)
    else:
        more = c.step_time(p, work + extra * (p > 0), d, d * ctx + d)
    assert more >= base
    assert c.step_time(p, work, d, d * ctx + d) == pytest.approx(
        c.breakdown(p, work, d, d * ctx + d).total_s)


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"tp": 3}, "tp"), ({"tp": 0}, "tp"), ({"dtype": "fp8"}, "dtype"),
    ({"kv_cache_dtype": "int4"}, "kv_cache_dtype"), ({"gpu_memory_utilization": 0}, "gpu_"),
    ({"gpu_memory_utilization": 1.2}, "gpu_"), ({"flops_efficiency": 0}, "flops_efficiency"),
    ({"step_overhead_s": -1}, "step_overhead_s"), ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"calibration": "file.json"}, "calibration"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=f"^{arg}"):
        CostModel("Llama-2-7B", "A100-80GB", **kwargs)


def test_tp_needs_an_interconnect():
    lone = GPUSpec("lone", 80 * GiB, 2e12, 300e12)
    with pytest.raises(ValueError, match=r"^tp: 2 > 1 needs gpu.interconnect_bytes_per_s"):
        CostModel(get_model("Llama-2-7B"), lone, tp=2)
    assert CostModel(get_model("Llama-2-7B"), lone).tp == 1
    with pytest.raises(ValueError, match=r"^gpu: lone gives no host_bytes_per_s"):
        CostModel(get_model("Llama-2-7B"), lone).swap_time(1, 16)
    assert get_gpu("A100-80GB").host_bytes_per_s == 32e9


@pytest.mark.parametrize(("args", "arg"), [
    ((-1, 0, 0, 0), "prefill_tokens"), ((0, 0, -2, 0), "prefill_tokens"),
    ((10, 5, 0, 0), "prefill_attention_work"), ((0, 0, 4, 3), "decode_context_tokens"),
    ((0, float("nan"), 0, 0), "prefill_attention_work"),
])
def test_bad_step_arguments(args, arg):
    c = CostModel("Llama-2-7B", "A100-80GB")
    with pytest.raises(ValueError, match=f"^{arg}"):
        c.step_time(*args)
