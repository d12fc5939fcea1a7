// Paged decode attention: one CTA per (query head, sequence, partition).
//
// Work split inside a CTA of kThreads threads (kWarps warps):
//   * Q is widened to float once into shared memory (16-byte loads).
//   * QK: each warp takes whole KV blocks (block b goes to warp b % kWarps). Inside a warp a
//     *thread group* of kGroup = max(32 / BLOCK_SIZE, 1) lanes owns one key token; each lane
//     loads whole 16-byte chunks of that token's key (x elements, which the key layout
//     [.., head_size / x, block_size, x] stores contiguously), dots them with Q in FP32, and the
//     group sums its partial dots with shuffles. Logits stay in shared memory.
//   * Softmax: block-wide max and sum (warp shuffles, then one value per warp in shared memory).
//   * PV: the value tile of one block and head, [head_size, block_size], is contiguous, so the
//     warp reads it as 16-byte packs; lane l always gets the same token columns, which lets it
//     hold that block's probabilities in registers. Partial rows are summed across the lanes
//     that share a row (shuffles) and then across warps (shared memory).
// Skipped blocks (block-sparse) load neither K nor V nor the block table entry; slots past
// seq_len get logit -inf and their values are selected away (never 0 * a stale NaN). With a
// sliding window the CTA starts at the block of the window's first token: blocks wholly before
// it are never visited, and the slots before that token in its block are masked like slots
// past seq_len. Sinks (v1) join the block-wide max and sum once; v2's reduce adds them. NaN and
// inf in what the head reads propagate as in the reference: NaN, never a silent 0.
//
// v1 (partition_size == 0) covers the whole sequence in one CTA and writes `out`; v2 covers
// 512 tokens per CTA and writes tmp_out / exp_sums / max_logits for the reduce kernel.
#pragma once

#include "common.cuh"

