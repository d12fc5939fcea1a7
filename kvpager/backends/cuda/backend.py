"""`CudaBackend`: the hand-written CUDA kernels behind the `Backend` interface.

Every method forwards already-validated arguments (see `kvpager.backends.base`) to the compiled
extension, which enqueues the kernels on torch's current stream of the tensors' device. The
extension is compiled the first time an operation runs (see `build.py`); asking whether the
backend is available never compiles anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvpager.backends.base import Backend
from kvpager.backends.cuda import build

if TYPE_CHECKING:
    import torch

    from kvpager.backends.fp8 import Scale
    from kvpager.backends.op_args import CacheWriteArgs, PagedAttentionArgs

#: Head sizes with compiled attention kernels (one csrc/attention_hs<N>.cu each).
HEAD_SIZES: tuple[int, ...] = (32, 64, 80, 96, 112, 120, 128, 192, 256)
#: Block sizes with compiled attention kernels.
BLOCK_SIZES: tuple[int, ...] = (8, 16, 32)
#: kv_cache_dtype values the kernels understand ("fp8" means "fp8_e4m3").
KV_CACHE_DTYPES: tuple[str, ...] = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
#: v2 splits a sequence into partitions of this many tokens (docs/architecture.md).
PARTITION_SIZE = 512
#: Oldest GPU generation the kernels are written for (Volta: warp shuffles with masks).
MIN_CAPABILITY = (7, 0)


def _dtype_names() -> dict[Any, str]:
    import torch

    return {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _split_scale(scale: Scale) -> tuple[torch.Tensor | None, float]:
    """(device tensor or None, host value) for the binding.

    A scale tensor on the GPU is passed by pointer and read by the kernel, so no host sync
    happens and the call can be captured in a CUDA graph; a CPU tensor or a float is a value.
    """
    import torch

    if isinstance(scale, torch.Tensor):
        if scale.device.type == "cuda":
            return scale, 1.0
        return None, float(scale.item())
    return None, float(scale)


class CudaBackend(Backend):
    """Paged attention v1/v2 and the cache ops as CUDA kernels compiled on first use."""

    name = "cuda"

    def __init__(self) -> None:
        self._reason: str | None = None
        self._checked = False

    # ---- availability -------------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        """Cheap checks only (environment, torch build, device, nvcc); never builds."""
        if build.disabled():
            return f"disabled by {build.ENV_DISABLE}=1"
        if not self._checked:
            self._reason = self._probe()
            self._checked = True
        return self._reason

    @staticmethod
    def _probe() -> str | None:
        try:
            import torch
        except ImportError as exc:
            return f"torch is not installed ({exc})"
        if torch.version.cuda is None:
            return (
                "no CUDA device (torch.cuda is not available: torch "
                f"{torch.__version__} is built without CUDA)"
            )
        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda is not available)"
        problem = build.nvcc_problem()
        if problem is not None:
            try:
                flags = build.resolve_arch_flags()
            except build.CudaBuildError as exc:
                return str(exc)
            if build.prebuilt_library(flags) is None:
                return problem
        return None

    def device_reason(self, device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, not {device.type}"
        import torch

        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            return (
                f"{torch.cuda.get_device_name(device)} has compute capability "
                f"{capability[0]}.{capability[1]}; the kernels need "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer"
            )
        return None

    def capability_reason(
        self, *, head_size: int, block_size: int, dtype: torch.dtype, kv_cache_dtype: str
    ) -> str | None:
        if head_size not in HEAD_SIZES:
            return f"head_size {head_size} has no CUDA kernel (compiled: {list(HEAD_SIZES)})"
        if block_size not in BLOCK_SIZES:
            return f"block_size {block_size} has no CUDA kernel (compiled: {list(BLOCK_SIZES)})"
        names = _dtype_names()
        if dtype not in names:
            return f"dtype {dtype} has no CUDA kernel (compiled: {sorted(names.values())})"
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            return f"kv_cache_dtype {kv_cache_dtype!r} is not one of {list(KV_CACHE_DTYPES)}"
        if kv_cache_dtype != "auto" and head_size % 16 != 0:
            return (
                f"head_size {head_size} cannot use an fp8 cache: the key layout needs "
                "head_size to be a multiple of x = 16"
            )
        return None

    # ---- the extension ------------------------------------------------------------------
    @staticmethod
    def _ext() -> Any:
        return build.load_extension()

    # ---- attention ----------------------------------------------------------------------
    @staticmethod
    def _attention_tail(args: PagedAttentionArgs) -> tuple[Any, ...]:
        """The binding's arguments after out (v1) or the workspace (v2): vLLM's order, each
        scale split into (device tensor or None, host value). The one place the argument
        object is unpacked for the C++ signature (csrc/binding_attention.cpp)."""
        return (
            args.query, args.key_cache, args.value_cache, int(args.num_kv_heads), args.scale,
            args.block_tables, args.seq_lens, int(args.block_size), int(args.max_seq_len),
            args.alibi_slopes, args.kv_cache_dtype, *_split_scale(args.k_scale),
            *_split_scale(args.v_scale), int(args.tp_rank), int(args.blocksparse_local_blocks),
            int(args.blocksparse_vert_stride), int(args.blocksparse_block_size),
            int(args.blocksparse_head_sliding_step),
            0 if args.sliding_window is None else int(args.sliding_window), args.sinks,
        )

    def paged_attention_v1(self, args: PagedAttentionArgs) -> None:
        """One CTA per (head, sequence) over the whole sequence. The sequence's logits live in
        shared memory, so a max_seq_len beyond it (about 57,000 tokens at head size 128 with
        the 227 KiB of an H100/H200) raises ValueError: use v2 there."""
        self._ext().paged_attention_v1(args.out, *self._attention_tail(args))

    def paged_attention_v2(self, args: PagedAttentionArgs) -> None:
        """Partitions of 512 tokens, then the reduce. For partitions that hold tokens of a
        sequence, exp_sums[s, h, p] is the sum of exp(logit - max_logits[s, h, p]) over the
        partition and tmp_out[s, h, p] the partition's normalized output; a partition whose
        blocks were all skipped by block-sparsity has exp_sum 0 and max_logit -inf. Entries of
        partitions past a sequence's length are not written."""
        ws = args.v2_workspace()
        self._ext().paged_attention_v2(args.out, ws.exp_sums, ws.max_logits, ws.tmp_out,
                                       *self._attention_tail(args))

    # ---- cache ops ----------------------------------------------------------------------
    def reshape_and_cache(self, args: CacheWriteArgs) -> None:
        """FP8 caches store quantize(x / scale) rounded to nearest even and saturated to the
        format's largest finite value (torch's own conversion gives NaN/inf out of range)."""
        self._ext().reshape_and_cache(
            args.key, args.value, args.key_cache, args.value_cache, args.slot_mapping,
            args.kv_cache_dtype, *_split_scale(args.k_scale), *_split_scale(args.v_scale),
        )

    def copy_blocks(
        self,
        key_caches: list[torch.Tensor],
        value_caches: list[torch.Tensor],
        block_mapping: torch.Tensor,
    ) -> None:
        """One kernel launch for every layer and pair (layer base addresses are passed as a
        device array). A CPU block_mapping is copied to the device first."""
        self._ext().copy_blocks(list(key_caches), list(value_caches), block_mapping)

    def swap_blocks(
        self, src: torch.Tensor, dst: torch.Tensor, block_mapping: torch.Tensor
    ) -> None:
        """cudaMemcpyAsync on the current stream, merging runs of consecutive ids into one
        copy. The ids are read on the host: a CUDA block_mapping costs one synchronization.
        Pinned CPU memory makes the copies asynchronous; pageable memory works but blocks."""
        self._ext().swap_blocks(src, dst, block_mapping)

    def merge_attn_states(
        self,
        output: torch.Tensor,
        prefix_output: torch.Tensor,
        prefix_lse: torch.Tensor,
        suffix_output: torch.Tensor,
        suffix_lse: torch.Tensor,
        output_lse: torch.Tensor | None = None,
    ) -> None:
        """Either LSE infinite (+inf or -inf) means that part is empty; both empty gives an
        output of 0 and an output_lse of -inf."""
        self._ext().merge_attn_states(
            output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse
        )


__all__ = [
    "BLOCK_SIZES",
    "HEAD_SIZES",
    "KV_CACHE_DTYPES",
    "MIN_CAPABILITY",
    "PARTITION_SIZE",
    "CudaBackend",
]
