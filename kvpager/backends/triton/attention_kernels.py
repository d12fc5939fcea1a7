"""Triton kernels of paged decode attention: the per-(sequence, kv head) pass and v2's reduce.

One kernel serves v1 and v2. A program owns one sequence, one KV head and (v2) one
partition of `PARTITION_SIZE` tokens, and computes every query head of that KV head's group
at once, so each K/V tile is read from memory once per group (GQA / MQA), not once per query
head. Tokens are walked in tiles of `TILE` tokens (a few cache blocks) with an online
softmax: running max `m`, running sum `l` and accumulator `acc`, all float32.

Tile shapes (G = GROUP_PAD query-head rows, D = HEAD_PAD, T = TILE tokens):

    q      [G, D]   query dtype; rows past the group and columns past head_size are 0
    k_t    [D, T]   keys of the tile, transposed by the addressing (no data movement)
    v      [T, D]   values of the tile
    logits [G, T]   float32;  acc [G, D] float32;  m, l [G] float32

With a group of several heads the two products are `tl.dot`s on tensor cores (rows padded
to 16, the smallest MMA; the padding costs arithmetic, not memory traffic, and decode is
bound by memory). With one head per group (MHA) they are broadcast-multiply-and-sum on the
CUDA cores, which needs no padding.

Why these choices:
- head sizes that are not powers of two (80, 96, 112, 120, 192) are padded to HEAD_PAD and
  masked: Triton tiles must be powers of two;
- cache tiles are addressed straight from vLLM's layouts: key element (token t, dim d) of a
  block sits at `(d // X) * BLOCK_SIZE * X + t * X + d % X`, value element at
  `d * BLOCK_SIZE + t`; a block's K (and V) bytes are contiguous, so a tile of whole blocks
  reads whole 16-byte vectors;
- loads are masked by token validity and, with block sparsity, by the sparse rule, so a
  skipped block or a token past seq_len costs no memory traffic and stale bytes there (even
  NaN) never reach the arithmetic; when the sparse pattern slides with the query head
  (head_sliding_step > 0) the heads of a group read different blocks, so each program then
  takes one query head (a tile's values are multiplied only by heads that read them);
- NaN and inf in what is read propagate as in the reference (NaN logits, +inf logits and
  all-(-inf) attended logits give NaN, never a silent 0); max_logits skips NaN logits (the
  max is NaN-ignoring), exp_sums and tmp_out carry the NaN;
- FP8 bytes are decoded to float16 bits by integer ops (`fp8_codec.decode_fp8`, inlined
  here because the interpreter pays ~0.2 ms per nested jit call) and the products run in
  the query dtype; `k_scale` (and e4m3's 2^8) is applied to the float32 logits and
  `v_scale` to the final output, so no per-element multiply is spent on scales;
- the tile loop is a `tl.range` with NUM_STAGES, so Triton's software pipeliner prefetches
  the next tile's block ids while the current tile is computed (a kernel-level num_stages
  alone left this loop unpipelined in Triton 3.9's sm_90 output);
- block ids are 64-bit before they multiply a block stride: a cache over 2^31 elements
  is a few GB, which serving engines exceed.

`DOT_F32` runs the dots on float32 copies of the tiles. The launcher sets it only under the
interpreter for bfloat16, because the interpreter multiplies bfloat16 tiles as raw integers
(numpy has no bfloat16); the float32 copies hold the same values, so the test still checks
what a GPU computes up to float32 accumulation order.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["group", "per_program", "has_alibi", "num_kv_heads", "tp_rank",
                                "sparse_local", "sparse_vert", "sparse_block", "sparse_step",
                                "window", "has_sinks"])
def paged_attention_kernel(
    out_ptr, exp_sums_ptr, max_logits_ptr, tmp_out_ptr,
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, alibi_ptr, sinks_ptr,
    k_scale, v_scale, qk_factor, v_factor,
    q_seq_stride, k_block_stride, v_block_stride, table_stride, max_partitions,
    num_kv_heads, group, per_program, has_alibi, tp_rank, sparse_local, sparse_vert,
    sparse_block, sparse_step, window, has_sinks,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    X: tl.constexpr, GROUP_PAD: tl.constexpr, TILE: tl.constexpr,
    PARTITION_SIZE: tl.constexpr, PARTITIONED: tl.constexpr, KV_FP8: tl.constexpr,
    K_SCALE_PTR: tl.constexpr, V_SCALE_PTR: tl.constexpr, USE_DOT: tl.constexpr,
    DOT_F32: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Grid (num_seqs, num_heads // per_program, P): P = 1 for v1, max_num_partitions for v2.

    A program computes `per_program` consecutive query heads of one kv head's group: the
    whole group (per_program = group), or one head (per_program = 1) when block sparsity
    slides with the query head, so that heads sharing a value tile read different tokens and
    a head must never multiply values it does not read (0 * a stale NaN is NaN).

    v1 (PARTITIONED False) writes out[seq, head, :] for the program's heads. v2 writes, for a
    partition below ceil(seq_len / PARTITION_SIZE), max_logits / exp_sums [S, H, P] and
    tmp_out [S, H, P, D]; programs of later partitions return at once. qk_factor = softmax
    scale (times 2^8 for e4m3); v_factor = 1 (2^8 for e4m3); with an FP8 cache the logits
    are also multiplied by k_scale and the output by v_scale (each a float, or a pointer to
    one float32 when K_SCALE_PTR / V_SCALE_PTR).

    The group size (query heads per kv head), ALiBi (has_alibi != 0; alibi_ptr is then
    float32 [num_heads]), block sparsity (sparse_vert > 1), the sliding window (window > 0:
    tokens seq_len - window .. seq_len - 1) and sinks (has_sinks != 0; sinks_ptr float32
    [num_heads], added to v1's denominator here and to v2's in the reduce) are run-time
    values, not compile-time ones: they change no tile shape, and compiling a variant for
    each would multiply the kernels a deployment (or the GPU test matrix) compiles.

    The window moves the first tile to the block holding the window's first token, so
    blocks wholly before the window are never loaded (their table entries are not read
    either); a v2 partition wholly before it returns at once, like one past seq_len.
    """
    seq = tl.program_id(0)
    first_head = tl.program_id(1) * per_program
    kv_head = first_head // group
    seq_len = tl.load(seq_lens_ptr + seq)
    # The window's first token (0 without a window) and the start of its block.
    first_token = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)
    first_block_start = (first_token // BLOCK_SIZE) * BLOCK_SIZE
    if PARTITIONED:
        part = tl.program_id(2)
        start = part * PARTITION_SIZE
        if (start >= seq_len) | (start + PARTITION_SIZE <= first_token):
            return
        end = tl.minimum(start + PARTITION_SIZE, seq_len)
        start = tl.maximum(start, first_block_start)
    else:
        start = first_block_start
        end = seq_len

    rows = tl.arange(0, GROUP_PAD)
    row_ok = rows < per_program
    heads = first_head + rows  # [G] query heads of this program
    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_SIZE
    q = tl.load(q_ptr + seq.to(tl.int64) * q_seq_stride + heads[:, None] * HEAD_SIZE
                + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if DOT_F32 or not USE_DOT:
        q = q.to(tl.float32)
    compute_dtype = q.dtype

    if KV_FP8 != 0:
        qk_factor = qk_factor * (tl.load(k_scale) if K_SCALE_PTR else k_scale)
        v_factor = v_factor * (tl.load(v_scale) if V_SCALE_PTR else v_scale)
    # Without ALiBi the load is masked off entirely (alibi_ptr is a placeholder) and the
    # slopes are 0, so the bias below adds nothing.
    slopes = tl.load(alibi_ptr + heads, mask=rows < per_program * has_alibi, other=0.0)
    # Every row of a program shares one sparse pattern: with sparse_step > 0 the pattern
    # slides with the query head, and the launcher then gives each program one head
    # (per_program = 1); step 0 is one pattern for all heads, step < 0 one per kv head.
    q_sparse_block = (seq_len - 1) // sparse_block
    if sparse_step >= 0:  # the pattern slides with the query head
        offset = (tp_rank * num_kv_heads * group + first_head) * sparse_step + 1
    else:  # ... or with the kv head
        offset = (tp_rank * num_kv_heads + kv_head) * -sparse_step + 1

    head_base = kv_head.to(tl.int64) * (HEAD_SIZE * BLOCK_SIZE)
    key_dim_offsets = (dims // X) * (BLOCK_SIZE * X) + dims % X  # [D]
    value_dim_offsets = dims * BLOCK_SIZE  # [D]
    table_row = block_tables_ptr + seq.to(tl.int64) * table_stride

    # Whether the program's rows attend any token: always when dense (the program has
    # tokens). With sparsity the sparse blocks of [start, end) are the consecutive values
    # lo..hi (a sparse block is whole cache blocks), so they attend something iff hi is
    # local or some k in lo..hi has (k + offset) % vert == 0 (offset >= 1). A scalar computed
    # before the loop, not carried through it, which would cost registers there.
    attends_any = end > tl.maximum(start, first_token)
    if sparse_vert > 1:
        lo = (start // BLOCK_SIZE) * BLOCK_SIZE // sparse_block
        hi = ((end - 1) // BLOCK_SIZE) * BLOCK_SIZE // sparse_block
        first_remote = lo + (sparse_vert - (lo + offset) % sparse_vert) % sparse_vert
        attends_any = attends_any & ((hi > q_sparse_block - sparse_local) | (first_remote <= hi))
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], tl.float32)
    for tile_start in tl.range(start, end, TILE, num_stages=NUM_STAGES):
        tokens = tile_start + tl.arange(0, TILE)
        token_ok = (tokens < end) & (tokens >= first_token)
        block_idx = tokens // BLOCK_SIZE
        in_block = tokens % BLOCK_SIZE
        physical = tl.load(table_row + block_idx, mask=token_ok, other=0).to(tl.int64)
        attend = row_ok[:, None] & token_ok[None, :]  # [G, T]
        if sparse_vert > 1:
            k_sparse_block = block_idx * BLOCK_SIZE // sparse_block
            remote = (k_sparse_block + offset) % sparse_vert == 0
            local = k_sparse_block > q_sparse_block - sparse_local
            load_ok = token_ok & (remote | local)
            attend = attend & load_ok[None, :]
        else:
            load_ok = token_ok

        # Both tiles are requested before either is used, so their memory latencies overlap.
        k_t = tl.load(k_cache_ptr + (physical * k_block_stride + head_base + in_block * X)[None, :]
                      + key_dim_offsets[:, None], mask=dim_ok[:, None] & load_ok[None, :],
                      other=0)  # [D, T]
        v = tl.load(v_cache_ptr + (physical * v_block_stride + head_base + in_block)[:, None]
                    + value_dim_offsets[None, :], mask=load_ok[:, None] & dim_ok[None, :],
                    other=0)  # [T, D]
        if KV_FP8 == 1:  # e4m3 (inlined: see fp8_codec.decode_fp8)
            bits = k_t.to(tl.uint16)
            k_t = tl.where((bits & 0x7F) == 0x7F, float("nan"),
                           (((bits & 0x7F) << 7) | ((bits & 0x80) << 8)).to(tl.float16,
                                                                           bitcast=True))
        elif KV_FP8 == 2:  # e5m2
            k_t = (k_t.to(tl.uint16) << 8).to(tl.float16, bitcast=True)
        k_t = k_t.to(compute_dtype)
        if USE_DOT:
            logits = tl.dot(q, k_t, input_precision="ieee")
        else:
            logits = tl.sum(q[:, :, None] * k_t[None, :, :], axis=1)
        logits = logits * qk_factor
        logits += slopes[:, None] * (tokens - seq_len + 1).to(tl.float32)[None, :]
        logits = tl.where(attend, logits, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(logits, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(logits - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new

        if KV_FP8 == 1:
            bits = v.to(tl.uint16)
            v = tl.where((bits & 0x7F) == 0x7F, float("nan"),
                         (((bits & 0x7F) << 7) | ((bits & 0x80) << 8)).to(tl.float16,
                                                                         bitcast=True))
        elif KV_FP8 == 2:
            v = (v.to(tl.uint16) << 8).to(tl.float16, bitcast=True)
        v = v.to(compute_dtype)
        if USE_DOT:
            pv = tl.dot(p.to(compute_dtype), v, input_precision="ieee")
        else:
            pv = tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        acc = acc * alpha[:, None] + pv

    # A row that attended nothing outputs 0 (and max -inf, sum 0). For the others the
    # division is IEEE: the max ignores NaN logits, but their exp(NaN) makes l_i and acc NaN;
    # a +inf logit gives exp(inf - inf) = NaN; and attended logits that are all -inf leave
    # l_i = 0, which is stored as NaN (the softmax is 0 / 0), as the reference does.
    if not PARTITIONED:
        # Sinks join v1's one softmax here (v2's in the reduce): one more logit per head,
        # with no value. Without sinks the load is masked off: sink -inf changes nothing.
        sink = tl.load(sinks_ptr + heads, mask=rows < per_program * has_sinks,
                       other=float("-inf"))
        m_sink = tl.maximum(m_i, sink)
        m_sink = tl.where(m_sink == float("-inf"), 0.0, m_sink)
        alpha = tl.exp(m_i - m_sink)
        l_i = l_i * alpha + tl.exp(sink - m_sink)
        acc = acc * alpha[:, None]
    seen = row_ok & attends_any
    l_i = tl.where(seen & (l_i == 0.0), float("nan"), l_i)
    result = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
    result = result * v_factor
    store_ok = row_ok[:, None] & dim_ok[None, :]
    row_ids = seq.to(tl.int64) * num_kv_heads * group + heads  # [G] rows of [S * H]
    if PARTITIONED:
        slots = row_ids * max_partitions + part
        tl.store(max_logits_ptr + slots, m_i, mask=row_ok)
        tl.store(exp_sums_ptr + slots, l_i, mask=row_ok)
        tl.store(tmp_out_ptr + slots[:, None] * HEAD_SIZE + dims[None, :],
                 result.to(tmp_out_ptr.dtype.element_ty), mask=store_ok)
    else:
        tl.store(out_ptr + row_ids[:, None] * HEAD_SIZE + dims[None, :],
                 result.to(out_ptr.dtype.element_ty), mask=store_ok)


@triton.jit(do_not_specialize=["window", "has_sinks"])
def reduce_partitions_kernel(
    out_ptr, exp_sums_ptr, max_logits_ptr, tmp_out_ptr, seq_lens_ptr, sinks_ptr, num_heads,
    max_partitions, window, has_sinks,
    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, PARTITION_SIZE: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Grid (num_seqs, num_heads): out = sum_p w_p tmp_out_p / sum_p w_p,
    w_p = exp_sums_p * exp(max_logits_p - max over p).

    Reads only the partitions below ceil(seq_len / PARTITION_SIZE) (masked loads), so
    leftovers in later ones, NaN included, are never touched. Walks the partitions in
    chunks of CHUNK: two passes, one for the global max, one for the weighted sum. NaN in a
    used partition's sum or output reaches `out` (0 * NaN included), as in the reference;
    the output is 0 only when no partition attended anything (all weights exactly 0).
    With a window (window > 0) the partitions wholly before it are skipped (never written);
    with sinks (has_sinks != 0) the head's sink joins the max and the denominator once.
    """
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    used = (seq_len + PARTITION_SIZE - 1) // PARTITION_SIZE
    first_part = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0) // PARTITION_SIZE
    row = seq.to(tl.int64) * num_heads + head
    base = row * max_partitions
    chunk = tl.arange(0, CHUNK)

    top = tl.full([CHUNK], float("-inf"), tl.float32)
    for begin in range(first_part, used, CHUNK):
        parts = begin + chunk
        top = tl.maximum(top, tl.load(max_logits_ptr + base + parts, mask=parts < used,
                                      other=float("-inf")))
    # [CHUNK]: the sink in lane 0 (has_sinks is 0 or 1), -inf elsewhere
    sink = tl.load(sinks_ptr + head + chunk * 0, mask=chunk < has_sinks, other=float("-inf"))
    global_max = tl.max(tl.maximum(top, sink), axis=0)
    global_max = tl.where(global_max == float("-inf"), 0.0, global_max)

    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_SIZE
    total = tl.exp(sink - global_max)  # 0 in every lane without a sink
    acc = tl.zeros([HEAD_PAD], tl.float32)
    for begin in range(first_part, used, CHUNK):
        parts = begin + chunk
        ok = parts < used
        sums = tl.load(exp_sums_ptr + base + parts, mask=ok, other=0.0)
        maxes = tl.load(max_logits_ptr + base + parts, mask=ok, other=float("-inf"))
        weights = tl.where(ok, sums * tl.exp(maxes - global_max), 0.0)
        total += weights
        partial = tl.load(tmp_out_ptr + (base + parts)[:, None] * HEAD_SIZE + dims[None, :],
                          mask=ok[:, None] & dim_ok[None, :], other=0.0)
        acc += tl.sum(weights[:, None] * partial.to(tl.float32), axis=0)
    denominator = tl.sum(total, axis=0)
    result = tl.where(denominator == 0.0, 0.0,
                      acc / tl.where(denominator == 0.0, 1.0, denominator))
    tl.store(out_ptr + row * HEAD_SIZE + dims, result.to(out_ptr.dtype.element_ty),
             mask=dim_ok)


__all__ = ["paged_attention_kernel", "reduce_partitions_kernel"]
