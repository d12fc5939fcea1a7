"""Model and GPU presets for the cost model: the numbers a capacity plan starts from.

Models are the published Hugging Face configurations (layers, widths, heads, vocabulary)
with their exact parameter counts; `ModelSpec.estimated_params()` recomputes the count from
the shapes, and the tests check the two agree, so a typo in a preset cannot go unnoticed.

GPUs are the SXM parts with vendor datasheet figures: HBM bandwidth, dense (not sparse)
FP16/BF16 tensor-core FLOP/s, NVLink bandwidth per direction (half the marketed
bidirectional figure: 600 GB/s -> 300 GB/s for A100, 900 -> 450 GB/s for H100/H200) and the
host link per direction (PCIe 4.0 x16, 32 GB/s, for A100; PCIe 5.0 x16, 64 GB/s, for
H100/H200), which bounds swapping KV blocks to CPU memory.
`memory_bytes` is the total that `nvidia-smi` reports (40960, 81920, 81559 and 143771 MiB),
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

    num_params counts every weight once (tied input/output embeddings once).
    sliding_window is recorded for reference; the cost model treats attention as full,
    which over-estimates Mistral's attention work past 4,096 tokens.
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
        if self.sliding_window is not None:
            _positive_int(owner, "sliding_window", self.sliding_window)

    @property
    def embedding_params(self) -> int:
        """vocab x hidden: one embedding table (the LM head has the same shape)."""
        return self.vocab_size * self.hidden_size

    @property
    def body_params(self) -> int:
        """Weights every token passes through (layers, norms), i.e. without the input
        embedding (a row gather, no FLOPs) and the LM head (applied only where sampling)."""
        tables = 1 if self.tie_word_embeddings else 2
        return self.num_params - tables * self.embedding_params

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        """K and V of one token over all layers and KV heads (no tensor parallelism)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_size * dtype_bytes

    def estimated_params(self, *, gated_mlp: bool = True, biases: bool = False,
                         learned_positions: int = 0) -> int:
        """Parameter count from the shapes (Llama-style gated MLP and RMSNorm by default;
        OPT: gated_mlp=False, biases=True, two LayerNorm vectors, learned positions)."""
        h, d = self.hidden_size, self.head_size
        q_out, kv_out = self.num_heads * d, self.num_kv_heads * d
        attn = h * q_out + 2 * h * kv_out + q_out * h
        mlp = (3 if gated_mlp else 2) * h * self.intermediate_size
        norms = 2 * h * (2 if biases else 1)
        if biases:
            attn += q_out + 2 * kv_out + h
            mlp += self.intermediate_size + h
        per_layer = attn + mlp + norms
        final_norm = h * (2 if biases else 1)
        tables = (1 if self.tie_word_embeddings else 2) * self.embedding_params
        return (self.num_layers * per_layer + final_norm + tables
                + learned_positions * h)


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
)}

GPUS: dict[str, GPUSpec] = {g.name.lower(): g for g in (
    GPUSpec("A100-40GB", 40960 * MiB, 1.555e12, 312e12, 300e9, 32e9),
    GPUSpec("A100-80GB", 81920 * MiB, 2.039e12, 312e12, 300e9, 32e9),
    GPUSpec("H100-80GB", 81559 * MiB, 3.35e12, 989e12, 450e9, 64e9),
    GPUSpec("H200", 143771 * MiB, 4.8e12, 989e12, 450e9, 64e9),
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
