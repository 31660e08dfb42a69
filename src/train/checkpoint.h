// Checkpoints: RUN/checkpoints/step_NNNNNNNN/ holding
//   model.safetensors      parameters (names as in TransformerLM, Hugging Face-style)
//   optimizer.safetensors  AdamW moments "m.<param>", "v.<param>"
//   state.json             step, resolved config, data-loader position, RNG state, counters,
//                          and the size and CRC-32 of both tensor files
// written into a temporary directory and renamed into place (fsynced), then
// RUN/checkpoints/latest (the directory name) is replaced atomically. Loading verifies sizes
// and checksums, and every tensor's name and shape, with errors naming the file and the fix.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "model/transformer.h"
#include "train/optimizer.h"

namespace oft {

// Writes a checkpoint for `step`; keeps the newest `keep` step directories. Returns its path.
std::string save_checkpoint(const std::string& run_dir, int64_t step, TransformerLM& model,
                            const AdamW* opt, nlohmann::json state, int64_t keep);
// The same with the optimizer state given as named tensors (a sharded optimizer's, gathered).
std::string save_checkpoint(const std::string& run_dir, int64_t step, TransformerLM& model,
                            const std::vector<std::pair<std::string, Tensor>>& opt_state,
                            nlohmann::json state, int64_t keep);

// Resolves a run directory (its latest checkpoint), a checkpoints/ directory or a step
// directory to a checkpoint directory. Errors explain what was expected.
std::string find_checkpoint(const std::string& run_or_checkpoint);

// The run directory a checkpoint directory belongs to (RUN for RUN/checkpoints/step_*), else
// the directory itself.
std::string run_dir_of(const std::string& ckpt_dir);

// Reads state.json and verifies the tensor files' sizes and checksums.
nlohmann::json read_checkpoint_state(const std::string& ckpt_dir);

// Copies the stored tensors into the model / optimizer (shapes must match exactly). A sharded
// optimizer takes its ranges of the full moments, so any number of ranks resumes any checkpoint.
void load_model_weights(const std::string& ckpt_dir, TransformerLM& model);
void load_optimizer_state(const std::string& ckpt_dir, AdamW& opt);

}  // namespace oft
