// Tensor names and layouts of Hugging Face GPT-2, OPT and BERT checkpoints, and how each oft
// parameter maps to them. One rule per oft parameter says which Hugging Face tensor(s) hold it
// and how the layout differs:
//   Copy        same shape (nn.Linear weights are [out, in] in both)
//   Transpose   GPT-2's Conv1D weights are [in, out]; oft's Linear is [out, in]
//   ConcatRows  OPT / BERT keep q, k, v projections separate; oft fuses them as c_attn [3C, ...]
//               (GPT-2's fused c_attn is [C, 3C]: Transpose)
//   PosOffset2  OPT's learned positions have 2 leading rows (offset 2): [max_pos + 2, C]; oft
//               keeps rows 2.. as wpe [max_pos, C]; export writes the 2 rows as zeros
// oft parameters without a rule (gates, QK-norm scales, block gains, shaped-attention
// parameters: oft's own variants) are stored as "oft.<name>" in exports.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/model_config.h"

namespace oft::hf {

enum class Family { GPT2, OPT, BERT };
const char* family_name(Family f);         // "gpt2", "opt", "bert"
const char* family_architecture(Family f);  // GPT2LMHeadModel, OPTForCausalLM, BertForMaskedLM

// The family an oft model exports as: BERT for masked LMs, OPT for model.arch=opt, else GPT-2.
Family family_of(const ModelConfig& cfg);

enum class Layout { Copy, Transpose, ConcatRows, PosOffset2 };

struct Rule {
  Layout layout = Layout::Copy;
  std::vector<std::string> hf;  // Hugging Face names without the model prefix (3 for ConcatRows)
  std::string field;            // the config.json fields that fix the shape (for errors)
};

// The rule of oft parameter `name`, or nullopt when it has no Hugging Face counterpart.
std::optional<Rule> rule_for(Family f, const std::string& name);

// Prefix of the base model in the full-model checkpoints transformers writes:
// "transformer." (GPT2LMHeadModel), "model.decoder." (OPTForCausalLM), "bert." (BertForMaskedLM).
// The MLM head ("cls.") and OPT's "lm_head." live outside it.
const char* default_prefix(Family f);
// Whether a rule name lives at the top level rather than under the base-model prefix.
bool top_level(const std::string& hf_name);
// Candidate prefixes when reading (hub GPT-2 checkpoints have none; OPTModel uses "decoder.",
// BertModel none).
std::vector<std::string> read_prefixes(Family f);
// The embedding tensor used to detect the prefix and to check tied output layers.
const char* embedding_name(Family f);

// Hugging Face shape of a rule's part(s) given the oft parameter shape.
Shape hf_shape(Layout l, const Shape& oft_shape);

// Tensors transformers keeps that oft does not need, with the reason (nullptr: not ignorable).
// GPT-2's attn.bias / attn.masked_bias buffers, BERT's position_ids buffer, pooler and NSP head.
const char* ignorable(Family f, const std::string& name_without_prefix);

// BERT checkpoints from TensorFlow conversions name LayerNorm parameters gamma / beta.
std::vector<std::string> name_variants(const std::string& hf_name);

}  // namespace oft::hf
