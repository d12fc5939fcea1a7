// Device helpers shared by every kvpager kernel: dtype traits, 16-byte packed loads converted
// to float, FP8 (de)quantization and warp / block reductions.
//
// All arithmetic goes through float: fp16/bf16/fp8 values are widened on load and rounded once
// on store, so accumulation is FP32 everywhere and the kernels do not depend on the
// __CUDA_NO_HALF_OPERATORS__ family of defines that torch adds to nvcc's command line.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "kvpager_cuda.h"

namespace kvp {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- dtype traits ----------------------------------------------------------------------------

template <typename scalar_t, KvKind KV>
struct CacheOf {
  using type = scalar_t;
};
template <typename scalar_t>
struct CacheOf<scalar_t, KvKind::kFp8E4M3> {
  using type = uint8_t;
};
template <typename scalar_t>
struct CacheOf<scalar_t, KvKind::kFp8E5M2> {
  using type = uint8_t;
};

template <KvKind KV>
struct Fp8Interp;
template <>
struct Fp8Interp<KvKind::kFp8E4M3> {
  static constexpr __nv_fp8_interpretation_t value = __NV_E4M3;
};
template <>
struct Fp8Interp<KvKind::kFp8E5M2> {
  static constexpr __nv_fp8_interpretation_t value = __NV_E5M2;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// ---- 16-byte packs ---------------------------------------------------------------------------

// One 16-byte global load. The caller guarantees 16-byte alignment (the binding checks base
// pointers and strides), which is what lets the compiler emit a single LDG.128.
template <typename T>
__device__ __forceinline__ uint4 load16(const T* ptr) {
  return *reinterpret_cast<const uint4*>(ptr);
}
template <typename T>
__device__ __forceinline__ void store16(T* ptr, const uint4& v) {
  *reinterpret_cast<uint4*>(ptr) = v;
}

// Widen one 16-byte pack of cache (or activation) elements to floats.
// kElems = 16 / sizeof(element): 4 fp32, 8 fp16/bf16, 16 fp8.
template <typename cache_t, KvKind KV>
struct Unpack16;

template <KvKind KV>
struct Unpack16<float, KV> {
  static constexpr int kElems = 4;
  __device__ __forceinline__ static void run(const uint4& raw, float* out) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  }
};

template <KvKind KV>
struct Unpack16<__half, KV> {
  static constexpr int kElems = 8;
  __device__ __forceinline__ static void run(const uint4& raw, float* out) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2_raw h;
      h.x = static_cast<unsigned short>(words[i] & 0xffffu);
      h.y = static_cast<unsigned short>(words[i] >> 16);
      const float2 f = __half22float2(__half2(h));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

template <KvKind KV>
struct Unpack16<__nv_bfloat16, KV> {
  static constexpr int kElems = 8;
  __device__ __forceinline__ static void run(const uint4& raw, float* out) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      // bf16 is the top half of an fp32: widening is a shift, exact.
      out[2 * i] = __uint_as_float(words[i] << 16);
      out[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  }
};

template <KvKind KV>
struct Unpack16<uint8_t, KV> {
  static constexpr int kElems = 16;
  __device__ __forceinline__ static void run(const uint4& raw, float* out) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        // Two FP8 values at a time: one cvt.f16x2 instruction on sm_89+, exact either way
        // because every e4m3/e5m2 value is representable in fp16.
        const auto pair = static_cast<__nv_fp8x2_storage_t>((words[i] >> (16 * j)) & 0xffffu);
        const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, Fp8Interp<KV>::value);
        const float2 f = __half22float2(__half2(h));
        out[4 * i + 2 * j] = f.x;
        out[4 * i + 2 * j + 1] = f.y;
      }
    }
  }
};

// ---- cache element conversion (reshape_and_cache) -------------------------------------------

// Activation element -> cache element. "auto" copies bits; FP8 stores quantize(x / scale) with
// IEEE division (the build never uses --use_fast_math) and round-to-nearest-even, saturating
// to the largest finite value.
template <typename scalar_t, KvKind KV>
struct ToCache {
  __device__ __forceinline__ static scalar_t run(scalar_t x, float /*scale*/) { return x; }
};
template <typename scalar_t>
struct ToCache<scalar_t, KvKind::kFp8E4M3> {
  __device__ __forceinline__ static uint8_t run(scalar_t x, float scale) {
    return __nv_cvt_float_to_fp8(to_float(x) / scale, __NV_SATFINITE, __NV_E4M3);
  }
};
template <typename scalar_t>
struct ToCache<scalar_t, KvKind::kFp8E5M2> {
  __device__ __forceinline__ static uint8_t run(scalar_t x, float scale) {
    return __nv_cvt_float_to_fp8(to_float(x) / scale, __NV_SATFINITE, __NV_E5M2);
  }
};

__device__ __forceinline__ float read_scale(const float* ptr, float value) {
  return ptr != nullptr ? *ptr : value;
}

// ---- reductions ------------------------------------------------------------------------------

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int m = kWarpSize / 2; m >= 1; m /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, m));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = kWarpSize / 2; m >= 1; m /= 2) v += __shfl_xor_sync(kFullMask, v, m);
  return v;
}

// Block-wide reductions: warp shuffle first, then one value per warp through `scratch`
// (kWarps floats of shared memory that no other reduction uses concurrently). Every thread of
// the block must call them; every thread gets the result.
template <int kWarps>
__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kWarps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

template <int kWarps>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kWarps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

// ---- host-side status helpers ----------------------------------------------------------------

Status make_status(StatusCode code, const char* fmt, ...);
Status last_launch_status(const char* what);

}  // namespace kvp
