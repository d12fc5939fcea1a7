"""Index operators of sparse attention, beside paged attention.

- `convert_vertical_slash_indexes` / `convert_vertical_slash_indexes_mergehead`: MInference's
  vertical and slash lines -> per-row-block key blocks and key columns for a blocked sparse
  prefill kernel (vLLM's signatures and layouts).
- `top_k_per_row_prefill` / `top_k_per_row_decode`: per-row top-k positions of a logits
  matrix, as DeepSeek-V3.2's indexer uses to choose the keys sparse MLA attends to.
- `sparse_prefill_attention`: pure-torch attention over the converted tables, to check them
  end to end against dense attention.

The index ops take ``backend="auto" | "reference" | "triton"`` (keyword); auto honours
``$KVPAGER_BACKEND`` when it names one of these, and otherwise picks the reference on a CPU
device and Triton on a CUDA device. Importing this package imports neither torch nor Triton.
"""

from __future__ import annotations

from kvpager.sparse.prefill import sparse_prefill_attention
from kvpager.sparse.topk import top_k_per_row_decode, top_k_per_row_prefill
from kvpager.sparse.vertical_slash import (
    convert_vertical_slash_indexes,
    convert_vertical_slash_indexes_mergehead,
)

__all__ = [
    "convert_vertical_slash_indexes",
    "convert_vertical_slash_indexes_mergehead",
    "sparse_prefill_attention",
    "top_k_per_row_decode",
    "top_k_per_row_prefill",
]
