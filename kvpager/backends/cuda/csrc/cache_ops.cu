// Cache maintenance kernels: reshape_and_cache (write new K/V, optionally FP8), copy_blocks
// (copy-on-write across every layer in one launch) and swap_blocks (GPU <-> CPU copies).
#include "common.cuh"

namespace kvp {

namespace {

// ---- reshape_and_cache -----------------------------------------------------------------------

constexpr int kReshapeThreads = 256;

// N activation elements -> floats. Aligned inputs use 16-byte loads; a key/value tensor that
// is a view into a fused QKV buffer may not be aligned, and then reads element by element.
template <typename scalar_t, int N, bool kAligned>
__device__ __forceinline__ void load_floats(const scalar_t* src, float* out) {
  if constexpr (kAligned) {
    constexpr int E = 16 / sizeof(scalar_t);
    static_assert(N % E == 0, "a chunk must be whole 16-byte packs");
#pragma unroll
    for (int i = 0; i < N / E; ++i) Unpack16<scalar_t, KvKind::kAuto>::run(load16(src + i * E), out + i * E);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_float(src[i]);
  }
}

// One CTA per token; a thread handles one (kv head, 16-byte key chunk) item: X consecutive
// head dimensions, which are one contiguous 16-byte run of the key cache and X scattered
// elements (stride block_size) of the value cache.
template <typename scalar_t, KvKind KV, bool kAligned>
__global__ void __launch_bounds__(kReshapeThreads)
    reshape_and_cache_kernel(const ReshapeAndCacheArgs a) {
  using cache_t = typename CacheOf<scalar_t, KV>::type;
  constexpr int X = 16 / static_cast<int>(sizeof(cache_t));
  const int token = blockIdx.x;
  const int64_t slot = a.slot_mapping[token];
  if (slot < 0) return;  // padding token
  const int64_t block = slot / a.block_size;
  const int offset = static_cast<int>(slot % a.block_size);
  const int chunks = a.head_size / X;
  float k_scale = 1.f;
  float v_scale = 1.f;
  if (KV != KvKind::kAuto) {
    k_scale = read_scale(a.k_scale_ptr, a.k_scale);
    v_scale = read_scale(a.v_scale_ptr, a.v_scale);
  }

  for (int item = threadIdx.x; item < a.num_kv_heads * chunks; item += kReshapeThreads) {
    const int h = item / chunks;
    const int c = item % chunks;
    const scalar_t* k_src = static_cast<const scalar_t*>(a.key) + token * a.key_token_stride +
                            h * a.key_head_stride + c * X;
    const scalar_t* v_src = static_cast<const scalar_t*>(a.value) +
                            token * a.value_token_stride + h * a.value_head_stride + c * X;
    cache_t* k_dst = static_cast<cache_t*>(a.key_cache) + block * a.k_block_stride +
                     h * a.k_head_stride + (static_cast<int64_t>(c) * a.block_size + offset) * X;
    cache_t* v_dst = static_cast<cache_t*>(a.value_cache) + block * a.v_block_stride +
                     h * a.v_head_stride + (static_cast<int64_t>(c) * X) * a.block_size + offset;
    if constexpr (KV == KvKind::kAuto) {
      // Same dtype in and out: copy bits (no float round trip that could touch NaN payloads).
      if constexpr (kAligned) {
        store16(k_dst, load16(k_src));
      } else {
#pragma unroll
        for (int e = 0; e < X; ++e) k_dst[e] = k_src[e];
      }
#pragma unroll
      for (int e = 0; e < X; ++e) v_dst[static_cast<int64_t>(e) * a.block_size] = v_src[e];
    } else {
      float kf[X];
      float vf[X];
      load_floats<scalar_t, X, kAligned>(k_src, kf);
      load_floats<scalar_t, X, kAligned>(v_src, vf);
      uint32_t words[4] = {0u, 0u, 0u, 0u};
#pragma unroll
      for (int e = 0; e < X; ++e) {
        const uint32_t q = ToCache<scalar_t, KV>::run(from_float<scalar_t>(kf[e]), k_scale);
        words[e / 4] |= q << (8 * (e % 4));
        v_dst[static_cast<int64_t>(e) * a.block_size] =
            ToCache<scalar_t, KV>::run(from_float<scalar_t>(vf[e]), v_scale);
      }
      store16(k_dst, make_uint4(words[0], words[1], words[2], words[3]));
    }
  }
}

template <typename scalar_t, KvKind KV>
Status launch_reshape(const ReshapeAndCacheArgs& a, bool aligned, cudaStream_t stream) {
  if (aligned) {
    reshape_and_cache_kernel<scalar_t, KV, true><<<a.num_tokens, kReshapeThreads, 0, stream>>>(a);
  } else {
    reshape_and_cache_kernel<scalar_t, KV, false><<<a.num_tokens, kReshapeThreads, 0, stream>>>(a);
  }
  return last_launch_status("reshape_and_cache");
}

template <typename scalar_t>
Status dispatch_reshape_kv(const ReshapeAndCacheArgs& a, bool aligned, cudaStream_t stream) {
  switch (a.kv) {
    case KvKind::kAuto: return launch_reshape<scalar_t, KvKind::kAuto>(a, aligned, stream);
    case KvKind::kFp8E4M3: return launch_reshape<scalar_t, KvKind::kFp8E4M3>(a, aligned, stream);
    case KvKind::kFp8E5M2: return launch_reshape<scalar_t, KvKind::kFp8E5M2>(a, aligned, stream);
  }
  return make_status(StatusCode::kInvalidArgument, "reshape_and_cache: unknown kv kind %d",
                     static_cast<int>(a.kv));
}

size_t dtype_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

bool aligned16(const void* p, int64_t stride_a, int64_t stride_b, size_t elem) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride_a * static_cast<int64_t>(elem)) % 16 == 0 &&
         (stride_b * static_cast<int64_t>(elem)) % 16 == 0;
}

