// Helpers shared by the torch binding's translation units: argument checks that name the
// argument, dtype/kind mapping, Status -> Python exception, torch's current stream.
//
// Only the binding_*.cpp files include this header; the kernels (.cu) never see torch.
#pragma once

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kvpager_cuda.h"

namespace kvp_torch {

inline void raise_if_failed(const kvp::Status& s) {
  if (s.code == kvp::StatusCode::kInvalidArgument) TORCH_CHECK_VALUE(false, s.message);
  TORCH_CHECK(s.code == kvp::StatusCode::kOk, s.message);
}

inline kvp::DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return kvp::DType::kFloat32;
    case at::kHalf: return kvp::DType::kFloat16;
    case at::kBFloat16: return kvp::DType::kBFloat16;
    default:
      TORCH_CHECK_VALUE(false, name, " must be float32, float16 or bfloat16, got ",
                        t.scalar_type());
  }
}

inline kvp::KvKind kv_kind_of(const std::string& kv_cache_dtype) {
  if (kv_cache_dtype == "auto") return kvp::KvKind::kAuto;
  if (kv_cache_dtype == "fp8" || kv_cache_dtype == "fp8_e4m3") return kvp::KvKind::kFp8E4M3;
  if (kv_cache_dtype == "fp8_e5m2") return kvp::KvKind::kFp8E5M2;
  TORCH_CHECK_VALUE(false, "kv_cache_dtype must be 'auto', 'fp8', 'fp8_e4m3' or 'fp8_e5m2', got '",
                    kv_cache_dtype, "'");
}

inline void check_on(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, ", got ", t.device());
}

inline void check_aligned(const at::Tensor& t, const char* name, std::initializer_list<int> dims) {
  const int64_t elem = static_cast<int64_t>(t.element_size());
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
                    " must start at a 16-byte aligned address (the kernels use 16-byte loads)");
  for (int d : dims) {
    TORCH_CHECK_VALUE((t.stride(d) * elem) % 16 == 0, name, ".stride(", d, ") = ", t.stride(d),
                      " elements is not a multiple of 16 bytes");
  }
}

// The key/value caches' layout (docs/architecture.md, "Cache layouts") with contiguous inner dimensions.
// Returns x.
inline int check_caches(const at::Tensor& key_cache, const at::Tensor& value_cache, int64_t head_size,
                 int64_t block_size, kvp::KvKind kv, const at::Tensor& activation,
                 const at::Device& device) {
  check_on(key_cache, "key_cache", device);
  check_on(value_cache, "value_cache", device);
  TORCH_CHECK_VALUE(key_cache.dim() == 5, "key_cache must be 5-D, got ", key_cache.sizes());
  TORCH_CHECK_VALUE(value_cache.dim() == 4, "value_cache must be 4-D, got ",
                    value_cache.sizes());
  TORCH_CHECK_VALUE(key_cache.scalar_type() == value_cache.scalar_type(),
                    "key_cache and value_cache must share a dtype");
  if (kv == kvp::KvKind::kAuto) {
    TORCH_CHECK_VALUE(key_cache.scalar_type() == activation.scalar_type(),
                      "kv_cache_dtype 'auto' needs caches of the activations' dtype ",
                      activation.scalar_type(), ", got ", key_cache.scalar_type());
  } else {
    TORCH_CHECK_VALUE(key_cache.element_size() == 1,
                      "an fp8 kv_cache_dtype needs 1-byte caches (uint8), got ",
                      key_cache.scalar_type());
  }
  const int64_t x = 16 / static_cast<int64_t>(key_cache.element_size());
  TORCH_CHECK_VALUE(key_cache.size(4) == x && key_cache.size(3) == block_size &&
                        key_cache.size(2) * x == head_size,
                    "key_cache must be [num_blocks, num_kv_heads, ", head_size / x, ", ",
                    block_size, ", ", x, "], got ", key_cache.sizes());
  TORCH_CHECK_VALUE(value_cache.size(2) == head_size && value_cache.size(3) == block_size,
                    "value_cache must be [num_blocks, num_kv_heads, ", head_size, ", ",
                    block_size, "], got ", value_cache.sizes());
  TORCH_CHECK_VALUE(key_cache.stride(4) == 1 && key_cache.stride(3) == x &&
                        key_cache.stride(2) == block_size * x,
                    "key_cache's last three dimensions must be contiguous, strides ",
                    key_cache.strides());
  TORCH_CHECK_VALUE(value_cache.stride(3) == 1 && value_cache.stride(2) == block_size,
                    "value_cache's last two dimensions must be contiguous, strides ",
                    value_cache.strides());
  check_aligned(key_cache, "key_cache", {0, 1});
  check_aligned(value_cache, "value_cache", {0, 1});
  return static_cast<int>(x);
}

