// Thin torch binding over the plain C++ launch functions of kvpager_cuda.h.
//
// kvpager.ops has validated shapes, dtypes and block ids before a call gets here; this file
// checks only what the kernels assume on top of that (innermost dimensions contiguous, 16-byte
// alignment for vector loads, one device) and turns a Status into ValueError (the input can
// never run) or RuntimeError (CUDA failed). Everything is enqueued on torch's current stream of
// the tensors' device, so the ops compose with torch's stream semantics and CUDA graphs.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "kvpager_cuda.h"

namespace {

constexpr int kPartitionSize = 512;

void raise_if_failed(const kvp::Status& s) {
  if (s.code == kvp::StatusCode::kInvalidArgument) TORCH_CHECK_VALUE(false, s.message);
  TORCH_CHECK(s.code == kvp::StatusCode::kOk, s.message);
}

kvp::DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return kvp::DType::kFloat32;
    case at::kHalf: return kvp::DType::kFloat16;
    case at::kBFloat16: return kvp::DType::kBFloat16;
    default:
      TORCH_CHECK_VALUE(false, name, " must be float32, float16 or bfloat16, got ",
                        t.scalar_type());
  }
}

kvp::KvKind kv_kind_of(const std::string& kv_cache_dtype) {
  if (kv_cache_dtype == "auto") return kvp::KvKind::kAuto;
  if (kv_cache_dtype == "fp8" || kv_cache_dtype == "fp8_e4m3") return kvp::KvKind::kFp8E4M3;
  if (kv_cache_dtype == "fp8_e5m2") return kvp::KvKind::kFp8E5M2;
  TORCH_CHECK_VALUE(false, "kv_cache_dtype must be 'auto', 'fp8', 'fp8_e4m3' or 'fp8_e5m2', got '",
                    kv_cache_dtype, "'");
}

void check_on(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, ", got ", t.device());
}

void check_aligned(const at::Tensor& t, const char* name, std::initializer_list<int> dims) {
  const int64_t elem = static_cast<int64_t>(t.element_size());
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
                    " must start at a 16-byte aligned address (the kernels use 16-byte loads)");
  for (int d : dims) {
    TORCH_CHECK_VALUE((t.stride(d) * elem) % 16 == 0, name, ".stride(", d, ") = ", t.stride(d),
                      " elements is not a multiple of 16 bytes");
  }
}

