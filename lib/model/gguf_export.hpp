// `moe export gguf`: a DeepSeek-V3 (MLA) model as a GGUF file that llama.cpp loads as its
// `deepseek2` architecture, following convert_hf_to_gguf.py's DeepseekV2Model: the MLA key lengths
// (absorbed path: kv_b_proj split into attn_k_b, transposed, and attn_v_b), stacked experts, the
// router and its correction bias (exp_probs_b), sigmoid gating, expert groups, and moe's byte
// vocabulary as llama.cpp's "rwkv" tokenizer (token i is the byte i, both ways, for any bytes).
// The MTP layer is left out (llama.cpp's deepseek2 has none; its converter drops it).
#pragma once
#include <string>
#include <vector>

#include "core/gguf.hpp"
#include "model/model.hpp"

namespace moe {

// The GGUF file's bytes, matrices in `type` with the converter's exceptions (prepare_tensors): norms,
// 1-D tensors, the router and its bias stay F32, and a Q8_0 matrix whose rows are not a multiple of
// 32 falls back to F16. Error naming the config field for a model llama.cpp cannot express.
std::string export_gguf(const Model& model, GgmlType type = GgmlType::f32);
// The type a tensor is written in (the policy above), from its GGUF name and PyTorch shape.
GgmlType gguf_tensor_type(const std::string& name, const std::vector<int64_t>& shape, GgmlType type);

}  // namespace moe
