"""Named exceptions of the memory manager.

Every exception says what was wrong in its message, and every call that raises one leaves the
manager exactly as it was: callers may catch, back off (preempt, wait) and retry.
"""

from __future__ import annotations


class KVPagerError(Exception):
    """Base class of every error kvpager raises on purpose."""


class OutOfBlocksError(KVPagerError, MemoryError):
    """A pool has fewer free blocks than a call needs.

    Not a bug: the scheduler asks `can_allocate` / `blocks_needed` first, or catches it and
    preempts.
    """

    def __init__(self, device: str, needed: int, free: int) -> None:
        self.device, self.needed, self.free = device, needed, free
        super().__init__(f"out of {device} blocks: needed {needed}, only {free} free")


class DoubleFreeError(KVPagerError, ValueError):
    """A block whose reference count is already zero was freed again."""


class UnknownBlockError(KVPagerError, ValueError):
    """A block id outside `0 <= id < num_blocks` of its pool."""


class UnknownSequenceError(KVPagerError, LookupError):
    """A sequence id the manager does not hold."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class DuplicateSequenceError(KVPagerError, ValueError):
    """A sequence id that the manager already holds was allocated or forked into again."""


class WrongDeviceError(KVPagerError, ValueError):
    """An operation on a sequence that is not on the device it needs (swap what is not there)."""


class SequenceTooLongError(KVPagerError, ValueError):
    """An append would take a sequence past the cache's `max_model_len`."""


class MissingDependencyError(KVPagerError, ModuleNotFoundError):
    """An optional package a call needs is not installed; the message says how to get it."""


#: How a user gets torch without the multi-GB CUDA build (the README says the same).
TORCH_HINT = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
              "(the CPU build; drop --index-url for the CUDA one)")


def import_torch(feature: str):  # -> the torch module (untyped: torch is optional)
    """`import torch` for `feature`, or MissingDependencyError with the install hint: the
    memory layer works without torch, and only its tensor conveniences need it."""
    try:
        import torch
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise MissingDependencyError(f"{feature} needs torch, which is not installed: "
                                     f"{TORCH_HINT}") from None
    return torch
