// Hugging Face config.json <-> oft model settings for GPT-2, OPT and BERT.
//
// Import reads the fields transformers' GPT2Config / OPTConfig / BertConfig define (with their
// class defaults when a field is absent, as from_pretrained does) and turns them into model.*
// settings; an option oft cannot reproduce exactly is an error naming the field and its value.
// Export writes every field from_pretrained needs, plus an "oft" section holding all model.*
// keys, whether transformers can run the model as is, and what makes it an oft variant.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hf/hf_names.h"

namespace oft::hf {

// The family config.json describes (model_type, or architectures when model_type is absent).
// Errors name the file, the model type / architecture found and list the supported ones.
Family family_from_config(const nlohmann::json& cfg, const std::string& path);

// "model.key=value" settings that build the model config.json describes. With an "oft" section
// (an oft export) its model.* keys are used as they are. `notes` receives informational lines.
std::vector<std::string> model_settings(Family f, const nlohmann::json& cfg,
                                        const std::string& path, std::vector<std::string>& notes);

// Why an oft model is not the standard architecture of family f, one phrase per difference
// (empty: transformers' own class runs it unchanged).
std::vector<std::string> variant_reasons(Family f, const ModelConfig& m);

// config.json of an export: the family's fields (vocab_size, widths, ...), architectures,
// model_type, token ids, and the "oft" section (`model_keys`: the model.* keys and values;
// `oft_tensors`: names of the tensors only oft uses).
nlohmann::json export_config(Family f, const ModelConfig& m, const nlohmann::json& model_keys,
                             const std::vector<std::string>& oft_tensors,
                             const nlohmann::json& token_ids);

// HF activation_function / hidden_act name of an oft activation and back ("" if none).
std::string hf_activation(const std::string& oft_activation);

}  // namespace oft::hf
