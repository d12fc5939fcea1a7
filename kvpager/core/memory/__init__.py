"""The memory layer: physical blocks, per-sequence tables, sharing, swapping, prefix caching.

`KVCacheManager` is the entry point; `docs/architecture.md` says who owns which state.
"""

from kvpager.core.memory.block_pool import BlockPool
from kvpager.core.memory.block_table import BlockTable, block_tables_to_tensor, num_blocks_for
from kvpager.core.memory.manager import KVCacheManager
from kvpager.core.memory.prefix import hash_block_tokens

__all__ = ["BlockPool", "BlockTable", "KVCacheManager", "block_tables_to_tensor",
           "hash_block_tokens", "num_blocks_for"]