// ---- copy_blocks -----------------------------------------------------------------------------

constexpr int kCopyThreads = 256;
constexpr int kMaxGridY = 65535;

__device__ __forceinline__ void copy_block_bytes(int64_t base, int64_t stride, int64_t bytes,
                                                 int64_t src, int64_t dst) {
  const uint4* from = reinterpret_cast<const uint4*>(base + src * stride);
  uint4* to = reinterpret_cast<uint4*>(base + dst * stride);
  const int n = static_cast<int>(bytes / 16);  // one block of one layer: far below 2^31
#pragma unroll 4
  for (int i = threadIdx.x; i < n; i += kCopyThreads) to[i] = from[i];
}

// grid (num_layers, min(num_pairs, 65535)): one CTA copies one pair in one layer, for the key
// cache and then the value cache; the y dimension strides over pairs beyond the grid limit.
__global__ void __launch_bounds__(kCopyThreads) copy_blocks_kernel(const CopyBlocksArgs a) {
  const int layer = blockIdx.x;
  const int64_t key_base = a.key_ptrs[layer];
  const int64_t value_base = a.value_ptrs[layer];
  for (int64_t pair = blockIdx.y; pair < a.num_pairs; pair += gridDim.y) {
    const int64_t src = a.pairs[2 * pair];
    const int64_t dst = a.pairs[2 * pair + 1];
    copy_block_bytes(key_base, a.k_block_stride_bytes, a.k_block_bytes, src, dst);
    copy_block_bytes(value_base, a.v_block_stride_bytes, a.v_block_bytes, src, dst);
  }
}

}  // namespace

Status reshape_and_cache(const ReshapeAndCacheArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0 || a.num_kv_heads == 0) return ok_status();
  const int x = a.kv == KvKind::kAuto ? 16 / static_cast<int>(dtype_size(a.dtype)) : 16;
  if (a.head_size % x != 0) {
    return make_status(StatusCode::kInvalidArgument,
                       "reshape_and_cache: head_size=%d is not a multiple of the key cache's "
                       "x=%d",
                       a.head_size, x);
  }
  const size_t elem = dtype_size(a.dtype);
  const bool aligned = aligned16(a.key, a.key_token_stride, a.key_head_stride, elem) &&
                       aligned16(a.value, a.value_token_stride, a.value_head_stride, elem);
  switch (a.dtype) {
    case DType::kFloat32: return dispatch_reshape_kv<float>(a, aligned, stream);
    case DType::kFloat16: return dispatch_reshape_kv<__half>(a, aligned, stream);
    case DType::kBFloat16: return dispatch_reshape_kv<__nv_bfloat16>(a, aligned, stream);
  }
  return make_status(StatusCode::kInvalidArgument, "reshape_and_cache: unknown dtype %d",
                     static_cast<int>(a.dtype));
}

Status copy_blocks(const CopyBlocksArgs& a, cudaStream_t stream) {
  if (a.num_layers == 0 || a.num_pairs == 0) return ok_status();
  if (a.k_block_bytes % 16 != 0 || a.v_block_bytes % 16 != 0 ||
      a.k_block_stride_bytes % 16 != 0 || a.v_block_stride_bytes % 16 != 0) {
    return make_status(StatusCode::kInvalidArgument,
                       "copy_blocks: block sizes and strides must be multiples of 16 bytes "
                       "(key %lld/%lld, value %lld/%lld)",
                       static_cast<long long>(a.k_block_bytes),
                       static_cast<long long>(a.k_block_stride_bytes),
                       static_cast<long long>(a.v_block_bytes),
                       static_cast<long long>(a.v_block_stride_bytes));
  }
  const int grid_y = a.num_pairs < kMaxGridY ? static_cast<int>(a.num_pairs) : kMaxGridY;
  copy_blocks_kernel<<<dim3(a.num_layers, grid_y), kCopyThreads, 0, stream>>>(a);
  return last_launch_status("copy_blocks");
}

Status swap_blocks(const char* src, char* dst, int64_t src_block_stride_bytes,
                   int64_t dst_block_stride_bytes, int64_t block_bytes, const int64_t* pairs,
                   int64_t num_pairs, cudaStream_t stream) {
  // Blocks stored back to back in both caches let a run of consecutive ids
  // (s, d), (s+1, d+1), ... travel as one copy: fewer, larger DMA transfers over PCIe.
  const bool mergeable =
      src_block_stride_bytes == block_bytes && dst_block_stride_bytes == block_bytes;
  int64_t i = 0;
  while (i < num_pairs) {
    const int64_t s = pairs[2 * i];
    const int64_t d = pairs[2 * i + 1];
    int64_t run = 1;
    while (mergeable && i + run < num_pairs && pairs[2 * (i + run)] == s + run &&
           pairs[2 * (i + run) + 1] == d + run) {
      ++run;
    }
    const cudaError_t err = cudaMemcpyAsync(dst + d * dst_block_stride_bytes,
                                            src + s * src_block_stride_bytes, run * block_bytes,
                                            cudaMemcpyDefault, stream);
    if (err != cudaSuccess) {
      return make_status(StatusCode::kCudaError,
                         "swap_blocks: cudaMemcpyAsync of blocks %lld -> %lld failed: %s",
                         static_cast<long long>(s), static_cast<long long>(d),
                         cudaGetErrorString(err));
    }
    i += run;
  }
  return ok_status();
}

}  // namespace kvp
