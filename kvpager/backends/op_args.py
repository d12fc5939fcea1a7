"""One frozen argument object per long op signature, checked once when it is built.

Why: vLLM's paged-attention signature has 19 arguments (22 for v2) and `reshape_and_cache` 8.
`kvpager.ops` and the `torch.library` schema keep them exactly as vLLM spells them, because
that is what callers write; below that door every layer (dispatch, data checks, the reference,
Triton and CUDA backends, the verify helpers) passes one of these objects. A new attention
argument (a sliding window, attention sinks, per-group block tables) is then a field here, its
check in `attention_checks`, and the code that reads it, instead of an edit of every signature.

Building an object runs the static checks (metadata only: types, dtypes, shapes, strides,
devices; no tensor data is read, so it also runs on fake tensors under `torch.compile`) and
stores the canonical forms: `kv_cache_dtype` is "auto", "fp8_e4m3" or "fp8_e5m2" and `scale`
a float. An object that exists is therefore well formed; the checks that read tensor contents
(`check_indices`) stay separate because they cost a device->host sync.

Field order is vLLM's v1 order, so `PagedAttentionArgs(out, query, ...)` reads like a call of
`paged_attention_v1`; `PagedAttentionArgs.v2(...)` takes v2's order (the workspace after out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvpager.backends import attention_checks, cache_checks, mla_checks

if TYPE_CHECKING:
    import torch

    from kvpager.backends.fp8 import Scale


@dataclass(frozen=True)
class V2Workspace:
    """paged_attention_v2's partition buffers (P = ceil(max_seq_len / 512)).

    exp_sums, max_logits: float32 [num_seqs, num_heads, P]; tmp_out: out's dtype
    [num_seqs, num_heads, P, head_size]. Checked against the attention call that owns it.
    """

    exp_sums: torch.Tensor
    max_logits: torch.Tensor
    tmp_out: torch.Tensor


@dataclass(frozen=True)
class PagedAttentionArgs:
    """Every argument of one paged-attention call (shapes in `kvpager.ops.paged_attention_v1`).

    out, query: [S, H, D]; key_cache [blocks, K, D // x, block_size, x]; value_cache
    [blocks, K, D, block_size]; block_tables int32 [S, max_blocks_per_seq]; seq_lens int32
    [S]; alibi_slopes float32 [H] or None; k_scale / v_scale floats or one-element float32
    tensors. `workspace` is set for v2 and None for v1. `sliding_window` (int >= 1 or None)
    and `sinks` (float32 [H] or None) are keyword-only, after vLLM's arguments.
    """

    out: torch.Tensor
    query: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    num_kv_heads: int
    scale: float
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    block_size: int
    max_seq_len: int
    alibi_slopes: torch.Tensor | None
    kv_cache_dtype: str
    k_scale: Scale
    v_scale: Scale
    tp_rank: int = 0
    blocksparse_local_blocks: int = 0
    blocksparse_vert_stride: int = 0
    blocksparse_block_size: int = 64
    blocksparse_head_sliding_step: int = 0
    workspace: V2Workspace | None = field(default=None, kw_only=True)
    #: kvpager's keyword-only extensions (not in vLLM's signature): a query at position
    #: p = seq_len - 1 attends keys p - W + 1 .. p (None: every key); one extra float32
    #: logit per query head [num_heads] in the softmax denominator (gpt-oss's sinks).
    sliding_window: int | None = field(default=None, kw_only=True)
    sinks: torch.Tensor | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        kv_cache_dtype, scale = attention_checks.check_attention(self)
        object.__setattr__(self, "kv_cache_dtype", kv_cache_dtype)
        object.__setattr__(self, "scale", scale)
        if self.workspace is not None:
            attention_checks.check_v2_workspace(self, self.workspace)

    @classmethod
    def v2(
        cls, out: torch.Tensor, exp_sums: torch.Tensor, max_logits: torch.Tensor,
        tmp_out: torch.Tensor, *attention: Any, sliding_window: int | None = None,
        sinks: torch.Tensor | None = None,
    ) -> PagedAttentionArgs:
        """From paged_attention_v2's argument order: out, the workspace, then v1's rest."""
        return cls(out, *attention, workspace=V2Workspace(exp_sums, max_logits, tmp_out),
                   sliding_window=sliding_window, sinks=sinks)

    # ---- what the checks established (read from the tensors, not stored twice) ----------
    @property
    def num_seqs(self) -> int:
        return self.query.shape[0]

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    @property
    def head_size(self) -> int:
        return self.query.shape[2]

    @property
    def num_blocks(self) -> int:
        return self.key_cache.shape[0]

    @property
    def max_blocks_per_seq(self) -> int:
        return self.block_tables.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def block_sparse(self) -> bool:
        """Block-sparse attention is on when vert_stride > 1, as in vLLM's kernel."""
        return self.blocksparse_vert_stride > 1

    @property
    def is_empty(self) -> bool:
        """Nothing to write: no sequences or no heads (backends are never called then)."""
        return self.num_seqs == 0 or self.num_heads == 0

    def window_start(self, seq_len: int) -> int:
        """First token a sequence of `seq_len` tokens attends: seq_len - W, or 0."""
        if self.sliding_window is None:
            return 0
        return max(0, seq_len - self.sliding_window)

    def v2_workspace(self) -> V2Workspace:
        """The workspace of a v2 call; a v1 call has none."""
        if self.workspace is None:
            raise ValueError("paged_attention_v2 needs exp_sums, max_logits and tmp_out: "
                             "build the arguments with PagedAttentionArgs.v2")
        return self.workspace


@dataclass(frozen=True)
class CacheWriteArgs:
    """Every argument of one `reshape_and_cache` call, in vLLM's order.

    key, value: [num_tokens, K, D] (token stride free); caches as in attention;
    slot_mapping int64 [num_tokens] (negative = padding); scales as in attention.
    """

    key: torch.Tensor
    value: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    slot_mapping: torch.Tensor
    kv_cache_dtype: str
    k_scale: Scale
    v_scale: Scale

    def __post_init__(self) -> None:
        object.__setattr__(self, "kv_cache_dtype", cache_checks.check_reshape_and_cache(self))

    @property
    def num_tokens(self) -> int:
        return self.key.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.key.shape[1]

    @property
    def head_size(self) -> int:
        return self.key.shape[2]

    @property
    def block_size(self) -> int:
        return self.key_cache.shape[3]

    @property
    def num_blocks(self) -> int:
        return self.key_cache.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.key.dtype

    @property
    def device(self) -> torch.device:
        return self.key.device

    @property
    def is_empty(self) -> bool:
        return self.num_tokens == 0 or self.key.numel() == 0


@dataclass(frozen=True)
class MLADecodeArgs:
    """Every argument of one `paged_mla_decode` call (DeepSeek-V2/V3 latent attention).

    out [S, H, kv_lora_rank]; query [S, H, L] in the absorbed form (L = kv_lora_rank +
    rope_dim: the no-rope part already multiplied into the latent space, then the rope
    part); latent_cache [blocks, block_size, L] of query's dtype; block_tables int32 [S,
    max_blocks_per_seq]; seq_lens int32 [S]. Keys are whole latent rows, values their first
    kv_lora_rank elements. sliding_window as in `PagedAttentionArgs` (keyword-only).
    """

    out: torch.Tensor
    query: torch.Tensor
    latent_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    block_size: int
    kv_lora_rank: int
    scale: float
    sliding_window: int | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", mla_checks.check_mla_decode(self))

    @property
    def num_seqs(self) -> int:
        return self.query.shape[0]

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    @property
    def latent_dim(self) -> int:
        return self.query.shape[2]

    @property
    def rope_dim(self) -> int:
        return self.latent_dim - self.kv_lora_rank

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype

    @property
    def device(self) -> torch.device:
        return self.query.device

    @property
    def is_empty(self) -> bool:
        return self.num_seqs == 0 or self.num_heads == 0


__all__ = ["CacheWriteArgs", "MLADecodeArgs", "PagedAttentionArgs", "V2Workspace"]
