// Plain C++ interface of the kvpager CUDA kernels.
//
// Everything here is raw pointers, element strides, enums and a cudaStream_t, so the .cu files
// compile with nvcc alone (no torch headers) and any host code can launch them. The torch
// binding (binding.cpp) is the only file that knows about at::Tensor.
//
// Conventions: strides are in elements of the tensor's own dtype, never bytes; every launch
// returns a Status instead of throwing, because exceptions must not cross the nvcc/g++ object
// boundary and the binding decides which Python exception each code becomes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace kvp {

// Activation dtype of query/out/key/value (and of the cache when kv_cache_dtype is "auto").
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Storage of the KV cache: the activation dtype, or FP8 held in uint8 bytes.
enum class KvKind : int { kAuto = 0, kFp8E4M3 = 1, kFp8E5M2 = 2 };

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // becomes ValueError: the call can never run as given
  kCudaError = 2,        // becomes RuntimeError: the launch itself failed
};

struct Status {
  StatusCode code;
  char message[320];
};

Status ok_status();

// Tokens per v2 partition (docs/architecture.md): sizes exp_sums / max_logits / tmp_out.
constexpr int kPartitionSize = 512;

// One decode step of paged attention (v1 when partition_size == 0, else the partitioned pass of
// v2; the v2 reduce is a separate launch, paged_attention_reduce).
struct PagedAttentionArgs {
  // out [num_seqs, num_heads, head_size] (v1 only; v2 writes tmp_out and then the reduce writes
  // out), dtype `dtype`, last dimension contiguous.
  void* out;
  int64_t out_seq_stride;
  int64_t out_head_stride;
  // query [num_seqs, num_heads, head_size], dtype `dtype`, 16-byte aligned rows.
  const void* query;
  int64_t q_seq_stride;
  int64_t q_head_stride;
  // key_cache [num_blocks, num_kv_heads, head_size / x, block_size, x] and
  // value_cache [num_blocks, num_kv_heads, head_size, block_size]; the three (two) innermost
  // dimensions contiguous, x = 16 bytes / element size.
  const void* key_cache;
  int64_t k_block_stride;
  int64_t k_head_stride;
  const void* value_cache;
  int64_t v_block_stride;
  int64_t v_head_stride;
  // block_tables int32 [num_seqs, >= ceil(max_seq_len / block_size)], seq_lens int32 [num_seqs].
  const int32_t* block_tables;
  int64_t bt_stride;
  const int32_t* seq_lens;
  // alibi_slopes float32 [num_heads] or nullptr.
  const float* alibi_slopes;
  // v2 only: exp_sums / max_logits float32 [num_seqs, num_heads, max_num_partitions] and
  // tmp_out [num_seqs, num_heads, max_num_partitions, head_size] (dtype `dtype`), contiguous.
  float* exp_sums;
  float* max_logits;
  void* tmp_out;
  int max_num_partitions;

  int num_seqs;
  int num_heads;
  int num_kv_heads;
  int head_size;
  int block_size;
  int max_seq_len;
  int partition_size;  // 0: v1, one CTA per (head, seq) covering the whole sequence
  float scale;
  DType dtype;
  KvKind kv;
  // Dequantization scales for FP8 caches: the pointer (a 0-d float32 on the device, read by
  // the kernel so the call stays capturable in a CUDA graph) wins over the value when set.
  const float* k_scale_ptr;
  float k_scale;
  const float* v_scale_ptr;
  float v_scale;
  // Block-sparse attention, active when bs_vert_stride > 1 (rule in docs/architecture.md).
  int tp_rank;
  int bs_local_blocks;
  int bs_vert_stride;
  int bs_block_size;
  int bs_head_sliding_step;
  // Sliding window (0: none): the query attends tokens max(0, seq_len - sliding_window) ..
  // seq_len - 1; blocks wholly before that are never read, nor their table entries.
  int sliding_window;
  // Attention sinks, float32 [num_heads] or nullptr: one extra logit per head in the softmax
  // denominator (v1's kernel adds it; in v2 the reduce does, once).
  const float* sinks;
};