// The key/value caches' layout (DESIGN.md, "Cache layouts") with contiguous inner dimensions.
// Returns x.
int check_caches(const at::Tensor& key_cache, const at::Tensor& value_cache, int64_t head_size,
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

ScaleArg scale_arg(const std::optional<at::Tensor>& tensor, double value, const char* name,
                   const at::Device& device) {
  if (!tensor.has_value()) return {nullptr, static_cast<float>(value)};
  TORCH_CHECK_VALUE(tensor->scalar_type() == at::kFloat && tensor->numel() == 1, name,
                    " must be a float or a 0-d float32 tensor, got ", tensor->scalar_type(),
                    " of shape ", tensor->sizes());
  check_on(*tensor, name, device);
  return {tensor->data_ptr<float>(), static_cast<float>(value)};
}

cudaStream_t stream_of(const at::Device& device) {
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
}

void paged_attention_impl(at::Tensor& out, const std::optional<at::Tensor>& exp_sums,
                          const std::optional<at::Tensor>& max_logits,
                          const std::optional<at::Tensor>& tmp_out, const at::Tensor& query,
                          const at::Tensor& key_cache, const at::Tensor& value_cache,
                          int64_t num_kv_heads, double scale, const at::Tensor& block_tables,
                          const at::Tensor& seq_lens, int64_t block_size, int64_t max_seq_len,
                          const std::optional<at::Tensor>& alibi_slopes,
                          const std::string& kv_cache_dtype,
                          const std::optional<at::Tensor>& k_scale_tensor, double k_scale,
                          const std::optional<at::Tensor>& v_scale_tensor, double v_scale,
                          int64_t tp_rank, int64_t blocksparse_local_blocks,
                          int64_t blocksparse_vert_stride, int64_t blocksparse_block_size,
                          int64_t blocksparse_head_sliding_step, bool v2) {
  const at::Device device = query.device();
  TORCH_CHECK_VALUE(device.is_cuda(), "query must be a CUDA tensor, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  const kvp::KvKind kv = kv_kind_of(kv_cache_dtype);
  const kvp::DType dtype = dtype_of(query, "query");
  TORCH_CHECK_VALUE(query.dim() == 3 && query.stride(2) == 1,
                    "query must be [num_seqs, num_heads, head_size] with a contiguous last "
                    "dimension");
  check_aligned(query, "query", {0, 1});
  check_on(out, "out", device);
  TORCH_CHECK_VALUE(out.scalar_type() == query.scalar_type() && out.sizes() == query.sizes() &&
                        out.stride(2) == 1,
                    "out must match query's shape and dtype with a contiguous last dimension");
  const int64_t num_seqs = query.size(0);
  const int64_t num_heads = query.size(1);
  const int64_t head_size = query.size(2);
  TORCH_CHECK_VALUE(kvp::attention_head_size_supported(static_cast<int>(head_size)),
                    "head_size ", head_size, " has no CUDA attention kernel (compiled: 32, 64, "
                    "80, 96, 112, 120, 128, 192, 256)");
  TORCH_CHECK_VALUE(kvp::attention_block_size_supported(static_cast<int>(block_size)),
                    "block_size ", block_size, " has no CUDA attention kernel (compiled: 8, 16, "
                    "32)");
  check_caches(key_cache, value_cache, head_size, block_size, kv, query, device);
  check_on(block_tables, "block_tables", device);
  check_on(seq_lens, "seq_lens", device);
  TORCH_CHECK_VALUE(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 &&
                        block_tables.stride(1) == 1,
                    "block_tables must be int32 [num_seqs, max_blocks_per_seq], row-contiguous");
  TORCH_CHECK_VALUE(seq_lens.scalar_type() == at::kInt && seq_lens.is_contiguous() &&
                        seq_lens.numel() == num_seqs,
                    "seq_lens must be a contiguous int32 [num_seqs]");
  const float* alibi = nullptr;
  if (alibi_slopes.has_value()) {
    check_on(*alibi_slopes, "alibi_slopes", device);
    TORCH_CHECK_VALUE(alibi_slopes->scalar_type() == at::kFloat &&
                          alibi_slopes->is_contiguous() && alibi_slopes->numel() == num_heads,
                      "alibi_slopes must be a contiguous float32 [num_heads]");
    alibi = alibi_slopes->data_ptr<float>();
  }
  const ScaleArg ks = scale_arg(k_scale_tensor, k_scale, "k_scale", device);
  const ScaleArg vs = scale_arg(v_scale_tensor, v_scale, "v_scale", device);

  kvp::PagedAttentionArgs a{};
  a.out = out.data_ptr();
  a.out_seq_stride = out.stride(0);
  a.out_head_stride = out.stride(1);
  a.query = query.data_ptr();
  a.q_seq_stride = query.stride(0);
  a.q_head_stride = query.stride(1);
  a.key_cache = key_cache.data_ptr();
  a.k_block_stride = key_cache.stride(0);
  a.k_head_stride = key_cache.stride(1);
  a.value_cache = value_cache.data_ptr();
  a.v_block_stride = value_cache.stride(0);
  a.v_head_stride = value_cache.stride(1);
  a.block_tables = block_tables.data_ptr<int32_t>();
  a.bt_stride = block_tables.stride(0);
  a.seq_lens = seq_lens.data_ptr<int32_t>();
  a.alibi_slopes = alibi;
  a.num_seqs = static_cast<int>(num_seqs);
  a.num_heads = static_cast<int>(num_heads);
  a.num_kv_heads = static_cast<int>(num_kv_heads);
  a.head_size = static_cast<int>(head_size);
  a.block_size = static_cast<int>(block_size);
  a.max_seq_len = static_cast<int>(max_seq_len);
  a.partition_size = v2 ? kPartitionSize : 0;
  a.scale = static_cast<float>(scale);
  a.dtype = dtype;
  a.kv = kv;
  a.k_scale_ptr = ks.ptr;
  a.k_scale = ks.value;
  a.v_scale_ptr = vs.ptr;
  a.v_scale = vs.value;
  a.tp_rank = static_cast<int>(tp_rank);
  a.bs_local_blocks = static_cast<int>(blocksparse_local_blocks);
  a.bs_vert_stride = static_cast<int>(blocksparse_vert_stride);
  a.bs_block_size = static_cast<int>(blocksparse_block_size);
  a.bs_head_sliding_step = static_cast<int>(blocksparse_head_sliding_step);

  if (v2) {
    TORCH_CHECK_VALUE(exp_sums.has_value() && max_logits.has_value() && tmp_out.has_value(),
                      "paged_attention_v2 needs exp_sums, max_logits and tmp_out");
    const int64_t parts = (max_seq_len + kPartitionSize - 1) / kPartitionSize;
    for (const auto* pair : {&exp_sums, &max_logits}) {
      const at::Tensor& t = **pair;
      const char* name = pair == &exp_sums ? "exp_sums" : "max_logits";
      check_on(t, name, device);
      TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 3 &&
                            t.size(0) == num_seqs && t.size(1) == num_heads && t.size(2) >= parts,
                        name, " must be a contiguous float32 [", num_seqs, ", ", num_heads,
                        ", >= ", parts, "], got ", t.sizes());
    }
    check_on(*tmp_out, "tmp_out", device);
    TORCH_CHECK_VALUE(tmp_out->scalar_type() == query.scalar_type() && tmp_out->is_contiguous() &&
                          tmp_out->dim() == 4 && tmp_out->size(0) == num_seqs &&
                          tmp_out->size(1) == num_heads &&
                          tmp_out->size(2) == exp_sums->size(2) && tmp_out->size(3) == head_size,
                      "tmp_out must be a contiguous [num_seqs, num_heads, max_num_partitions, "
                      "head_size] of query's dtype, got ",
                      tmp_out->sizes());
    a.exp_sums = exp_sums->data_ptr<float>();
    a.max_logits = max_logits->data_ptr<float>();
    a.tmp_out = tmp_out->data_ptr();
    a.max_num_partitions = static_cast<int>(exp_sums->size(2));
  }
  const cudaStream_t stream = stream_of(device);
  raise_if_failed(kvp::paged_attention(a, stream));
  if (v2) raise_if_failed(kvp::paged_attention_reduce(a, stream));
}

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
                        int64_t blocksparse_head_sliding_step) {
  paged_attention_impl(out, std::nullopt, std::nullopt, std::nullopt, query, key_cache,
                       value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
                       max_seq_len, alibi_slopes, kv_cache_dtype, k_scale_tensor, k_scale,
                       v_scale_tensor, v_scale, tp_rank, blocksparse_local_blocks,
                       blocksparse_vert_stride, blocksparse_block_size,
                       blocksparse_head_sliding_step, /*v2=*/false);
}

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
                        int64_t blocksparse_head_sliding_step) {
  paged_attention_impl(out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache,
                       num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len,
                       alibi_slopes, kv_cache_dtype, k_scale_tensor, k_scale, v_scale_tensor,
                       v_scale, tp_rank, blocksparse_local_blocks, blocksparse_vert_stride,
                       blocksparse_block_size, blocksparse_head_sliding_step, /*v2=*/true);
}

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

