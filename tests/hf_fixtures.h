// Small Hugging Face model directories written by the tests themselves (no transformers needed):
// GPT-2, OPT and BERT checkpoints with transformers' tensor names, layouts and config.json
// fields, random weights, optional shards / bf16 / extra tensors. Test code only.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace oft::testing {

struct HfFixture {
  nlohmann::json config;
  std::map<std::string, Tensor> tensors;  // f32 host tensors by Hugging Face name
  uint64_t seed = 1;

  Tensor& add(const std::string& name, const Shape& shape) {
    Rng rng(seed++ * 7919);
    std::vector<double> v(static_cast<size_t>(shape_numel(shape)));
    for (auto& x : v) x = 0.5 * rng.normal();
    return tensors[name] = Tensor::from_vector(shape, v, DType::F32);
  }
  // Writes config.json and the weights: one model.safetensors, or `shards` files with
  // model.safetensors.index.json; `dtype` F32 or BF16.
  void write(const std::string& dir, int shards = 1, DType dtype = DType::F32) const {
    write_file(dir + "/config.json", config.dump(2));
    std::vector<std::vector<std::pair<std::string, Tensor>>> parts(static_cast<size_t>(shards));
    size_t i = 0;
    for (const auto& [n, t] : tensors) {
      const Tensor w = (dtype == DType::F32 || t.dtype() == DType::I32) ? t : t.cast(dtype);
      parts[i++ % parts.size()].emplace_back(n, w);
    }
    if (shards == 1) {
      save_safetensors(dir + "/model.safetensors", parts[0], {{"format", "pt"}});
      return;
    }
    nlohmann::json index;
    index["metadata"] = {{"total_size", 0}};
    for (size_t s = 0; s < parts.size(); ++s) {
      const std::string f = "model-0000" + std::to_string(s + 1) + "-of-0000" +
                            std::to_string(parts.size()) + ".safetensors";
      save_safetensors(dir + "/" + f, parts[s], {{"format", "pt"}});
      for (const auto& [n, t] : parts[s]) index["weight_map"][n] = f;
    }
    write_file(dir + "/model.safetensors.index.json", index.dump(2));
  }
};

// Sizes shared by the fixtures.
constexpr int64_t kV = 40, kC = 16, kH = 2, kL = 2, kF = 24, kPos = 12, kP = 8;

// GPT2LMHeadModel as transformers saves it (prefix "transformer.", or none like the hub's gpt2).
inline HfFixture gpt2_fixture(const std::string& prefix = "transformer.", int64_t V = kV) {
  HfFixture f;
  f.config = {{"model_type", "gpt2"}, {"architectures", {"GPT2LMHeadModel"}},
              {"vocab_size", V}, {"n_embd", kC}, {"n_layer", kL}, {"n_head", kH},
              {"n_positions", kPos}, {"n_inner", kF}, {"activation_function", "gelu_new"},
              {"layer_norm_epsilon", 1e-5}};
  const std::string p = prefix;
  f.add(p + "wte.weight", {V, kC});
  f.add(p + "wpe.weight", {kPos, kC});
  for (int l = 0; l < kL; ++l) {
    const std::string h = p + "h." + std::to_string(l) + ".";
    for (const char* ln : {"ln_1", "ln_2"}) {
      f.add(h + ln + ".weight", {kC});
      f.add(h + ln + ".bias", {kC});
    }
    f.add(h + "attn.c_attn.weight", {kC, 3 * kC});
    f.add(h + "attn.c_attn.bias", {3 * kC});
    f.add(h + "attn.c_proj.weight", {kC, kC});
    f.add(h + "attn.c_proj.bias", {kC});
    f.add(h + "mlp.c_fc.weight", {kC, kF});
    f.add(h + "mlp.c_fc.bias", {kF});
    f.add(h + "mlp.c_proj.weight", {kF, kC});
    f.add(h + "mlp.c_proj.bias", {kC});
    f.add(h + "attn.bias", {1, 1, kPos, kPos});  // causal-mask buffer of older saves
  }
  f.add(p + "ln_f.weight", {kC});
  f.add(p + "ln_f.bias", {kC});
  f.tensors["lm_head.weight"] = f.tensors[p + "wte.weight"].clone();
  return f;
}