// Head sizes, block sizes compiled into the attention kernels.
bool attention_head_size_supported(int head_size);
bool attention_block_size_supported(int block_size);

// v1 (partition_size == 0) or the partitioned pass of v2 (partition_size == 512).
Status paged_attention(const PagedAttentionArgs& args, cudaStream_t stream);
// v2 reduce: combines tmp_out / exp_sums / max_logits into out.
Status paged_attention_reduce(const PagedAttentionArgs& args, cudaStream_t stream);

struct ReshapeAndCacheArgs {
  // key/value [num_tokens, num_kv_heads, head_size], dtype `dtype`, last dim contiguous.
  const void* key;
  int64_t key_token_stride;
  int64_t key_head_stride;
  const void* value;
  int64_t value_token_stride;
  int64_t value_head_stride;
  // caches as in PagedAttentionArgs.
  void* key_cache;
  int64_t k_block_stride;
  int64_t k_head_stride;
  void* value_cache;
  int64_t v_block_stride;
  int64_t v_head_stride;
  // slot_mapping int64 [num_tokens]; slot = block * block_size + offset, negative = padding.
  const int64_t* slot_mapping;
  int num_tokens;
  int num_kv_heads;
  int head_size;
  int block_size;
  DType dtype;
  KvKind kv;
  const float* k_scale_ptr;
  float k_scale;
  const float* v_scale_ptr;
  float v_scale;
};

Status reshape_and_cache(const ReshapeAndCacheArgs& args, cudaStream_t stream);

// Copy-on-write for every layer in one launch. key_ptrs / value_ptrs: device arrays of
// num_layers base addresses (uint64 stored in int64); pairs: device int64 [num_pairs, 2] of
// (src, dst) block ids. Block strides and sizes are in bytes and must be multiples of 16, and
// every base address 16-byte aligned (checked by the binding).
struct CopyBlocksArgs {
  const int64_t* key_ptrs;
  const int64_t* value_ptrs;
  const int64_t* pairs;
  int num_layers;
  int64_t num_pairs;
  int64_t k_block_stride_bytes;
  int64_t k_block_bytes;
  int64_t v_block_stride_bytes;
  int64_t v_block_bytes;
};

Status copy_blocks(const CopyBlocksArgs& args, cudaStream_t stream);

// GPU <-> CPU (or GPU <-> GPU) block copies, enqueued on `stream`. pairs is a HOST array of
// num_pairs (src, dst) ids; consecutive runs are merged into one cudaMemcpyAsync when both
// caches store blocks back to back.
Status swap_blocks(const char* src, char* dst, int64_t src_block_stride_bytes,
                   int64_t dst_block_stride_bytes, int64_t block_bytes, const int64_t* pairs,
                   int64_t num_pairs, cudaStream_t stream);

struct MergeAttnStatesArgs {
  // output / prefix_output / suffix_output [num_tokens, num_heads, head_size], last dim
  // contiguous, dtype `dtype`; *_lse float32 [num_heads, num_tokens].
  void* output;
  int64_t out_token_stride;
  int64_t out_head_stride;
  const void* prefix_output;
  int64_t p_token_stride;
  int64_t p_head_stride;
  const void* suffix_output;
  int64_t s_token_stride;
  int64_t s_head_stride;
  const float* prefix_lse;
  int64_t p_lse_head_stride;
  int64_t p_lse_token_stride;
  const float* suffix_lse;
  int64_t s_lse_head_stride;
  int64_t s_lse_token_stride;
  float* output_lse;  // nullptr: not written
  int64_t o_lse_head_stride;
  int64_t o_lse_token_stride;
  int num_tokens;
  int num_heads;
  int head_size;
  DType dtype;
};

Status merge_attn_states(const MergeAttnStatesArgs& args, cudaStream_t stream);

}  // namespace kvp
