// Public paged-attention entry points: head-size dispatch (the instantiations live in
// attention_hs<N>.cu) and the v2 reduce kernel.
#include "attention_kernel.cuh"

namespace kvp {

bool attention_head_size_supported(int head_size) {
  switch (head_size) {
    case 32: case 64: case 80: case 96: case 112: case 120: case 128: case 192: case 256:
      return true;
    default:
      return false;
  }
}

bool attention_block_size_supported(int block_size) {
  return block_size == 8 || block_size == 16 || block_size == 32;
}

Status paged_attention(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.num_seqs == 0 || a.num_heads == 0) return ok_status();
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0) {
    return make_status(StatusCode::kInvalidArgument,
                       "paged_attention: num_heads=%d is not a multiple of num_kv_heads=%d",
                       a.num_heads, a.num_kv_heads);
  }
  if (a.num_seqs > 65535) {
    return make_status(StatusCode::kInvalidArgument,
                       "paged_attention: num_seqs=%d exceeds the grid limit of 65535 per launch",
                       a.num_seqs);
  }
  switch (a.head_size) {
    case 32: return paged_attention_hs32(a, stream);
    case 64: return paged_attention_hs64(a, stream);
    case 80: return paged_attention_hs80(a, stream);
    case 96: return paged_attention_hs96(a, stream);
    case 112: return paged_attention_hs112(a, stream);
    case 120: return paged_attention_hs120(a, stream);
    case 128: return paged_attention_hs128(a, stream);
    case 192: return paged_attention_hs192(a, stream);
    case 256: return paged_attention_hs256(a, stream);
    default:
      return make_status(StatusCode::kInvalidArgument,
                         "paged_attention: head_size=%d has no kernel (compiled: 32, 64, 80, "
                         "96, 112, 120, 128, 192, 256)",
                         a.head_size);
  }
}

namespace {

constexpr int kReduceThreads = 128;
constexpr int kReduceWarps = kReduceThreads / kWarpSize;

// v2 reduce, one CTA per (head, sequence): out = sum_i w_i * tmp_out_i / sum_i w_i with
// w_i = exp_sum_i * exp(max_logit_i - global_max). Only the partitions that hold tokens of this
// sequence's window are read; the others were never written. A sink joins the global max and
// the denominator once, here.
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
    paged_attention_reduce_kernel(const PagedAttentionArgs a, int launched_partitions) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int tid = threadIdx.x;
  const int seq_len = a.seq_lens[seq];
  const int num_parts =
      min((seq_len + a.partition_size - 1) / a.partition_size, launched_partitions);
  const int first_part =
      a.sliding_window > 0 ? max(seq_len - a.sliding_window, 0) / a.partition_size : 0;
  const bool has_sink = a.sinks != nullptr;
  scalar_t* out = static_cast<scalar_t*>(a.out) + static_cast<int64_t>(seq) * a.out_seq_stride +
                  static_cast<int64_t>(head) * a.out_head_stride;
  const int64_t row = (static_cast<int64_t>(seq) * a.num_heads + head) * a.max_num_partitions;
  const scalar_t* tmp = static_cast<const scalar_t*>(a.tmp_out) + row * a.head_size;

  if (num_parts <= first_part) {
    for (int d = tid; d < a.head_size; d += kReduceThreads) out[d] = from_float<scalar_t>(0.f);
    return;
  }
  if (num_parts == first_part + 1 && !has_sink) {
    // nothing to rescale: copy, bit-exact with the single partition
    const scalar_t* only = tmp + static_cast<int64_t>(first_part) * a.head_size;
    for (int d = tid; d < a.head_size; d += kReduceThreads) out[d] = only[d];
    return;
  }

  extern __shared__ float weights[];  // [launched_partitions]
  __shared__ float red_max[kReduceWarps];
  __shared__ float red_sum[kReduceWarps];
  const float* max_logits = a.max_logits + row;
  const float* exp_sums = a.exp_sums + row;

  float m = -INFINITY;
  for (int i = first_part + tid; i < num_parts; i += kReduceThreads) m = fmaxf(m, max_logits[i]);
  m = block_max<kReduceWarps>(m, red_max);
  const float sink = has_sink ? a.sinks[head] : -INFINITY;
  if (sink > m) m = sink;
  float total = 0.f;
  // Shift by 0 when every max is -inf, so that exp(-inf - shift) = 0, not NaN.
  const float shift = m == -INFINITY ? 0.f : m;
  for (int i = first_part + tid; i < num_parts; i += kReduceThreads) {
    // A partition with no attended token has max_logit -inf and exp_sum 0: weight 0 * 0. A
    // NaN exp_sum (NaN in the partition's logits) gives a NaN weight: NaN reaches `out`.
    const float w = exp_sums[i] * __expf(max_logits[i] - shift);
    weights[i] = w;
    total += w;
  }
  total = block_sum<kReduceWarps>(total, red_sum);  // also publishes `weights`
  if (has_sink) total += __expf(sink - shift);
  const float inv_total = __fdividef(1.f, total + 1e-6f);
  for (int d = tid; d < a.head_size; d += kReduceThreads) {
    float acc = 0.f;
    for (int i = first_part; i < num_parts; ++i) {
      acc = fmaf(weights[i], to_float(tmp[static_cast<int64_t>(i) * a.head_size + d]), acc);
    }
    out[d] = from_float<scalar_t>(acc * inv_total);
  }
}

template <typename scalar_t>
Status launch_reduce(const PagedAttentionArgs& a, cudaStream_t stream) {
  const int launched = (a.max_seq_len + a.partition_size - 1) / a.partition_size;
  const size_t smem = sizeof(float) * static_cast<size_t>(launched > 0 ? launched : 1);
  if (smem > 48 * 1024) {
    return make_status(StatusCode::kInvalidArgument,
                       "paged_attention_v2: max_seq_len=%d gives %d partitions; the reduce "
                       "supports at most %d",
                       a.max_seq_len, launched, 48 * 1024 / static_cast<int>(sizeof(float)));
  }
  const dim3 grid(a.num_heads, a.num_seqs);
  paged_attention_reduce_kernel<scalar_t><<<grid, kReduceThreads, smem, stream>>>(a, launched);
  return last_launch_status("paged_attention_reduce");
}

}  // namespace

Status paged_attention_reduce(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.num_seqs == 0 || a.num_heads == 0) return ok_status();
  if (a.partition_size <= 0) {
    return make_status(StatusCode::kInvalidArgument,
                       "paged_attention_reduce: partition_size=%d must be positive",
                       a.partition_size);
  }
  switch (a.dtype) {
    case DType::kFloat32: return launch_reduce<float>(a, stream);
    case DType::kFloat16: return launch_reduce<__half>(a, stream);
    case DType::kBFloat16: return launch_reduce<__nv_bfloat16>(a, stream);
  }
  return make_status(StatusCode::kInvalidArgument, "paged_attention_reduce: unknown dtype %d",
                     static_cast<int>(a.dtype));
}

}  // namespace kvp