namespace kvp {

constexpr int kAttnThreads = 128;
constexpr int kAttnWarps = kAttnThreads / kWarpSize;

// Dynamic shared memory of one CTA: the logits of its tokens plus one [head_size] row of
// partial outputs per warp.
__host__ __device__ constexpr size_t attention_smem_bytes(int head_size, int partition_tokens) {
  return sizeof(float) * (static_cast<size_t>(partition_tokens) +
                          static_cast<size_t>(kAttnWarps) * head_size);
}

template <typename scalar_t, KvKind KV, int HEAD, int BS>
__global__ void __launch_bounds__(kAttnThreads, 4)
    paged_attention_kernel(const PagedAttentionArgs a) {
  using cache_t = typename CacheOf<scalar_t, KV>::type;
  using KUnpack = Unpack16<cache_t, KV>;
  constexpr int X = KUnpack::kElems;  // cache elements per 16 bytes == the layout's x
  static_assert(HEAD % X == 0, "head size must be a multiple of x");
  static_assert(BS <= kWarpSize && kWarpSize % BS == 0, "block size must divide the warp");
  constexpr int kGroup = kWarpSize / BS;  // lanes per key token (BS <= 32)
  constexpr int kChunks = HEAD / X;       // 16-byte chunks per key token
  constexpr int kChunksPerLane = (kChunks + kGroup - 1) / kGroup;
  // 16-byte loads in flight per lane are bounded (8 chunks, 4 for fp8 whose chunks widen to 16
  // floats) so that no configuration spills under the 128-register budget of
  // __launch_bounds__(kAttnThreads, 4); the compile test checks it with -warn-spills.
  constexpr int kMaxChunksInFlight = X >= 16 ? 4 : 8;
  constexpr int kQkUnroll = kChunksPerLane < kMaxChunksInFlight ? kChunksPerLane : kMaxChunksInFlight;
  // Value tile [HEAD, BS] as 16-byte packs of X elements.
  constexpr int kVPacks = HEAD * BS / X;
  constexpr int kVPacksPerLane = (kVPacks + kWarpSize - 1) / kWarpSize;
  constexpr int kTokPerPack = X < BS ? X : BS;   // token columns one pack covers
  constexpr int kRowsPerPack = X > BS ? X / BS : 1;
  constexpr int kLanesPerRow = X < BS ? BS / X : 1;
  using QUnpack = Unpack16<scalar_t, KvKind::kAuto>;
  constexpr int QX = QUnpack::kElems;
  constexpr int kQPacks = HEAD / QX;

  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int part = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;

  const bool partitioned = a.partition_size > 0;
  const int seq_len = a.seq_lens[seq];
  // Tokens one CTA can hold in shared memory: a partition, or max_seq_len rounded up to whole
  // blocks for v1. Clamping to it keeps a seq_len above max_seq_len from writing out of bounds
  // (the op layer rejects that input; the clamp is only a guard).
  const int cap_tokens =
      partitioned ? a.partition_size : (a.max_seq_len + BS - 1) / BS * BS;
  const int start_token = part * cap_tokens;
  const int64_t out_row = static_cast<int64_t>(seq) * a.out_seq_stride +
                          static_cast<int64_t>(head) * a.out_head_stride;
  // First token of the sliding window (0 without one).
  const int first_token = a.sliding_window > 0 ? max(seq_len - a.sliding_window, 0) : 0;
  if (start_token >= seq_len || (partitioned && start_token + cap_tokens <= first_token)) {
    if (!partitioned) {  // v1 with an empty sequence: attention over nothing is zero
      scalar_t* out = static_cast<scalar_t*>(a.out) + out_row;
      for (int d = tid; d < HEAD; d += kAttnThreads) out[d] = from_float<scalar_t>(0.f);
    }
    return;  // v2: the reduce only reads partitions that hold tokens of the window
  }
  const int num_seq_blocks = (seq_len + BS - 1) / BS;
  const int start_block = start_token / BS;  // logits[i] is token start_token + i
  const int end_block = min(start_block + cap_tokens / BS, num_seq_blocks);
  const int num_tokens = (end_block - start_block) * BS;  // whole blocks, padding included
  // Blocks before first_block are wholly before the window: never visited (their logits are
  // never written nor read).
  const int first_block = max(start_block, first_token / BS);
  const int first_local = (first_block - start_block) * BS;
  const int kv_head = head / (a.num_heads / a.num_kv_heads);

  extern __shared__ float smem[];
  float* logits = smem;                     // [cap_tokens]
  float* out_partials = smem + cap_tokens;  // [kAttnWarps][HEAD]
  __shared__ float q_s[HEAD];
  __shared__ float red_max[kAttnWarps];
  __shared__ float red_sum[kAttnWarps];

  // ---- Q -> shared memory (float) ----
  {
    const scalar_t* q = static_cast<const scalar_t*>(a.query) +
                        static_cast<int64_t>(seq) * a.q_seq_stride +
                        static_cast<int64_t>(head) * a.q_head_stride;
    for (int i = tid; i < kQPacks; i += kAttnThreads) {
      float f[QX];
      QUnpack::run(load16(q + i * QX), f);
#pragma unroll
      for (int e = 0; e < QX; ++e) q_s[i * QX + e] = f[e];
    }
  }
  __syncthreads();

  // ---- block-sparse rule (docs/architecture.md) ----
  const bool sparse = a.bs_vert_stride > 1;
  int q_bs = 0;
  int bs_offset = 0;
  if (sparse) {
    q_bs = (seq_len - 1) / a.bs_block_size;
    bs_offset = a.bs_head_sliding_step >= 0
                    ? (a.tp_rank * a.num_heads + head) * a.bs_head_sliding_step + 1
                    : (a.tp_rank * a.num_kv_heads + kv_head) * (-a.bs_head_sliding_step) + 1;
  }
  auto attended = [&](int block_idx) {
    if (!sparse) return true;
    const int k_bs = block_idx * BS / a.bs_block_size;
    return (k_bs + bs_offset) % a.bs_vert_stride == 0 || k_bs > q_bs - a.bs_local_blocks;
  };

  const int32_t* block_table = a.block_tables + static_cast<int64_t>(seq) * a.bt_stride;
  const float alibi = a.alibi_slopes != nullptr ? a.alibi_slopes[head] : 0.f;
  float k_scale = 1.f;
  float v_scale = 1.f;
  if (KV != KvKind::kAuto) {
    k_scale = read_scale(a.k_scale_ptr, a.k_scale);
    v_scale = read_scale(a.v_scale_ptr, a.v_scale);
  }
  // dot(q, dequant(k)) * scale == dot(q, fp8) * (k_scale * scale): one multiply per token.
  const float qk_scale = a.scale * k_scale;

  // ---- QK ----
  const int group = lane / kGroup;  // token inside the block
  const int group_lane = lane % kGroup;
  const cache_t* k_head_base = static_cast<const cache_t*>(a.key_cache) +
                               static_cast<int64_t>(kv_head) * a.k_head_stride + group * X;
  float qk_max = -INFINITY;
  bool read_any = false;  // this thread computed the logit of a token the head attends
  for (int b = first_block + warp; b < end_block; b += kAttnWarps) {
    const int token = b * BS + group;
    float* logit = logits + (token - start_token);
    if (!attended(b)) {  // warp-uniform: the whole block is skipped, nothing is loaded
      if (group_lane == 0) *logit = -INFINITY;
      continue;
    }
    const cache_t* k_ptr = k_head_base + static_cast<int64_t>(block_table[b]) * a.k_block_stride;
    float dot = 0.f;
    // Partially unrolled: fully unrolled, fp32 x head 256 x block 32 (64 chunks of 4 floats
    // per lane) would keep all 256 loaded values live and spill.
#pragma unroll(kQkUnroll)
    for (int i = 0; i < kChunksPerLane; ++i) {
      const int c = group_lane + i * kGroup;
      if (kChunks % kGroup == 0 || c < kChunks) {
        float kf[X];
        KUnpack::run(load16(k_ptr + c * (BS * X)), kf);
#pragma unroll
        for (int e = 0; e < X; ++e) dot = fmaf(q_s[c * X + e], kf[e], dot);
      }
    }
#pragma unroll
    for (int m = kGroup / 2; m >= 1; m /= 2) dot += __shfl_xor_sync(kFullMask, dot, m);
    if (group_lane == 0) {
      const bool valid = token < seq_len && token >= first_token;
      const float qk = dot * qk_scale + alibi * static_cast<float>(token - seq_len + 1);
      *logit = valid ? qk : -INFINITY;
      if (valid) {
        qk_max = fmaxf(qk_max, qk);  // fmaxf skips NaN; exp(NaN - max) carries it below
        read_any = true;
      }
    }
  }
  qk_max = block_max<kAttnWarps>(qk_max, red_max);  // its __syncthreads publishes the logits
  // Whether the head attends any token here (false for a partition sparsity skips entirely).
  const bool attends = __syncthreads_or(read_any) != 0;

  // ---- softmax over this CTA's tokens ----
  // A partition whose blocks were all skipped has qk_max = -inf: subtract 0 so that every
  // weight is exp(-inf) = 0 instead of NaN; its exp_sum is then 0 and the reduce ignores it.
  // v1 with sinks: the head's sink joins the max (a NaN sink is not taken as the max, but its
  // exp makes exp_sum NaN below, as in the reference).
  const float sink = (!partitioned && a.sinks != nullptr) ? a.sinks[head] : -INFINITY;
  const float top = sink > qk_max ? sink : qk_max;
  const float shift = top == -INFINITY ? 0.f : top;
  float exp_sum = 0.f;
  for (int i = first_local + tid; i < num_tokens; i += kAttnThreads) {
    const float w = __expf(logits[i] - shift);
    logits[i] = w;
    exp_sum += w;
  }
  exp_sum = block_sum<kAttnWarps>(exp_sum, red_sum);
  if (!partitioned && a.sinks != nullptr) exp_sum += __expf(sink - shift);
  // Attended logits that are all -inf: the softmax is 0 / 0, NaN as in the reference (not a
  // silent 0). NaN and +inf logits already made exp_sum NaN. A head attending nothing keeps
  // exp_sum 0 and outputs 0.
  if (attends && exp_sum == 0.f) exp_sum = NAN;
  const float inv_sum = __fdividef(1.f, exp_sum + 1e-6f);
  for (int i = first_local + tid; i < num_tokens; i += kAttnThreads) logits[i] *= inv_sum;
  __syncthreads();

  // ---- PV ----
  // The lane's packs are processed in passes of at most kPassPacks so that the accumulators
  // plus the in-flight loads fit in registers even for fp32 x head 256 x block 32 (64 packs
  // per lane); a pass re-reads only the block table entries and the probabilities, and each
  // V byte is still loaded exactly once.
  constexpr int kPassPacks = kVPacksPerLane < kMaxChunksInFlight ? kVPacksPerLane : kMaxChunksInFlight;
  constexpr int kPasses = (kVPacksPerLane + kPassPacks - 1) / kPassPacks;
  const int tok0 = X < BS ? (lane * X) % BS : 0;  // this lane's token columns, same every pack
  const cache_t* v_head_base =
      static_cast<const cache_t*>(a.value_cache) + static_cast<int64_t>(kv_head) * a.v_head_stride;
#pragma unroll 1
  for (int pass = 0; pass < kPasses; ++pass) {
    float acc[kPassPacks][kRowsPerPack];
#pragma unroll
    for (int k = 0; k < kPassPacks; ++k)
#pragma unroll
      for (int r = 0; r < kRowsPerPack; ++r) acc[k][r] = 0.f;

    for (int b = first_block + warp; b < end_block; b += kAttnWarps) {
      if (!attended(b)) continue;
      const cache_t* v_ptr = v_head_base + static_cast<int64_t>(block_table[b]) * a.v_block_stride;
      // Tokens of the last block past seq_len hold whatever the cache held (possibly NaN):
      // their probability is 0, but 0 * NaN is not, so their values are zeroed too.
      const int valid = seq_len - b * BS;
      const int before = first_token - b * BS;  // slots before the window's first token
      float p[kTokPerPack];
#pragma unroll
      for (int t = 0; t < kTokPerPack; ++t) p[t] = logits[b * BS - start_token + tok0 + t];
#pragma unroll
      for (int k = 0; k < kPassPacks; ++k) {
        const int pack = lane + (pass * kPassPacks + k) * kWarpSize;
        if (kVPacks % (kWarpSize * kPassPacks) == 0 || pack < kVPacks) {
          float vf[X];
          KUnpack::run(load16(v_ptr + pack * X), vf);
#pragma unroll
          for (int r = 0; r < kRowsPerPack; ++r)
#pragma unroll
            for (int t = 0; t < kTokPerPack; ++t) {
              const float v =
                  (tok0 + t < valid && tok0 + t >= before) ? vf[r * kTokPerPack + t] : 0.f;
              acc[k][r] = fmaf(p[t], v, acc[k][r]);
            }
        }
      }
    }
    // Lanes lane..lane+kLanesPerRow-1 hold the same row: sum them.
#pragma unroll
    for (int k = 0; k < kPassPacks; ++k)
#pragma unroll
      for (int r = 0; r < kRowsPerPack; ++r)
#pragma unroll
        for (int m = kLanesPerRow / 2; m >= 1; m /= 2)
          acc[k][r] += __shfl_xor_sync(kFullMask, acc[k][r], m);
    if (lane % kLanesPerRow == 0) {
#pragma unroll
      for (int k = 0; k < kPassPacks; ++k) {
        const int pack = lane + (pass * kPassPacks + k) * kWarpSize;
        if (pack < kVPacks) {
          const int row0 = pack * X / BS;
#pragma unroll
          for (int r = 0; r < kRowsPerPack; ++r) out_partials[warp * HEAD + row0 + r] = acc[k][r];
        }
      }
    }
  }
  __syncthreads();

  // ---- write ----
  scalar_t* dst;
  if (partitioned) {
    const int64_t row = (static_cast<int64_t>(seq) * a.num_heads + head) * a.max_num_partitions + part;
    dst = static_cast<scalar_t*>(a.tmp_out) + row * HEAD;
    if (tid == 0) {
      a.exp_sums[row] = exp_sum;
      a.max_logits[row] = qk_max;
    }
  } else {
    dst = static_cast<scalar_t*>(a.out) + out_row;
  }
  for (int d = tid; d < HEAD; d += kAttnThreads) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) s += out_partials[w * HEAD + d];
    dst[d] = from_float<scalar_t>(s * v_scale);
  }
}

