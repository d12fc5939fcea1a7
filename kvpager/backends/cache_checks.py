"""Argument checks of the cache ops and of `merge_attn_states`.

Each `check_*` function is static (metadata only, safe under `torch.compile`'s fake tensors);
each `queue_*` function adds the checks that read tensor contents to a `DataChecks`.

Unlike attention, the cache ops accept any block size and any head size that the key-cache
chunk `x` divides: they move bytes and do not depend on the kernels' instantiations, so the
memory manager may use them with the block sizes it likes to simulate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpager.backends import validation as v
from kvpager.backends.fp8 import is_fp8, normalize_kv_cache_dtype
from kvpager.backends.layout import attention_dtypes, x_for

if TYPE_CHECKING:
    import torch

    from kvpager.backends.op_args import CacheWriteArgs


def check_reshape_and_cache(args: CacheWriteArgs) -> str:
    """Static checks of a cache write, run when a `CacheWriteArgs` is built; returns the
    canonical kv_cache_dtype, which the object stores."""
    import torch

    key = v.check_tensor("key", args.key)
    v.check_ndim("key", key, 3, "[num_tokens, num_kv_heads, head_size]")
    v.check_dtype("key", key, attention_dtypes())
    num_tokens, num_kv_heads, head_size = key.shape
    device = key.device
    v.check_packed("key", key, 1, "within a token ([num_kv_heads, head_size])")
    value = v.check_tensor("value", args.value)
    v.check_device("value", value, device, "key")
    if value.dtype != key.dtype:
        raise v.fail("value", f"must have the dtype of key ({key.dtype}), got {value.dtype}")
    v.check_shape("value", value, tuple(key.shape), "[num_tokens, num_kv_heads, head_size] of key")
    v.check_packed("value", value, 1, "within a token ([num_kv_heads, head_size])")
    kv_cache_dtype = args.kv_cache_dtype
    try:
        kv_name = normalize_kv_cache_dtype(kv_cache_dtype)
    except ValueError as exc:
        raise v.fail("kv_cache_dtype", str(exc).removeprefix("kv_cache_dtype ")) from None
    cache_dtype = torch.uint8 if is_fp8(kv_name) else key.dtype
    x = x_for(cache_dtype)

    key_cache = v.check_tensor("key_cache", args.key_cache)
    v.check_device("key_cache", key_cache, device, "key")
    if key_cache.dtype != cache_dtype:
        why = "FP8 caches are stored as uint8" if is_fp8(kv_name) else "the dtype of key"
        raise v.fail("key_cache", f"must have dtype {cache_dtype} for kv_cache_dtype "
                                  f"{kv_cache_dtype!r} ({why}), got {key_cache.dtype}")
    v.check_ndim("key_cache", key_cache, 5, "[num_blocks, num_kv_heads, head_size // x, "
                                            "block_size, x]")
    if head_size % x:
        raise v.fail("kv_cache_dtype", f"{kv_cache_dtype!r} stores keys in chunks of x={x} "
                                       f"elements, which do not divide head_size {head_size}")
    num_blocks, block_size = key_cache.shape[0], key_cache.shape[3]
    v.check_shape("key_cache", key_cache,
                  (num_blocks, num_kv_heads, head_size // x, block_size, x),
                  "[num_blocks, num_kv_heads, head_size // x, block_size, x]")
    v.check_packed("key_cache", key_cache, 1, "after the block dimension")
    value_cache = v.check_tensor("value_cache", args.value_cache)
    v.check_device("value_cache", value_cache, device, "key")
    if value_cache.dtype != cache_dtype:
        raise v.fail("value_cache", f"must have the dtype of key_cache ({cache_dtype}), got "
                                    f"{value_cache.dtype}")
    v.check_shape("value_cache", value_cache, (num_blocks, num_kv_heads, head_size, block_size),
                  "[num_blocks, num_kv_heads, head_size, block_size]")
    v.check_packed("value_cache", value_cache, 1, "after the block dimension")

    slot_mapping = v.check_tensor("slot_mapping", args.slot_mapping)
    v.check_device("slot_mapping", slot_mapping, device, "key")
    v.check_dtype("slot_mapping", slot_mapping, (torch.int64,))
    v.check_shape("slot_mapping", slot_mapping, (num_tokens,), "[num_tokens]")
    v.check_scale("k_scale", args.k_scale, device)
    v.check_scale("v_scale", args.v_scale, device)
    return kv_name



def queue_reshape_and_cache_data_checks(checks: v.DataChecks, args: CacheWriteArgs) -> None:
    """Slots below num_blocks * block_size (negative = padding) and no slot written twice."""
    import torch

    slot_mapping = args.slot_mapping
    capacity = args.num_blocks * args.block_size
    beyond = slot_mapping >= capacity
    checks.require(~beyond.any(), "slot_mapping", lambda: (
        f"[{v.first_index(beyond)[0]}] = {int(slot_mapping[beyond][0])} is beyond the cache "
        f"({args.num_blocks} blocks x {args.block_size} slots = {capacity})"))
    if slot_mapping.numel() > 1:
        ordered = torch.sort(slot_mapping).values
        repeated = (ordered[1:] == ordered[:-1]) & (ordered[1:] >= 0)
        checks.require(~repeated.any(), "slot_mapping", lambda: (
            f"writes slot {int(ordered[1:][repeated][0])} for more than one token"))
    v.check_scale_values(checks, "k_scale", args.k_scale)
    v.check_scale_values(checks, "v_scale", args.v_scale)


def _check_block_mapping(block_mapping: object) -> torch.Tensor:
    import torch

    block_mapping = v.check_tensor("block_mapping", block_mapping)
    v.check_dtype("block_mapping", block_mapping, (torch.int64,))
    if block_mapping.dim() != 2 or block_mapping.shape[1] != 2:
        raise v.fail("block_mapping", f"must have shape [num_pairs, 2] of (src, dst) block "
                                      f"ids, got {tuple(block_mapping.shape)}")
    return block_mapping


def _layers(name: str, caches: object) -> list | tuple:
    if not isinstance(caches, (list, tuple)):
        raise v.fail(name, f"must be a list of tensors (one per layer), got "
                           f"{type(caches).__name__}")
    return caches


def check_copy_blocks(key_caches: object, value_caches: object, block_mapping: object) -> int:
    """Layers of one shape, dtype and device each; returns num_blocks (0 for no layers).

    Only dim 0 (blocks) is interpreted, so any cache layout can be copied.
    """
    key_caches = _layers("key_caches", key_caches)
    value_caches = _layers("value_caches", value_caches)
    if len(key_caches) != len(value_caches):
        raise v.fail("value_caches", f"has {len(value_caches)} layers but key_caches has "
                                     f"{len(key_caches)}")
    block_mapping = _check_block_mapping(block_mapping)
    if not key_caches:
        return 0
    first_key = v.check_tensor("key_caches[0]", key_caches[0])
    first_value = v.check_tensor("value_caches[0]", value_caches[0])
    if first_key.dim() < 1 or first_value.dim() < 1:
        raise v.fail("key_caches[0]", "must have a block dimension")
    num_blocks = first_key.shape[0]
    if first_value.shape[0] != num_blocks:
        raise v.fail("value_caches[0]", f"has {first_value.shape[0]} blocks but key_caches[0] "
                                        f"has {num_blocks}")
    device = first_key.device
    for name, caches, first in (("key_caches", key_caches, first_key),
                                ("value_caches", value_caches, first_value)):
        for layer, cache in enumerate(caches):
            label = f"{name}[{layer}]"
            cache = v.check_tensor(label, cache)
            v.check_device(label, cache, device, "key_caches[0]")
            if cache.dtype != first.dtype or cache.shape != first.shape:
                raise v.fail(label, f"must match {name}[0] ({first.dtype}, "
                                    f"{tuple(first.shape)}), got {cache.dtype}, "
                                    f"{tuple(cache.shape)}")
            v.check_packed(label, cache, 1, "after the block dimension")
    if block_mapping.device != device:
        raise v.fail("block_mapping", f"must be on the caches' device {device} (kernels read "
                                      f"it there), got {block_mapping.device}")
    return num_blocks


def check_swap_blocks(src: object, dst: object, block_mapping: object) -> None:
    """Two caches of one dtype and per-block shape; the mapping on the CPU, as in vLLM."""
    src = v.check_tensor("src", src)
    dst = v.check_tensor("dst", dst)
    if src.dim() < 1:
        raise v.fail("src", "must have a block dimension")
    if dst.dtype != src.dtype:
        raise v.fail("dst", f"must have the dtype of src ({src.dtype}), got {dst.dtype}")
    if dst.dim() != src.dim() or dst.shape[1:] != src.shape[1:]:
        raise v.fail("dst", f"must have the per-block shape of src {tuple(src.shape[1:])}, got "
                            f"{tuple(dst.shape[1:])}")
    block_mapping = _check_block_mapping(block_mapping)
    if block_mapping.device.type != "cpu":
        raise v.fail("block_mapping", f"must be on the CPU (copies are issued from the host), "
                                      f"got {block_mapping.device}")
    for name, t in (("src", src), ("dst", dst)):
        v.check_packed(name, t, 1, "after the block dimension")


def check_merge_attn_states(
    output: object, prefix_output: object, prefix_lse: object, suffix_output: object,
    suffix_lse: object, output_lse: object = None,
) -> None:
    """Outputs [num_tokens, num_heads, head_size] of one dtype; LSEs float32 [heads, tokens]."""
    import torch

    output = v.check_tensor("output", output)
    v.check_ndim("output", output, 3, "[num_tokens, num_heads, head_size]")
    v.check_dtype("output", output, attention_dtypes())
    num_tokens, num_heads, head_size = output.shape
    if head_size < 1:
        raise v.fail("output", f"must have head_size >= 1, got shape {tuple(output.shape)}")
    device = output.device
    for name, t in (("output", output), ("prefix_output", prefix_output),
                    ("suffix_output", suffix_output)):
        t = v.check_tensor(name, t)
        v.check_device(name, t, device, "output")
        if t.dtype != output.dtype:
            raise v.fail(name, f"must have the dtype of output ({output.dtype}), got {t.dtype}")
        v.check_shape(name, t, (num_tokens, num_heads, head_size),
                      "[num_tokens, num_heads, head_size] of output")
        v.check_packed(name, t, 1, "within a token ([num_heads, head_size])")
    lses = [("prefix_lse", prefix_lse), ("suffix_lse", suffix_lse)]
    if output_lse is not None:
        lses.append(("output_lse", output_lse))
    for name, t in lses:
        t = v.check_tensor(name, t)
        v.check_device(name, t, device, "output")
        v.check_dtype(name, t, (torch.float32,))
        v.check_shape(name, t, (num_heads, num_tokens), "[num_heads, num_tokens]")
        v.check_packed(name, t, 0, "[num_heads, num_tokens]")


__all__ = [
    "check_copy_blocks",
    "check_merge_attn_states",
    "check_reshape_and_cache",
    "check_swap_blocks",
    "queue_reshape_and_cache_data_checks",
]