struct ScaleArg {
  const float* ptr;
  float value;
};

inline ScaleArg scale_arg(const std::optional<at::Tensor>& tensor, double value, const char* name,
                   const at::Device& device) {
  if (!tensor.has_value()) return {nullptr, static_cast<float>(value)};
  TORCH_CHECK_VALUE(tensor->scalar_type() == at::kFloat && tensor->numel() == 1, name,
                    " must be a float or a 0-d float32 tensor, got ", tensor->scalar_type(),
                    " of shape ", tensor->sizes());
  check_on(*tensor, name, device);
  return {tensor->data_ptr<float>(), static_cast<float>(value)};
}

inline cudaStream_t stream_of(const at::Device& device) {
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
}

// The op entry points (binding_attention.cpp, binding_cache_ops.cpp), registered by binding.cpp.
void paged_attention_v1(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                        const at::Tensor& value_cache, int64_t num_kv_heads, double scale,
                        const at::Tensor& block_tables, const at::Tensor& seq_lens,
                        int64_t block_size, int64_t max_seq_len,
                        const std::optional<at::Tensor>& alibi_slopes,
                        const std::string& kv_cache_dtype,
                        const std::optional<at::Tensor>& k_scale_tensor, double k_scale,
                        const std::optional<at::Tensor>& v_scale_tensor, double v_scale,
                        int64_t tp_rank, int64_t blocksparse_local_blocks,
                        int64_t blocksparse_vert_stride, int64_t blocksparse_block_size,
                        int64_t blocksparse_head_sliding_step, int64_t sliding_window,
                        const std::optional<at::Tensor>& sinks);
void paged_attention_v2(at::Tensor& out, const at::Tensor& exp_sums, const at::Tensor& max_logits,
                        const at::Tensor& tmp_out, const at::Tensor& query,
                        const at::Tensor& key_cache, const at::Tensor& value_cache,
                        int64_t num_kv_heads, double scale, const at::Tensor& block_tables,
                        const at::Tensor& seq_lens, int64_t block_size, int64_t max_seq_len,
                        const std::optional<at::Tensor>& alibi_slopes,
                        const std::string& kv_cache_dtype,
                        const std::optional<at::Tensor>& k_scale_tensor, double k_scale,
                        const std::optional<at::Tensor>& v_scale_tensor, double v_scale,
                        int64_t tp_rank, int64_t blocksparse_local_blocks,
                        int64_t blocksparse_vert_stride, int64_t blocksparse_block_size,
                        int64_t blocksparse_head_sliding_step, int64_t sliding_window,
                        const std::optional<at::Tensor>& sinks);
void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                       at::Tensor& value_cache, const at::Tensor& slot_mapping,
                       const std::string& kv_cache_dtype,
                       const std::optional<at::Tensor>& k_scale_tensor, double k_scale,
                       const std::optional<at::Tensor>& v_scale_tensor, double v_scale);
void copy_blocks(const std::vector<at::Tensor>& key_caches,
                 const std::vector<at::Tensor>& value_caches, const at::Tensor& block_mapping);
void swap_blocks(const at::Tensor& src, at::Tensor& dst, const at::Tensor& block_mapping);
void merge_attn_states(at::Tensor& output, const at::Tensor& prefix_output,
                       const at::Tensor& prefix_lse, const at::Tensor& suffix_output,
                       const at::Tensor& suffix_lse, const std::optional<at::Tensor>& output_lse);

}  // namespace kvp_torch
