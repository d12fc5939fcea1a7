// Paged-attention instantiations for head size 32 (3 dtypes x 3 KV kinds x 3 block sizes).
// One translation unit per head size so that builds compile them in parallel.
#include "attention_kernel.cuh"

namespace kvp {

Status paged_attention_hs32(const PagedAttentionArgs& args, cudaStream_t stream) {
  return dispatch_head_size<32>(args, stream);
}

}  // namespace kvp
