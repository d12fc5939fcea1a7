// torch binding of the cache ops and merge_attn_states.
#include "binding_util.h"

namespace kvp_torch {

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                       at::Tensor& value_cache, const at::Tensor& slot_mapping,
                       const std::string& kv_cache_dtype,
                       const std::optional<at::Tensor>& k_scale_tensor, double k_scale,
                       const std::optional<at::Tensor>& v_scale_tensor, double v_scale) {
  const at::Device device = key.device();
  TORCH_CHECK_VALUE(device.is_cuda(), "key must be a CUDA tensor, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  const kvp::KvKind kv = kv_kind_of(kv_cache_dtype);
  const kvp::DType dtype = dtype_of(key, "key");
  check_on(value, "value", device);
  check_on(slot_mapping, "slot_mapping", device);
  TORCH_CHECK_VALUE(key.dim() == 3 && key.stride(2) == 1 && value.dim() == 3 &&
                        value.stride(2) == 1 && value.sizes() == key.sizes() &&
                        value.scalar_type() == key.scalar_type(),
                    "key and value must be [num_tokens, num_kv_heads, head_size] of one dtype "
                    "with a contiguous last dimension");
  TORCH_CHECK_VALUE(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous() &&
                        slot_mapping.dim() == 1 && slot_mapping.size(0) <= key.size(0),
                    "slot_mapping must be a contiguous int64 [num_tokens]");
  const int64_t head_size = key.size(2);
  const int64_t block_size = value_cache.dim() == 4 ? value_cache.size(3) : 0;
  check_caches(key_cache, value_cache, head_size, block_size, kv, key, device);
  const ScaleArg ks = scale_arg(k_scale_tensor, k_scale, "k_scale", device);
  const ScaleArg vs = scale_arg(v_scale_tensor, v_scale, "v_scale", device);

  kvp::ReshapeAndCacheArgs a{};
  a.key = key.data_ptr();
  a.key_token_stride = key.stride(0);
  a.key_head_stride = key.stride(1);
  a.value = value.data_ptr();
  a.value_token_stride = value.stride(0);
  a.value_head_stride = value.stride(1);
  a.key_cache = key_cache.data_ptr();
  a.k_block_stride = key_cache.stride(0);
  a.k_head_stride = key_cache.stride(1);
  a.value_cache = value_cache.data_ptr();
  a.v_block_stride = value_cache.stride(0);
  a.v_head_stride = value_cache.stride(1);
  a.slot_mapping = slot_mapping.data_ptr<int64_t>();
  a.num_tokens = static_cast<int>(slot_mapping.size(0));
  a.num_kv_heads = static_cast<int>(key.size(1));
  a.head_size = static_cast<int>(head_size);
  a.block_size = static_cast<int>(block_size);
  a.dtype = dtype;
  a.kv = kv;
  a.k_scale_ptr = ks.ptr;
  a.k_scale = ks.value;
  a.v_scale_ptr = vs.ptr;
  a.v_scale = vs.value;
  raise_if_failed(kvp::reshape_and_cache(a, stream_of(device)));
}

namespace {

// Byte size of one block and byte stride between blocks; a block must be one contiguous run.
std::pair<int64_t, int64_t> block_geometry(const at::Tensor& cache, const char* name) {
  TORCH_CHECK_VALUE(cache.dim() >= 2 && cache.size(0) > 0, name, " must be [num_blocks, ...]");
  TORCH_CHECK_VALUE(cache[0].is_contiguous(), name,
                    ": each block must be contiguous in memory, strides ", cache.strides());
  const int64_t elem = static_cast<int64_t>(cache.element_size());
  return {cache[0].numel() * elem, cache.stride(0) * elem};
}

}  // namespace

void copy_blocks(const std::vector<at::Tensor>& key_caches,
                 const std::vector<at::Tensor>& value_caches, const at::Tensor& block_mapping) {
  TORCH_CHECK_VALUE(key_caches.size() == value_caches.size(),
                    "key_caches and value_caches must have one entry per layer");
  if (key_caches.empty() || block_mapping.numel() == 0) return;
  const at::Device device = key_caches[0].device();
  TORCH_CHECK_VALUE(device.is_cuda(), "key_caches must be CUDA tensors, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  TORCH_CHECK_VALUE(block_mapping.scalar_type() == at::kLong && block_mapping.dim() == 2 &&
                        block_mapping.size(1) == 2,
                    "block_mapping must be int64 [num_pairs, 2]");
  const auto key_geo = block_geometry(key_caches[0], "key_caches[0]");
  const auto value_geo = block_geometry(value_caches[0], "value_caches[0]");
  const int64_t num_layers = static_cast<int64_t>(key_caches.size());
  std::vector<int64_t> key_ptrs(num_layers);
  std::vector<int64_t> value_ptrs(num_layers);
  for (int64_t i = 0; i < num_layers; ++i) {
    const std::string kname = "key_caches[" + std::to_string(i) + "]";
    const std::string vname = "value_caches[" + std::to_string(i) + "]";
    check_on(key_caches[i], kname.c_str(), device);
    check_on(value_caches[i], vname.c_str(), device);
    TORCH_CHECK_VALUE(block_geometry(key_caches[i], kname.c_str()) == key_geo &&
                          block_geometry(value_caches[i], vname.c_str()) == value_geo,
                      "every layer's caches must share block size and stride (layer ", i, ")");
    check_aligned(key_caches[i], kname.c_str(), {});
    check_aligned(value_caches[i], vname.c_str(), {});
    key_ptrs[i] = reinterpret_cast<int64_t>(key_caches[i].data_ptr());
    value_ptrs[i] = reinterpret_cast<int64_t>(value_caches[i].data_ptr());
  }
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  // Host -> device copies of two small pointer arrays, on the current stream; the kernel that
  // reads them follows on the same stream.
  const at::Tensor key_ptrs_dev =
      at::from_blob(key_ptrs.data(), {num_layers}, long_opts).to(device);
  const at::Tensor value_ptrs_dev =
      at::from_blob(value_ptrs.data(), {num_layers}, long_opts).to(device);
  const at::Tensor pairs = block_mapping.to(device).contiguous();

  kvp::CopyBlocksArgs a{};
  a.key_ptrs = key_ptrs_dev.data_ptr<int64_t>();
  a.value_ptrs = value_ptrs_dev.data_ptr<int64_t>();
  a.pairs = pairs.data_ptr<int64_t>();
  a.num_layers = static_cast<int>(num_layers);
  a.num_pairs = pairs.size(0);
  a.k_block_bytes = key_geo.first;
  a.k_block_stride_bytes = key_geo.second;
  a.v_block_bytes = value_geo.first;
  a.v_block_stride_bytes = value_geo.second;
  raise_if_failed(kvp::copy_blocks(a, stream_of(device)));
}

void swap_blocks(const at::Tensor& src, at::Tensor& dst, const at::Tensor& block_mapping) {
  TORCH_CHECK_VALUE(src.is_cuda() || dst.is_cuda(),
                    "swap_blocks needs src or dst on a CUDA device, got ", src.device(), " and ",
                    dst.device());
  const at::Device device = src.is_cuda() ? src.device() : dst.device();
  const c10::cuda::CUDAGuard guard(device);
  TORCH_CHECK_VALUE(src.element_size() == dst.element_size() && src.dim() == dst.dim(),
                    "src and dst must have the same layout");
  TORCH_CHECK_VALUE(block_mapping.scalar_type() == at::kLong && block_mapping.dim() == 2 &&
                        block_mapping.size(1) == 2,
                    "block_mapping must be int64 [num_pairs, 2]");
  if (block_mapping.numel() == 0) return;
  const auto src_geo = block_geometry(src, "src");
  const auto dst_geo = block_geometry(dst, "dst");
  TORCH_CHECK_VALUE(src_geo.first == dst_geo.first, "src and dst blocks differ in size (",
                    src_geo.first, " vs ", dst_geo.first, " bytes)");
  // The ids are read on the host to issue the copies; a CUDA mapping costs one sync here.
  const at::Tensor pairs = block_mapping.to(at::kCPU).contiguous();
  raise_if_failed(kvp::swap_blocks(static_cast<const char*>(src.data_ptr()),
                                   static_cast<char*>(dst.data_ptr()), src_geo.second,
                                   dst_geo.second, src_geo.first, pairs.data_ptr<int64_t>(),
                                   pairs.size(0), stream_of(device)));
}

void merge_attn_states(at::Tensor& output, const at::Tensor& prefix_output,
                       const at::Tensor& prefix_lse, const at::Tensor& suffix_output,
                       const at::Tensor& suffix_lse,
                       const std::optional<at::Tensor>& output_lse) {
  const at::Device device = output.device();
  TORCH_CHECK_VALUE(device.is_cuda(), "output must be a CUDA tensor, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  const kvp::DType dtype = dtype_of(output, "output");
  for (const auto* t : {&prefix_output, &suffix_output}) {
    const char* name = t == &prefix_output ? "prefix_output" : "suffix_output";
    check_on(*t, name, device);
    TORCH_CHECK_VALUE(t->scalar_type() == output.scalar_type() && t->sizes() == output.sizes() &&
                          t->stride(2) == 1,
                      name, " must match output's shape and dtype, last dimension contiguous");
  }
  TORCH_CHECK_VALUE(output.dim() == 3 && output.stride(2) == 1,
                    "output must be [num_tokens, num_heads, head_size], last dim contiguous");
  const int64_t num_tokens = output.size(0);
  const int64_t num_heads = output.size(1);
  for (const auto* t : {&prefix_lse, &suffix_lse}) {
    const char* name = t == &prefix_lse ? "prefix_lse" : "suffix_lse";
    check_on(*t, name, device);
    TORCH_CHECK_VALUE(t->scalar_type() == at::kFloat && t->dim() == 2 &&
                          t->size(0) == num_heads && t->size(1) == num_tokens,
                      name, " must be float32 [num_heads, num_tokens]");
  }
  kvp::MergeAttnStatesArgs a{};
  a.output = output.data_ptr();
  a.out_token_stride = output.stride(0);
  a.out_head_stride = output.stride(1);
  a.prefix_output = prefix_output.data_ptr();
  a.p_token_stride = prefix_output.stride(0);
  a.p_head_stride = prefix_output.stride(1);
  a.suffix_output = suffix_output.data_ptr();
  a.s_token_stride = suffix_output.stride(0);
  a.s_head_stride = suffix_output.stride(1);
  a.prefix_lse = prefix_lse.data_ptr<float>();
  a.p_lse_head_stride = prefix_lse.stride(0);
  a.p_lse_token_stride = prefix_lse.stride(1);
  a.suffix_lse = suffix_lse.data_ptr<float>();
  a.s_lse_head_stride = suffix_lse.stride(0);
  a.s_lse_token_stride = suffix_lse.stride(1);
  if (output_lse.has_value()) {
    check_on(*output_lse, "output_lse", device);
    TORCH_CHECK_VALUE(output_lse->scalar_type() == at::kFloat && output_lse->dim() == 2 &&
                          output_lse->size(0) == num_heads && output_lse->size(1) == num_tokens,
                      "output_lse must be float32 [num_heads, num_tokens]");
    a.output_lse = output_lse->data_ptr<float>();
    a.o_lse_head_stride = output_lse->stride(0);
    a.o_lse_token_stride = output_lse->stride(1);
  }
  a.num_tokens = static_cast<int>(num_tokens);
  a.num_heads = static_cast<int>(num_heads);
  a.head_size = static_cast<int>(output.size(2));
  a.dtype = dtype;
  raise_if_failed(kvp::merge_attn_states(a, stream_of(device)));
}

}  // namespace kvp_torch
