"""Model and GPU presets for the cost model: the numbers a capacity plan starts from.

Models are the published Hugging Face configurations (layers, widths, heads, vocabulary)
with their exact parameter counts; `ModelSpec.estimated_params()` recomputes the count from
the shapes, and the tests check the two agree, so a typo in a preset cannot go unnoticed.

GPUs are the SXM parts with vendor datasheet figures: HBM bandwidth, dense (not sparse)
FP16/BF16 tensor-core FLOP/s, NVLink bandwidth per direction (half the marketed
bidirectional figure: 600 GB/s -> 300 GB/s for A100, 900 -> 450 GB/s for H100/H200) and the
host link per direction (PCIe 4.0 x16, 32 GB/s, for A100; PCIe 5.0 x16, 64 GB/s, for
H100/H200/B200), which bounds swapping KV blocks to CPU memory (B200: NVLink 5, 900 GB/s
per direction). `memory_bytes` is the total that `nvidia-smi` reports (40960, 81920, 81559,
143771 and 183359 MiB),
i.e. what `gpu_memory_utilization` is a fraction of.

Users add their own with `load_model_spec(path)` / `load_gpu_spec(path)`: a JSON object
with exactly the dataclass fields (`name` defaults to the file name).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from kvpager.core.errors import KVPagerError
from kvpager.sim.architecture import (
    LinearAttentionShape,
    MLAShape,
    MoEShape,
    alternating,
    check_layer_types,
    every_nth,
    shape_from_json,
)
from kvpager.sim.param_count import Quirks, estimated_params

MiB = 1 << 20
GiB = 1 << 30


class SpecError(KVPagerError, ValueError):
    """An invalid model/GPU spec, an unknown preset name, or a bad spec file."""


def _positive_int(owner: str, name: str, value: object) -> None:
    if type(value) is not int or value <= 0:
        raise SpecError(f"{owner}: field '{name}': expected an integer > 0, got {value!r}")


def _positive_float(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise SpecError(f"{owner}: field '{name}': expected a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, as far as memory and FLOPs are concerned.

    num_params counts every weight once (tied input/output embeddings once), every expert
    included. The layers' attention kinds (`layer_types`, `sliding_window`,
    `attention_chunk_size`, `mla`, `linear_attention`) and experts (`moe`) are described in
    `kvpager.sim.architecture`; `layer_kinds()` resolves them per layer. A model without a
    pattern but with a window (Mistral-7B) has every layer windowed.
    weight_bits / expert_weight_bits: bits per layer weight / per routed-expert weight as
    published (fp8: 8, MXFP4: 4.25 with its scales); None: the cost model's dtype. The
    embedding tables always take the cost model's dtype.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    vocab_size: int
    num_params: int
    max_context: int
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    attention_chunk_size: int | None = None
    moe: MoEShape | None = None
    mla: MLAShape | None = None
    linear_attention: LinearAttentionShape | None = None
    weight_bits: float | None = None
    expert_weight_bits: float | None = None

    def __post_init__(self) -> None:
        owner = f"model {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"model: field 'name': expected a non-empty string, got {self.name!r}")
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_size",
                  "intermediate_size", "vocab_size", "num_params", "max_context"):
            _positive_int(owner, f, getattr(self, f))
        if self.num_heads % self.num_kv_heads:
            raise SpecError(f"{owner}: field 'num_kv_heads': {self.num_kv_heads} does not divide "
                            f"num_heads = {self.num_heads}")
        if type(self.tie_word_embeddings) is not bool:
            raise SpecError(f"{owner}: field 'tie_word_embeddings': expected true or false, got "
                            f"{self.tie_word_embeddings!r}")
        for f in ("sliding_window", "attention_chunk_size"):
            if getattr(self, f) is not None:
                _positive_int(owner, f, getattr(self, f))
        for f in ("weight_bits", "expert_weight_bits"):
            if getattr(self, f) is not None:
                _positive_float(owner, f, getattr(self, f))
        try:
            for f in ("moe", "mla", "linear_attention"):
                object.__setattr__(self, f, shape_from_json(owner, f, getattr(self, f)))
            if self.layer_types is not None:
                object.__setattr__(self, "layer_types", check_layer_types(
                    owner, self.layer_types, self.num_layers))
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        self._check_layer_fields(owner)

    def _check_layer_fields(self, owner: str) -> None:
        kinds = set(self.layer_types or ())
        needs = {"sliding_attention": "sliding_window", "chunked_attention":
                 "attention_chunk_size", "linear_attention": "linear_attention"}
        for kind, f in needs.items():
            if kind in kinds and getattr(self, f) is None:
                raise SpecError(f"{owner}: field '{f}': layer_types has {kind} layers but "
                                f"{f} is not given")
        if self.mla is not None and kinds - {"full_attention"}:
            raise SpecError(f"{owner}: field 'layer_types': MLA models have only full "
                            "(latent) attention layers here")
        if self.moe is not None and self.moe.num_dense_layers > self.num_layers:
            raise SpecError(f"{owner}: field 'moe.num_dense_layers': "
                            f"{self.moe.num_dense_layers} > num_layers = {self.num_layers}")

    def layer_kinds(self) -> tuple[str, ...]:
        """Per layer: "full", "sliding", "chunked", "mla" or "linear"."""
        if self.mla is not None:
            return ("mla",) * self.num_layers
        short = {"full_attention": "full", "sliding_attention": "sliding",
                 "chunked_attention": "chunked", "linear_attention": "linear"}
        if self.layer_types is not None:
            return tuple(short[k] for k in self.layer_types)
        return ("sliding" if self.sliding_window else "full",) * self.num_layers

    @property
    def is_hybrid(self) -> bool:
        """Whether a manager with KV-cache groups allocates differently from one without:
        some layer reads less than every earlier token, or keeps a state."""
        return any(k in ("sliding", "chunked", "linear") for k in self.layer_kinds())

    @property
    def embedding_params(self) -> int:
        """vocab x hidden: one embedding table (the LM head has the same shape)."""
        return self.vocab_size * self.hidden_size

    @property
    def body_params(self) -> int:
        """Weights every token passes through (layers, norms), i.e. without the input
        embedding (a row gather, no FLOPs) and the LM head (applied only where sampling).
        Every expert counts; `active_body_params` counts those a token uses."""
        tables = 1 if self.tie_word_embeddings else 2
        return self.num_params - tables * self.embedding_params

    @property
    def num_moe_layers(self) -> int:
        return 0 if self.moe is None else self.num_layers - self.moe.num_dense_layers

    @property
    def routed_expert_params(self) -> int:
        """Weights of every routed expert of every MoE layer (gated: 3 matrices each)."""
        if self.moe is None:
            return 0
        return (self.num_moe_layers * self.moe.num_experts * 3 * self.hidden_size
                * self.moe.expert_intermediate_size)

    @property
    def active_body_params(self) -> int:
        """Body weights one token multiplies: all but the routed experts it is not sent to."""
        if self.moe is None:
            return self.body_params
        per_expert = 3 * self.hidden_size * self.moe.expert_intermediate_size
        active = self.num_moe_layers * self.moe.experts_per_token * per_expert
        return self.body_params - self.routed_expert_params + active

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        """K and V of one token over all layers and KV heads (no tensor parallelism), as a
        manager without groups allocates it (every attention layer keeps every token; an MLA
        layer one latent; a linear-attention layer nothing per token)."""
        per_kind = {"mla": self.mla.latent_dim if self.mla else 0, "linear": 0}
        kv = 2 * self.num_kv_heads * self.head_size
        return sum(per_kind.get(k, kv) for k in self.layer_kinds()) * dtype_bytes

    def estimated_params(self, **quirks: object) -> int:
        """Parameter count from the shapes (Llama-style gated MLP and RMSNorm by default;
        the keyword arguments are `kvpager.sim.param_count.Quirks` fields, e.g. OPT:
        gated_mlp=False, biases=True, learned_positions=2050)."""
        return estimated_params(self, Quirks(**quirks))  # type: ignore[arg-type]


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator: memory, HBM bandwidth, dense fp16/bf16 FLOP/s, NVLink and host
    (PCIe) bandwidth per direction.

    interconnect_bytes_per_s / host_bytes_per_s may be None for a part whose links are
    unknown: tensor parallelism / swap timing then refuse to run rather than guess.
    """

    name: str
    memory_bytes: int
    hbm_bytes_per_s: float
    fp16_flops: float
    interconnect_bytes_per_s: float | None = None
    host_bytes_per_s: float | None = None

    def __post_init__(self) -> None:
        owner = f"gpu {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"gpu: field 'name': expected a non-empty string, got {self.name!r}")
        _positive_int(owner, "memory_bytes", self.memory_bytes)
        _positive_float(owner, "hbm_bytes_per_s", self.hbm_bytes_per_s)
        _positive_float(owner, "fp16_flops", self.fp16_flops)
        for f in ("interconnect_bytes_per_s", "host_bytes_per_s"):
            if getattr(self, f) is not None:
                _positive_float(owner, f, getattr(self, f))


