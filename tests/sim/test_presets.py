"""Model and GPU presets: published shapes and counts, lookups, JSON specs."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from kvpager.sim.presets import (
    GPUS,
    MODELS,
    GPUSpec,
    ModelSpec,
    SpecError,
    get_gpu,
    get_model,
    load_model_spec,
)

KiB = 1024


# what each family adds to a Llama-style layer (kvpager.sim.param_count.Quirks)
GPT_OSS = {"attention_bias": True, "sinks": True, "router_bias": True, "expert_biases": True}
QUIRKS: dict[str, dict] = {
    # ReLU MLP, biases, LayerNorm, 2048 + 2 learned positions
    "OPT-13B": {"gated_mlp": False, "biases": True, "learned_positions": 2050},
    "gpt-oss-20b": GPT_OSS, "gpt-oss-120b": GPT_OSS,
    "gemma-2-27b": {"norms_per_layer": 4},
    "gemma-3-27b": {"norms_per_layer": 4, "qk_norm": True},
    "Qwen3-Next-80B-A3B": {"qk_norm": True, "output_gate": True, "shared_expert_gate": True},
    "DeepSeek-V3": {"router_bias": True},  # e_score_correction_bias
}


@pytest.mark.parametrize("name", [m.name for m in MODELS.values()])
def test_parameter_counts_follow_from_the_shapes(name):
    m = get_model(name)
    assert m.estimated_params(**QUIRKS.get(name, {})) == m.num_params


def test_a_wrong_shape_changes_the_estimate():
    m = get_model("gpt-oss-120b")
    assert m.estimated_params(**GPT_OSS) != m.estimated_params()  # the quirks count
    wider = ModelSpec(**{**{f: getattr(m, f) for f in m.__dataclass_fields__},
                         "name": "x", "moe": {"num_experts": 129, "experts_per_token": 4,
                                              "expert_intermediate_size": 2880}})
    assert wider.estimated_params(**GPT_OSS) != m.num_params


@pytest.mark.parametrize(("name", "billions", "rel"), [
    ("gpt-oss-20b", 20.91, 0.001),      # safetensors total 20,914,757,184
    ("gpt-oss-120b", 116.83, 0.001),    # 116,829,156,672
    ("gemma-2-27b", 27.2, 0.002),
    ("gemma-3-27b", 27.4, 0.02),        # the card counts the 0.4B vision tower
    ("Ministral-8B", 8.02, 0.001),
    ("Llama-4-Scout", 109, 0.02),       # the card counts the vision encoder
    ("Qwen3-Next-80B-A3B", 80, 0.01),   # without the multi-token-prediction layer
    ("DeepSeek-V3", 671, 0.001),        # main model; the MTP module adds 14B
])
def test_new_presets_match_model_cards(name, billions, rel):
    assert get_model(name).num_params / 1e9 == pytest.approx(billions, rel=rel)


@pytest.mark.parametrize(("name", "active", "head"), [
    # active parameters per token as the model cards give them (with the LM head, except
    # Qwen's "A3B", which counts the layers only)
    ("gpt-oss-20b", 3.6, True), ("gpt-oss-120b", 5.1, True), ("Llama-4-Scout", 17, True),
    ("Qwen3-Next-80B-A3B", 3, False), ("DeepSeek-V3", 37, True),
])
def test_active_parameters_match_model_cards(name, active, head):
    m = get_model(name)
    counted = m.active_body_params + (m.embedding_params if head else 0)
    assert counted / 1e9 == pytest.approx(active, rel=0.1)


def test_layer_kinds_follow_the_published_patterns():
    kinds = get_model("gpt-oss-120b").layer_kinds()
    assert kinds[:2] == ("sliding", "full") and kinds.count("full") == 18
    assert get_model("gemma-3-27b").layer_kinds().count("full") == 10   # 5 local : 1 global
    assert get_model("gemma-3-27b").layer_kinds()[5] == "full"
    assert get_model("Ministral-8B").layer_kinds()[:4] == ("full", "sliding", "sliding",
                                                           "sliding")
    assert get_model("Llama-4-Scout").layer_kinds().count("chunked") == 36
    assert get_model("Qwen3-Next-80B-A3B").layer_kinds().count("linear") == 36
    assert set(get_model("DeepSeek-V3").layer_kinds()) == {"mla"}
    assert set(get_model("Mistral-7B").layer_kinds()) == {"sliding"}  # window applied
    assert not get_model("Llama-3-8B").is_hybrid and get_model("gemma-2-27b").is_hybrid


def test_b200_from_its_datasheet():
    b200 = get_gpu("b200")
    assert b200.memory_bytes / 2**30 == pytest.approx(179.06, abs=0.01)
    assert b200.hbm_bytes_per_s == 8e12 and b200.fp16_flops == 2.25e15
    assert b200.memory_bytes > get_gpu("h200").memory_bytes


@pytest.mark.parametrize(("name", "billions"), [
    ("OPT-13B", 12.85), ("Llama-2-7B", 6.74), ("Llama-2-13B", 13.02), ("Llama-2-70B", 68.98),
    ("Llama-3-8B", 8.03), ("Llama-3-70B", 70.55), ("Mistral-7B", 7.24),
    ("Llama-3.1-8B", 8.03), ("Llama-3.1-70B", 70.55),
])
def test_parameter_counts_match_model_cards(name, billions):
    assert get_model(name).num_params / 1e9 == pytest.approx(billions, abs=0.005)


@pytest.mark.parametrize(("name", "kib"), [
    ("Llama-2-7B", 512),   # 2 * 32 layers * 32 heads * 128 * 2 bytes
    ("Llama-2-70B", 320),  # GQA: 8 KV heads over 80 layers
    ("OPT-13B", 800),      # "800 KB" per token in the vLLM paper (SOSP'23)
    ("Llama-3-8B", 128),
    ("Mistral-7B", 128),
    ("Llama-3.1-8B", 128),  # 2 * 32 layers * 8 KV heads * 128 * 2 bytes
    ("Llama-3.1-70B", 320),
])
def test_kv_bytes_per_token_fp16(name, kib):
    assert get_model(name).kv_bytes_per_token(2) == kib * KiB


def test_lookup_is_case_insensitive_and_lists_choices():
    assert get_model("llama-2-7b") is get_model("LLAMA-2-7B") is MODELS["llama-2-7b"]
    assert get_gpu("h100-80gb").hbm_bytes_per_s == 3.35e12
    with pytest.raises(SpecError) as info:
        get_model("gpt-5")
    msg = str(info.value)
    assert msg.startswith("model: unknown model 'gpt-5'; choose one of OPT-13B, Llama-2-7B")
    assert "Mistral-7B" in msg and "JSON file" in msg
    with pytest.raises(SpecError, match=r"^gpu: unknown gpu 'v100'; choose one of A100-40GB"):
        get_gpu("v100")
    assert isinstance(info.value, ValueError)


def test_gpu_presets_are_datasheet_figures():
    a100 = GPUS["a100-80gb"]
    assert (a100.hbm_bytes_per_s, a100.fp16_flops) == (2.039e12, 312e12)
    assert GPUS["a100-40gb"].memory_bytes == 40 * 1024**3
    assert GPUS["h200"].memory_bytes == 143771 * 1024**2  # nvidia-smi total
    assert GPUS["h200"].hbm_bytes_per_s == 4.8e12 and GPUS["h200"].fp16_flops == 989e12


def test_custom_model_from_json(tmp_path):
    spec = asdict(get_model("Llama-2-7B"))
    del spec["name"]
    path = tmp_path / "my-llama.json"
    path.write_text(json.dumps(spec))
    m = get_model(path)
    assert m.name == "my-llama" and m.kv_bytes_per_token(2) == 512 * KiB
    assert get_model(str(path)) == m


def test_custom_gpu_from_json(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"name": "L40S", "memory_bytes": 48 * 1024**3,
                                "hbm_bytes_per_s": 864e9, "fp16_flops": 362e12}))
    g = get_gpu(path)
    assert g.name == "L40S" and g.interconnect_bytes_per_s is None


@pytest.mark.parametrize(("doc", "message"), [
    ({"num_layers": 1}, "field 'hidden_size': missing field"),
    ({**asdict(get_model("Llama-2-7B")), "layers": 3}, "field 'layers': unknown model field"),
    ({**asdict(get_model("Llama-2-7B")), "num_layers": 0},
     "model 'Llama-2-7B': field 'num_layers': expected an integer > 0, got 0"),
    ({**asdict(get_model("Llama-2-7B")), "num_kv_heads": 5},
     "model 'Llama-2-7B': field 'num_kv_heads': 5 does not divide num_heads = 32"),
    ([1, 2], "expected a JSON object of model fields"),
])
def test_bad_model_files(tmp_path, doc, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpecError) as info:
        load_model_spec(path)
    assert str(info.value).startswith(f"{path}: {message}")


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        get_model(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  nope")
    with pytest.raises(SpecError, match=r"invalid JSON at line 2, column 3"):
        get_model(bad)


@pytest.mark.parametrize("kwargs", [
    {"memory_bytes": 0}, {"hbm_bytes_per_s": float("inf")}, {"fp16_flops": -1},
    {"interconnect_bytes_per_s": 0}, {"name": ""},
])
def test_gpu_validation(kwargs):
    base = {"name": "x", "memory_bytes": 1, "hbm_bytes_per_s": 1.0, "fp16_flops": 1.0}
    with pytest.raises(SpecError):
        GPUSpec(**{**base, **kwargs})


def test_model_validation():
    base = asdict(get_model("Mistral-7B"))
    with pytest.raises(SpecError, match="field 'sliding_window'"):
        ModelSpec(**{**base, "sliding_window": 0})
    with pytest.raises(SpecError, match="field 'tie_word_embeddings'"):
        ModelSpec(**{**base, "tie_word_embeddings": 1})


@pytest.mark.parametrize(("name", "hidden", "layers", "heads", "inter"), [
    ("Llama-3.1-8B", 4096, 32, 32, 14336), ("Llama-3.1-70B", 8192, 80, 64, 28672),
])
def test_llama_3_1_presets_are_the_published_128k_configurations(name, hidden, layers, heads,
                                                                  inter):
    m = get_model(name.lower())
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size,
            m.vocab_size, m.head_size) == (hidden, layers, heads, 8, inter, 128256, 128)
    assert m.max_context == 131072
    assert not m.tie_word_embeddings and m.sliding_window is None
