// torch binding of paged attention v1 / v2 (checks on top of kvpager.ops' validation, then
// the plain launch functions of kvpager_cuda.h on torch's current stream).
#include "binding_util.h"

namespace kvp_torch {

namespace {

using kvp::kPartitionSize;

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
                          int64_t blocksparse_head_sliding_step, int64_t sliding_window,
                          const std::optional<at::Tensor>& sinks, bool v2) {
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
  TORCH_CHECK_VALUE(sliding_window >= 0 && sliding_window <= INT32_MAX,
                    "sliding_window must be 0 (none) or a positive int32, got ", sliding_window);
  const float* sink_ptr = nullptr;
  if (sinks.has_value()) {
    check_on(*sinks, "sinks", device);
    TORCH_CHECK_VALUE(sinks->scalar_type() == at::kFloat && sinks->is_contiguous() &&
                          sinks->numel() == num_heads,
                      "sinks must be a contiguous float32 [num_heads]");
    sink_ptr = sinks->data_ptr<float>();
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
  a.sliding_window = static_cast<int>(sliding_window);
  a.sinks = sink_ptr;

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

}  // namespace

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
                        const std::optional<at::Tensor>& sinks) {
  paged_attention_impl(out, std::nullopt, std::nullopt, std::nullopt, query, key_cache,
                       value_cache, num_kv_heads, scale, block_tables, seq_lens, block_size,
                       max_seq_len, alibi_slopes, kv_cache_dtype, k_scale_tensor, k_scale,
                       v_scale_tensor, v_scale, tp_rank, blocksparse_local_blocks,
                       blocksparse_vert_stride, blocksparse_block_size,
                       blocksparse_head_sliding_step, sliding_window, sinks,
                       /*v2=*/false);
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
                        int64_t blocksparse_head_sliding_step, int64_t sliding_window,
                        const std::optional<at::Tensor>& sinks) {
  paged_attention_impl(out, exp_sums, max_logits, tmp_out, query, key_cache, value_cache,
                       num_kv_heads, scale, block_tables, seq_lens, block_size, max_seq_len,
                       alibi_slopes, kv_cache_dtype, k_scale_tensor, k_scale, v_scale_tensor,
                       v_scale, tp_rank, blocksparse_local_blocks, blocksparse_vert_stride,
                       blocksparse_block_size, blocksparse_head_sliding_step, sliding_window,
                       sinks, /*v2=*/true);
}

}  // namespace kvp_torch