# Counts recomputed from the shapes where the model card gives only a rounded total (or
# counts parts we leave out: vision towers, multi-token-prediction layers); the tests check
# each against its card's figure.
GEMMA2_27B = 27_227_128_320  # card: 27.2B
GEMMA3_27B = 27_009_346_304  # card: 27.4B with the 0.4B SigLIP vision tower
LLAMA4_SCOUT = 107_769_861_120  # card: 109B with the vision encoder
QWEN3_NEXT = 79_674_391_296  # card: 80B; the checkpoint's 81.3B adds the MTP layer
DEEPSEEK_V3 = 671_026_419_200  # card: 671B main model (+14B MTP module)

MODELS: dict[str, ModelSpec] = {m.name.lower(): m for m in (
    # facebook/opt-13b: LayerNorm, biases, ReLU MLP (ffn_dim), learned positions (2048 + 2)
    ModelSpec("OPT-13B", 40, 5120, 40, 40, 128, 20480, 50272, 12_853_473_280, 2048,
              tie_word_embeddings=True),
    ModelSpec("Llama-2-7B", 32, 4096, 32, 32, 128, 11008, 32000, 6_738_415_616, 4096),
    ModelSpec("Llama-2-13B", 40, 5120, 40, 40, 128, 13824, 32000, 13_015_864_320, 4096),
    ModelSpec("Llama-2-70B", 80, 8192, 64, 8, 128, 28672, 32000, 68_976_648_192, 4096),
    ModelSpec("Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, 8192),
    ModelSpec("Llama-3-70B", 80, 8192, 64, 8, 128, 28672, 128256, 70_553_706_496, 8192),
    # meta-llama/Llama-3.1-8B and -70B: the Llama 3 shapes, 128k context
    # (max_position_embeddings 131072, rope_scaling "llama3", which changes no shape)
    ModelSpec("Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, 131072),
    ModelSpec("Llama-3.1-70B", 80, 8192, 64, 8, 128, 28672, 128256, 70_553_706_496, 131072),
    # mistralai/Mistral-7B-v0.1
    ModelSpec("Mistral-7B", 32, 4096, 32, 8, 128, 14336, 32000, 7_241_732_096, 32768,
              sliding_window=4096),
    # The models below: Hugging Face config.json of the repository named (text model only
    # for the multimodal ones); counts checked against the shapes in tests/sim/test_presets.
    # openai/gpt-oss-20b, -120b: alternating 128-token window / full (window first), sinks,
    # q/k/v/o biases, experts with biases in MXFP4 (4.25 bits with scales), the rest bf16
    ModelSpec("gpt-oss-20b", 24, 2880, 64, 8, 64, 2880, 201088, 20_914_757_184, 131072,
              sliding_window=128, layer_types=alternating("sliding_attention",
                                                          "full_attention", 24),
              moe=MoEShape(32, 4, 2880), expert_weight_bits=4.25),
    ModelSpec("gpt-oss-120b", 36, 2880, 64, 8, 64, 2880, 201088, 116_829_156_672, 131072,
              sliding_window=128, layer_types=alternating("sliding_attention",
                                                          "full_attention", 36),
              moe=MoEShape(128, 4, 2880), expert_weight_bits=4.25),
    # google/gemma-2-27b: 1:1 window 4,096 (even layers) / global, 4 norms per layer, tied
    ModelSpec("gemma-2-27b", 46, 4608, 32, 16, 128, 36864, 256000, GEMMA2_27B, 8192,
              tie_word_embeddings=True, sliding_window=4096,
              layer_types=alternating("sliding_attention", "full_attention", 46)),
    # google/gemma-3-27b-it text_config: 5 local (window 1,024) : 1 global, q/k norms, tied
    ModelSpec("gemma-3-27b", 62, 5376, 32, 16, 128, 21504, 262208, GEMMA3_27B, 131072,
              tie_word_embeddings=True, sliding_window=1024,
              layer_types=every_nth("full_attention", 6, "sliding_attention", 62)),
    # mistralai/Ministral-8B-Instruct-2410: 128k context, one full layer then three with a
    # 32,768-token window (params.json's per-layer window [131072, 32768, 32768, 32768])
    ModelSpec("Ministral-8B", 36, 4096, 32, 8, 128, 12288, 131072, 8_019_808_256, 131072,
              sliding_window=32768, layer_types=tuple(
                  "full_attention" if i % 4 == 0 else "sliding_attention" for i in range(36))),
    # meta-llama/Llama-4-Scout-17B-16E text_config: 3 layers attend within 8,192-token chunks,
    # every 4th globally (NoPE); 16 experts, 1 active, 1 shared, every layer MoE
    ModelSpec("Llama-4-Scout", 48, 5120, 40, 8, 128, 16384, 202048, LLAMA4_SCOUT, 10485760,
              attention_chunk_size=8192,
              layer_types=every_nth("full_attention", 4, "chunked_attention", 48),
              moe=MoEShape(16, 1, 8192, num_shared_experts=1)),
    # Qwen/Qwen3-Next-80B-A3B-Instruct: 3 Gated DeltaNet : 1 gated full attention; 512
    # experts, 10 active, 1 shared (gated)
    ModelSpec("Qwen3-Next-80B-A3B", 48, 2048, 16, 2, 256, 5120, 151936, QWEN3_NEXT, 262144,
              layer_types=every_nth("full_attention", 4, "linear_attention", 48),
              linear_attention=LinearAttentionShape(16, 32, 128, 128, 4),
              moe=MoEShape(512, 10, 512, num_shared_experts=1)),
    # deepseek-ai/DeepSeek-V3 (without the multi-token-prediction module): MLA, 3 dense layers
    # then 256 experts, 8 active, 1 shared; published in fp8
    ModelSpec("DeepSeek-V3", 61, 7168, 128, 128, 192, 18432, 129280, DEEPSEEK_V3, 163840,
              mla=MLAShape(1536, 512, 128, 64, 128),
              moe=MoEShape(256, 8, 2048, num_shared_experts=1, num_dense_layers=3),
              weight_bits=8.0),
)}

GPUS: dict[str, GPUSpec] = {g.name.lower(): g for g in (
    GPUSpec("A100-40GB", 40960 * MiB, 1.555e12, 312e12, 300e9, 32e9),
    GPUSpec("A100-80GB", 81920 * MiB, 2.039e12, 312e12, 300e9, 32e9),
    GPUSpec("H100-80GB", 81559 * MiB, 3.35e12, 989e12, 450e9, 64e9),
    GPUSpec("H200", 143771 * MiB, 4.8e12, 989e12, 450e9, 64e9),
    # HGX B200 datasheet: 180 GB HBM3e at 8 TB/s, 2.25 PFLOP/s dense FP16/BF16 (4.5 with
    # sparsity), NVLink 5 at 1.8 TB/s (900 GB/s per direction), PCIe Gen5 x16 to the host;
    # nvidia-smi shows 183,359 MiB
    GPUSpec("B200", 183359 * MiB, 8.0e12, 2.25e15, 900e9, 64e9),
)}


def _load(path: str | os.PathLike, cls: type, kind: str):
    name = os.fspath(path)
    try:
        doc = json.loads(Path(name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{name}: cannot read the file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{name}: expected a JSON object of {kind} fields")
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls)
                if f.default is MISSING and f.default_factory is MISSING} - {"name"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SpecError(f"{name}: field '{unknown[0]}': unknown {kind} field; expected "
                        f"{', '.join(sorted(known))}")
    missing = [f.name for f in fields(cls) if f.name in required and f.name not in doc]
    if missing:
        raise SpecError(f"{name}: field '{missing[0]}': missing field")
    doc.setdefault("name", Path(name).stem)
    try:
        return cls(**doc)
    except SpecError as exc:
        raise SpecError(f"{name}: {exc}") from None


def load_model_spec(path: str | os.PathLike) -> ModelSpec:
    """A ModelSpec from a JSON file holding its fields."""
    return _load(path, ModelSpec, "model")


def load_gpu_spec(path: str | os.PathLike) -> GPUSpec:
    """A GPUSpec from a JSON file holding its fields."""
    return _load(path, GPUSpec, "GPU")


def _lookup(arg: str, value: str | os.PathLike | object, table: dict, cls: type, loader):
    if isinstance(value, cls):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise SpecError(f"{arg}: expected a preset name or a JSON file, got {value!r}")
    preset = table.get(os.fspath(value).lower())
    if preset is not None:
        return preset
    if os.fspath(value).endswith(".json") or Path(value).is_file():
        return loader(value)
    choices = ", ".join(spec.name for spec in table.values())
    raise SpecError(f"{arg}: unknown {arg} {os.fspath(value)!r}; choose one of {choices} "
                    f"(any case), or give a JSON file")


def get_model(name_or_path: str | os.PathLike | ModelSpec) -> ModelSpec:
    """A preset by case-insensitive name, a spec from a JSON file, or a ModelSpec as is."""
    return _lookup("model", name_or_path, MODELS, ModelSpec, load_model_spec)


def get_gpu(name_or_path: str | os.PathLike | GPUSpec) -> GPUSpec:
    """A preset by case-insensitive name, a spec from a JSON file, or a GPUSpec as is."""
    return _lookup("gpu", name_or_path, GPUS, GPUSpec, load_gpu_spec)