// Launch one instantiation. Called by the per-head-size translation units.
template <typename scalar_t, KvKind KV, int HEAD, int BS>
Status launch_paged_attention(const PagedAttentionArgs& a, cudaStream_t stream) {
  const bool partitioned = a.partition_size > 0;
  const int cap_tokens = partitioned ? a.partition_size : (a.max_seq_len + BS - 1) / BS * BS;
  const int num_parts = partitioned ? (a.max_seq_len + a.partition_size - 1) / a.partition_size : 1;
  const size_t smem = attention_smem_bytes(HEAD, cap_tokens);
  auto kernel = paged_attention_kernel<scalar_t, KV, HEAD, BS>;
  // Above the default 48 KiB a kernel must opt in; beyond the device's opt-in limit v1 cannot
  // run this max_seq_len at all, and the caller should use v2.
  if (smem > 48 * 1024) {
    int device = 0;
    int optin = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    cudaFuncAttributes attrs;
    cudaFuncGetAttributes(&attrs, kernel);
    if (smem + attrs.sharedSizeBytes > static_cast<size_t>(optin)) {
      return make_status(StatusCode::kInvalidArgument,
                         "paged_attention_v1: max_seq_len=%d needs %zu bytes of shared memory "
                         "per block, more than this GPU allows (%d); use paged_attention_v2",
                         a.max_seq_len, smem + attrs.sharedSizeBytes, optin);
    }
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
    if (err != cudaSuccess) {
      return make_status(StatusCode::kCudaError, "paged_attention: cudaFuncSetAttribute: %s",
                         cudaGetErrorString(err));
    }
  }
  const dim3 grid(a.num_heads, a.num_seqs, num_parts);
  kernel<<<grid, kAttnThreads, smem, stream>>>(a);
  return last_launch_status("paged_attention");
}

