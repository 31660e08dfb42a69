// Logits of a trained or imported model for given token ids (`oft logits`): the output of one
// forward pass without a loss, on the model's device and precision, returned as host f32.
// Used to compare oft with other implementations (scripts/torch/hf_check.py compares with
// transformers) and to inspect predictions.
#pragma once

#include <string>

#include "model/transformer.h"

namespace oft {

// Token ids [B, T] (CPU i32) from a file:
//   *.safetensors   tensor "input_ids" (or the only tensor), [B, T] or [T], any integer dtype
//   anything else   text: one sequence per line, ids separated by spaces or commas, every line
//                   of the same length (blank lines are skipped)
// Errors name the file, the line and the fix.
Tensor read_token_ids(const std::string& path);

// Logits [B, T, V] (host f32) of ids [B, T]. Ids must lie in [0, vocab_size) and T must not
// exceed model.max_seq_len (errors say which id / length). A masked LM attends to every position.
Tensor compute_logits(TransformerLM& model, const Tensor& ids);

}  // namespace oft