// OPTForCausalLM in OPT-350m's layout: post-norm, project_in / project_out, no final norm.
inline HfFixture opt350m_fixture() {
  HfFixture f;
  f.config = {{"model_type", "opt"}, {"architectures", {"OPTForCausalLM"}},
              {"vocab_size", kV}, {"hidden_size", kC}, {"word_embed_proj_dim", kP},
              {"num_hidden_layers", kL}, {"num_attention_heads", kH}, {"ffn_dim", kF},
              {"max_position_embeddings", kPos}, {"do_layer_norm_before", false},
              {"activation_function", "relu"}, {"enable_bias", true}};
  const std::string p = "model.decoder.";
  f.add(p + "embed_tokens.weight", {kV, kP});
  f.add(p + "embed_positions.weight", {kPos + 2, kC});
  f.add(p + "project_in.weight", {kC, kP});
  f.add(p + "project_out.weight", {kP, kC});
  for (int l = 0; l < kL; ++l) {
    const std::string h = p + "layers." + std::to_string(l) + ".";
    for (const char* n : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      f.add(h + "self_attn." + n + ".weight", {kC, kC});
      f.add(h + "self_attn." + n + ".bias", {kC});
    }
    for (const char* n : {"self_attn_layer_norm", "final_layer_norm"}) {
      f.add(h + n + ".weight", {kC});
      f.add(h + n + ".bias", {kC});
    }
    f.add(h + "fc1.weight", {kF, kC});
    f.add(h + "fc1.bias", {kF});
    f.add(h + "fc2.weight", {kC, kF});
    f.add(h + "fc2.bias", {kC});
  }
  f.tensors["lm_head.weight"] = f.tensors[p + "embed_tokens.weight"].clone();
  return f;
}

// BertForPreTraining-style save with the old LayerNorm gamma / beta names, a pooler and the
// position-id buffer.
inline HfFixture bert_fixture(int64_t V = kV) {
  HfFixture f;
  f.config = {{"model_type", "bert"}, {"architectures", {"BertForMaskedLM"}},
              {"vocab_size", V}, {"hidden_size", kC}, {"num_hidden_layers", kL},
              {"num_attention_heads", kH}, {"intermediate_size", kF},
              {"max_position_embeddings", kPos}, {"type_vocab_size", 2},
              {"hidden_act", "gelu"}, {"layer_norm_eps", 1e-12}};
  const std::string p = "bert.";
  f.add(p + "embeddings.word_embeddings.weight", {V, kC});
  f.add(p + "embeddings.position_embeddings.weight", {kPos, kC});
  f.add(p + "embeddings.token_type_embeddings.weight", {2, kC});
  f.add(p + "embeddings.LayerNorm.gamma", {kC});
  f.add(p + "embeddings.LayerNorm.beta", {kC});
  std::vector<double> pos;
  for (int i = 0; i < kPos; ++i) pos.push_back(i);
  f.tensors[p + "embeddings.position_ids"] = Tensor::from_vector({1, kPos}, pos, DType::I32);
  for (int l = 0; l < kL; ++l) {
    const std::string h = p + "encoder.layer." + std::to_string(l) + ".";
    for (const char* n : {"attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense"}) {
      f.add(h + n + ".weight", {kC, kC});
      f.add(h + n + ".bias", {kC});
    }
    for (const char* n : {"attention.output.LayerNorm", "output.LayerNorm"}) {
      f.add(h + n + ".weight", {kC});
      f.add(h + n + ".bias", {kC});
    }
    f.add(h + "intermediate.dense.weight", {kF, kC});
    f.add(h + "intermediate.dense.bias", {kF});
    f.add(h + "output.dense.weight", {kC, kF});
    f.add(h + "output.dense.bias", {kC});
  }
  f.add(p + "pooler.dense.weight", {kC, kC});
  f.add(p + "pooler.dense.bias", {kC});
  f.add("cls.predictions.transform.dense.weight", {kC, kC});
  f.add("cls.predictions.transform.dense.bias", {kC});
  f.add("cls.predictions.transform.LayerNorm.weight", {kC});
  f.add("cls.predictions.transform.LayerNorm.bias", {kC});
  f.add("cls.predictions.bias", {V});
  f.tensors["cls.predictions.decoder.weight"] =
      f.tensors[p + "embeddings.word_embeddings.weight"].clone();
  return f;
}

}  // namespace oft::testing