inline Status no_kernel(const PagedAttentionArgs& a) {
  return make_status(StatusCode::kInvalidArgument,
                     "paged_attention: no kernel for head_size=%d block_size=%d dtype=%d "
                     "kv_cache_dtype=%d (fp8 caches need head_size %% 16 == 0)",
                     a.head_size, a.block_size, static_cast<int>(a.dtype),
                     static_cast<int>(a.kv));
}

template <typename scalar_t, KvKind KV, int HEAD>
Status dispatch_block_size(const PagedAttentionArgs& a, cudaStream_t stream) {
  switch (a.block_size) {
    case 8: return launch_paged_attention<scalar_t, KV, HEAD, 8>(a, stream);
    case 16: return launch_paged_attention<scalar_t, KV, HEAD, 16>(a, stream);
    case 32: return launch_paged_attention<scalar_t, KV, HEAD, 32>(a, stream);
    default: return no_kernel(a);
  }
}

template <typename scalar_t, int HEAD>
Status dispatch_kv(const PagedAttentionArgs& a, cudaStream_t stream) {
  // An FP8 key cache needs x = 16 elements per chunk, so head sizes that are not multiples of
  // 16 (120) have no FP8 layout and no FP8 kernel.
  constexpr bool kFp8Layout = HEAD % 16 == 0;
  switch (a.kv) {
    case KvKind::kAuto: return dispatch_block_size<scalar_t, KvKind::kAuto, HEAD>(a, stream);
    case KvKind::kFp8E4M3:
      if constexpr (kFp8Layout) return dispatch_block_size<scalar_t, KvKind::kFp8E4M3, HEAD>(a, stream);
      return no_kernel(a);
    case KvKind::kFp8E5M2:
      if constexpr (kFp8Layout) return dispatch_block_size<scalar_t, KvKind::kFp8E5M2, HEAD>(a, stream);
      return no_kernel(a);
  }
  return no_kernel(a);
}

// Dispatch one head size over dtype x kv kind x block size.
template <int HEAD>
Status dispatch_head_size(const PagedAttentionArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case DType::kFloat32: return dispatch_kv<float, HEAD>(a, stream);
    case DType::kFloat16: return dispatch_kv<__half, HEAD>(a, stream);
    case DType::kBFloat16: return dispatch_kv<__nv_bfloat16, HEAD>(a, stream);
  }
  return no_kernel(a);
}

// Defined once per head size in attention_hs<N>.cu so those files compile in parallel.
#define KVP_DECLARE_HEAD(N) Status paged_attention_hs##N(const PagedAttentionArgs&, cudaStream_t);
KVP_DECLARE_HEAD(32)
KVP_DECLARE_HEAD(64)
KVP_DECLARE_HEAD(80)
KVP_DECLARE_HEAD(96)
KVP_DECLARE_HEAD(112)
KVP_DECLARE_HEAD(120)
KVP_DECLARE_HEAD(128)
KVP_DECLARE_HEAD(192)
KVP_DECLARE_HEAD(256)
#undef KVP_DECLARE_HEAD

}  // namespace kvp