// Byte size of one block and byte stride between blocks; a block must be one contiguous run.
std::pair<int64_t, int64_t> block_geometry(const at::Tensor& cache, const char* name) {
  TORCH_CHECK_VALUE(cache.dim() >= 2 && cache.size(0) > 0, name, " must be [num_blocks, ...]");
  TORCH_CHECK_VALUE(cache[0].is_contiguous(), name,
                    ": each block must be contiguous in memory, strides ", cache.strides());
  const int64_t elem = static_cast<int64_t>(cache.element_size());
  return {cache[0].numel() * elem, cache.stride(0) * elem};
}

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "kvpager CUDA kernels (paged attention v1/v2 and cache ops); see kvpager.ops";
  m.def("paged_attention_v1", &paged_attention_v1, py::arg("out"), py::arg("query"),
        py::arg("key_cache"), py::arg("value_cache"), py::arg("num_kv_heads"), py::arg("scale"),
        py::arg("block_tables"), py::arg("seq_lens"), py::arg("block_size"),
        py::arg("max_seq_len"), py::arg("alibi_slopes"), py::arg("kv_cache_dtype"),
        py::arg("k_scale_tensor"), py::arg("k_scale"), py::arg("v_scale_tensor"),
        py::arg("v_scale"), py::arg("tp_rank"), py::arg("blocksparse_local_blocks"),
        py::arg("blocksparse_vert_stride"), py::arg("blocksparse_block_size"),
        py::arg("blocksparse_head_sliding_step"));
  m.def("paged_attention_v2", &paged_attention_v2, py::arg("out"), py::arg("exp_sums"),
        py::arg("max_logits"), py::arg("tmp_out"), py::arg("query"), py::arg("key_cache"),
        py::arg("value_cache"), py::arg("num_kv_heads"), py::arg("scale"),
        py::arg("block_tables"), py::arg("seq_lens"), py::arg("block_size"),
        py::arg("max_seq_len"), py::arg("alibi_slopes"), py::arg("kv_cache_dtype"),
        py::arg("k_scale_tensor"), py::arg("k_scale"), py::arg("v_scale_tensor"),
        py::arg("v_scale"), py::arg("tp_rank"), py::arg("blocksparse_local_blocks"),
        py::arg("blocksparse_vert_stride"), py::arg("blocksparse_block_size"),
        py::arg("blocksparse_head_sliding_step"));
  m.def("reshape_and_cache", &reshape_and_cache, py::arg("key"), py::arg("value"),
        py::arg("key_cache"), py::arg("value_cache"), py::arg("slot_mapping"),
        py::arg("kv_cache_dtype"), py::arg("k_scale_tensor"), py::arg("k_scale"),
        py::arg("v_scale_tensor"), py::arg("v_scale"));
  m.def("copy_blocks", &copy_blocks, py::arg("key_caches"), py::arg("value_caches"),
        py::arg("block_mapping"));
  m.def("swap_blocks", &swap_blocks, py::arg("src"), py::arg("dst"), py::arg("block_mapping"));
  m.def("merge_attn_states", &merge_attn_states, py::arg("output"), py::arg("prefix_output"),
        py::arg("prefix_lse"), py::arg("suffix_output"), py::arg("suffix_lse"),
        py::arg("output_lse"));
  m.attr("partition_size") = kPartitionSize;
}
