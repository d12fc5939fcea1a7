"""A tour of the memory manager: prefix hits, fork, copy-on-write, swapping, a decode batch.

    python examples/manager_demo.py

Needs only numpy (no torch): the manager plans, an executor (a real engine's `KVCache`, or
the simulator) carries the plans out.
"""

from __future__ import annotations

from kvpager.core.memory.manager import KVCacheManager


def show(m: KVCacheManager, *seqs: str) -> None:
    for s in seqs:
        table = m.block_table(s)
        print(f"  {s:>8}: {table.num_tokens:3d} tokens on {table.device}, "
              f"blocks {table.blocks.tolist()}")
    print(f"  free blocks: gpu {m.num_free_blocks('gpu')}, cpu {m.num_free_blocks('cpu')}")


def main() -> None:
    m = KVCacheManager(num_gpu_blocks=16, block_size=4, num_cpu_blocks=8, watermark=0.0,
                       enable_prefix_caching=True)
    system = list(range(100, 112))  # a 12-token system prompt shared by two requests

    print("1. Allocate a prompt, compute it, and let a second request hit its prefix")
    m.allocate("alice", token_ids=[*system, 7, 8])
    m.mark_computed("alice", 14)  # its full blocks are now shareable
    bob = m.allocate("bob", token_ids=[*system, 9, 9, 9])
    print(f"  bob reuses {bob.num_cached_tokens} cached tokens "
          f"(hit rate {m.prefix_cache.hit_rate:.0%})")
    show(m, "alice", "bob")

    print("2. Fork alice for a second sample: every block shared, nothing copied")
    m.fork("alice", "alice#2")
    show(m, "alice", "alice#2")

    print("3. The sample writes into the shared partial block: copy-on-write")
    step = m.append_slots("alice#2")
    print(f"  copy blocks {step.copies.tolist()} first, then write at slot "
          f"{step.slots.tolist()}")
    show(m, "alice", "alice#2")

    print("4. One decode step for everyone, one batched call")
    rows = m.rows_of(["alice", "alice#2", "bob"])
    step = m.append_slots_batch(rows)
    print(f"  slots {step.slots.tolist()}, copies {step.copies.tolist()}")

    print("5. Memory pressure: swap alice's group out, all or nothing, then back in")
    out = m.swap_out(["alice", "alice#2"])
    print(f"  copy (gpu, cpu) pairs {out.tolist()}")
    show(m, "alice", "alice#2")
    back = m.swap_in(["alice", "alice#2"])
    print(f"  copy (cpu, gpu) pairs {back.tolist()}")
    show(m, "alice", "alice#2")

    print("6. Finish: free everything; cached prompt blocks stay for later hits")
    for s in ("alice", "alice#2", "bob"):
        m.free(s)
    print(f"  free blocks: gpu {m.num_free_blocks()}, of which cached for reuse: "
          f"{m.gpu.num_evictable}; copy-on-write copies so far: {m.num_cow_copies}")


if __name__ == "__main__":
    main()
