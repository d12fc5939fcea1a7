// merge_attn_states: combine two partial attention results (e.g. a cached prefix and the new
// suffix of a chunked prefill) by their log-sum-exps:
//   out = (e^(lse_p - m) * out_p + e^(lse_s - m) * out_s) / (e^(lse_p - m) + e^(lse_s - m)),
//   lse = m + log(e^(lse_p - m) + e^(lse_s - m)),  m = max(lse_p, lse_s).
// An infinite LSE (+inf from FlashAttention for an empty part, or -inf) marks a part with no
// keys: it weighs nothing. When both parts are empty the output is 0 and the LSE is -inf.
#include "common.cuh"

namespace kvp {

namespace {

constexpr int kMergeThreads = 128;

// One thread per (token, head, pack of kPack elements). kPack is 16 bytes' worth of elements
// when every row start is 16-byte aligned, else 1.
template <typename scalar_t, int kPack>
__global__ void __launch_bounds__(kMergeThreads) merge_attn_states_kernel(const MergeAttnStatesArgs a) {
  const int packs = a.head_size / kPack;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kMergeThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(a.num_tokens) * a.num_heads * packs) return;
  const int pack = static_cast<int>(idx % packs);
  const int head = static_cast<int>((idx / packs) % a.num_heads);
  const int64_t token = idx / (static_cast<int64_t>(packs) * a.num_heads);

  float p_lse = a.prefix_lse[head * a.p_lse_head_stride + token * a.p_lse_token_stride];
  float s_lse = a.suffix_lse[head * a.s_lse_head_stride + token * a.s_lse_token_stride];
  p_lse = isinf(p_lse) ? -INFINITY : p_lse;
  s_lse = isinf(s_lse) ? -INFINITY : s_lse;
  const float m = fmaxf(p_lse, s_lse);
  float p_w = 0.f;
  float s_w = 0.f;
  float out_lse = -INFINITY;
  if (m != -INFINITY) {
    p_w = expf(p_lse - m);
    s_w = expf(s_lse - m);
    const float total = p_w + s_w;
    out_lse = m + logf(total);
    p_w /= total;
    s_w /= total;
  }

  const int64_t d0 = static_cast<int64_t>(pack) * kPack;
  const scalar_t* po = static_cast<const scalar_t*>(a.prefix_output) + token * a.p_token_stride +
                       head * a.p_head_stride + d0;
  const scalar_t* so = static_cast<const scalar_t*>(a.suffix_output) + token * a.s_token_stride +
                       head * a.s_head_stride + d0;
  scalar_t* out = static_cast<scalar_t*>(a.output) + token * a.out_token_stride +
                  head * a.out_head_stride + d0;
  float pf[kPack];
  float sf[kPack];
  if constexpr (kPack > 1) {
    Unpack16<scalar_t, KvKind::kAuto>::run(load16(po), pf);
    Unpack16<scalar_t, KvKind::kAuto>::run(load16(so), sf);
  } else {
    pf[0] = to_float(po[0]);
    sf[0] = to_float(so[0]);
  }
  // An empty part's output may be garbage (even NaN): select rather than multiply by 0.
#pragma unroll
  for (int e = 0; e < kPack; ++e) {
    float v = 0.f;
    if (p_w != 0.f) v = fmaf(p_w, pf[e], v);
    if (s_w != 0.f) v = fmaf(s_w, sf[e], v);
    out[e] = from_float<scalar_t>(v);
  }
  if (a.output_lse != nullptr && pack == 0) {
    a.output_lse[head * a.o_lse_head_stride + token * a.o_lse_token_stride] = out_lse;
  }
}

template <typename scalar_t>
Status launch_merge(const MergeAttnStatesArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  constexpr int64_t kElem = sizeof(scalar_t);
  auto row_aligned = [&](const void* p, int64_t ts, int64_t hs) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ts * kElem) % 16 == 0 &&
           (hs * kElem) % 16 == 0;
  };
  const bool vec = a.head_size % kVec == 0 &&
                   row_aligned(a.output, a.out_token_stride, a.out_head_stride) &&
                   row_aligned(a.prefix_output, a.p_token_stride, a.p_head_stride) &&
                   row_aligned(a.suffix_output, a.s_token_stride, a.s_head_stride);
  const int pack = vec ? kVec : 1;
  const int64_t threads = static_cast<int64_t>(a.num_tokens) * a.num_heads * (a.head_size / pack);
  const int64_t blocks = (threads + kMergeThreads - 1) / kMergeThreads;
  if (blocks > 0x7fffffffLL) {
    return make_status(StatusCode::kInvalidArgument, "merge_attn_states: %lld elements is too many",
                       static_cast<long long>(threads));
  }
  if (vec) {
    merge_attn_states_kernel<scalar_t, kVec>
        <<<static_cast<unsigned>(blocks), kMergeThreads, 0, stream>>>(a);
  } else {
    merge_attn_states_kernel<scalar_t, 1>
        <<<static_cast<unsigned>(blocks), kMergeThreads, 0, stream>>>(a);
  }
  return last_launch_status("merge_attn_states");
}

}  // namespace

Status merge_attn_states(const MergeAttnStatesArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0 || a.num_heads == 0 || a.head_size == 0) return ok_status();
  switch (a.dtype) {
    case DType::kFloat32: return launch_merge<float>(a, stream);
    case DType::kFloat16: return launch_merge<__half>(a, stream);
    case DType::kBFloat16: return launch_merge<__nv_bfloat16>(a, stream);
  }
  return make_status(StatusCode::kInvalidArgument, "merge_attn_states: unknown dtype %d",
                     static_cast<int>(a.dtype));
}

}  // namespace kvp
