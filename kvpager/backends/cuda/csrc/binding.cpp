// The Python module of the torch binding: registers the op entry points defined in
// binding_attention.cpp and binding_cache_ops.cpp.
//
// kvpager.ops has validated shapes, dtypes and block ids before a call gets here; the binding
// checks only what the kernels assume on top of that (innermost dimensions contiguous, 16-byte
// alignment for vector loads, one device) and turns a Status into ValueError (the input can
// never run) or RuntimeError (CUDA failed). Everything is enqueued on torch's current stream of
// the tensors' device, so the ops compose with torch's stream semantics and CUDA graphs.
#include "binding_util.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "kvpager CUDA kernels (paged attention v1/v2 and cache ops); see kvpager.ops";
  m.def("paged_attention_v1", &kvp_torch::paged_attention_v1, py::arg("out"), py::arg("query"),
        py::arg("key_cache"), py::arg("value_cache"), py::arg("num_kv_heads"), py::arg("scale"),
        py::arg("block_tables"), py::arg("seq_lens"), py::arg("block_size"),
        py::arg("max_seq_len"), py::arg("alibi_slopes"), py::arg("kv_cache_dtype"),
        py::arg("k_scale_tensor"), py::arg("k_scale"), py::arg("v_scale_tensor"),
        py::arg("v_scale"), py::arg("tp_rank"), py::arg("blocksparse_local_blocks"),
        py::arg("blocksparse_vert_stride"), py::arg("blocksparse_block_size"),
        py::arg("blocksparse_head_sliding_step"), py::arg("sliding_window"), py::arg("sinks"));
  m.def("paged_attention_v2", &kvp_torch::paged_attention_v2, py::arg("out"), py::arg("exp_sums"),
        py::arg("max_logits"), py::arg("tmp_out"), py::arg("query"), py::arg("key_cache"),
        py::arg("value_cache"), py::arg("num_kv_heads"), py::arg("scale"),
        py::arg("block_tables"), py::arg("seq_lens"), py::arg("block_size"),
        py::arg("max_seq_len"), py::arg("alibi_slopes"), py::arg("kv_cache_dtype"),
        py::arg("k_scale_tensor"), py::arg("k_scale"), py::arg("v_scale_tensor"),
        py::arg("v_scale"), py::arg("tp_rank"), py::arg("blocksparse_local_blocks"),
        py::arg("blocksparse_vert_stride"), py::arg("blocksparse_block_size"),
        py::arg("blocksparse_head_sliding_step"), py::arg("sliding_window"), py::arg("sinks"));
  m.def("reshape_and_cache", &kvp_torch::reshape_and_cache, py::arg("key"), py::arg("value"),
        py::arg("key_cache"), py::arg("value_cache"), py::arg("slot_mapping"),
        py::arg("kv_cache_dtype"), py::arg("k_scale_tensor"), py::arg("k_scale"),
        py::arg("v_scale_tensor"), py::arg("v_scale"));
  m.def("copy_blocks", &kvp_torch::copy_blocks, py::arg("key_caches"), py::arg("value_caches"),
        py::arg("block_mapping"));
  m.def("swap_blocks", &kvp_torch::swap_blocks, py::arg("src"), py::arg("dst"), py::arg("block_mapping"));
  m.def("merge_attn_states", &kvp_torch::merge_attn_states, py::arg("output"), py::arg("prefix_output"),
        py::arg("prefix_lse"), py::arg("suffix_output"), py::arg("suffix_lse"),
        py::arg("output_lse"));
  m.attr("partition_size") = kvp::kPartitionSize;
}
