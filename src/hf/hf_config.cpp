// config.json parsing and writing for Hugging Face GPT-2 / OPT / BERT (see hf_config.h).
#include "hf/hf_config.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"

using nlohmann::json;

namespace oft::hf {

namespace {

constexpr const char* kSupported =
    "supported: model_type gpt2 (GPT2LMHeadModel, GPT2Model), opt (OPTForCausalLM, OPTModel), "
    "bert (BertForMaskedLM, BertForPreTraining, BertModel)";

// A field of config.json with the transformers class default when it is absent or null.
template <class T>
T field(const json& cfg, const std::string& key, const T& def, const std::string& path) {
  if (!cfg.contains(key) || cfg[key].is_null()) return def;
  try {
    return cfg[key].get<T>();
  } catch (const json::exception&) {
    fail(path, ": field \"", key, "\" has value ", cfg[key].dump(), " of the wrong type");
  }
}

std::string kv(const std::string& key, const std::string& v) { return key + "=" + v; }
std::string kv(const std::string& key, int64_t v) { return key + "=" + std::to_string(v); }
std::string kv(const std::string& key, double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return key + "=" + os.str();
}
std::string kv(const std::string& key, bool v) { return key + "=" + (v ? "true" : "false"); }

// oft activation of an HF activation name; errors list the supported ones.
std::string oft_activation(const std::string& hf, const std::string& path, const char* key) {
  if (hf == "relu") return "relu";
  if (hf == "gelu_new" || hf == "gelu_pytorch_tanh" || hf == "gelu_fast") return "gelu";
  if (hf == "gelu") return "gelu_erf";
  fail(path, ": ", key, "=\"", hf, "\" is not supported; oft has relu, gelu (erf) and gelu_new "
       "(tanh approximation)");
}

void expect_false(const json& cfg, const char* key, const std::string& path, const char* why) {
  OFT_CHECK(!field<bool>(cfg, key, false, path), path, ": ", key, "=true is not supported (", why, ")");
}

}  // namespace

std::string hf_activation(const std::string& a) {
  if (a == "relu") return "relu";
  if (a == "gelu" || a == "gelu_tanh" || a == "gelu_new") return "gelu_new";
  if (a == "gelu_erf") return "gelu";
  return "";
}

Family family_from_config(const json& cfg, const std::string& path) {
  OFT_CHECK(cfg.is_object(), path, ": config.json must be a JSON object");
  std::string mt = field<std::string>(cfg, "model_type", "", path);
  std::string arch;
  if (cfg.contains("architectures") && cfg["architectures"].is_array() && !cfg["architectures"].empty())
    arch = cfg["architectures"][0].is_string() ? cfg["architectures"][0].get<std::string>() : "";
  if (mt.empty()) {
    if (arch.starts_with("GPT2")) mt = "gpt2";
    else if (arch.starts_with("OPT")) mt = "opt";
    else if (arch.starts_with("Bert")) mt = "bert";
  }
  Family f;
  if (mt == "gpt2") f = Family::GPT2;
  else if (mt == "opt") f = Family::OPT;
  else if (mt == "bert") f = Family::BERT;
  else
    fail(path, ": model_type \"", mt, "\"", arch.empty() ? "" : " (architecture " + arch + ")",
         " is not supported; ", kSupported);
  static const std::vector<std::string> ok[] = {
      {"GPT2LMHeadModel", "GPT2Model"},
      {"OPTForCausalLM", "OPTModel"},
      {"BertForMaskedLM", "BertForPreTraining", "BertModel"}};
  if (!arch.empty()) {
    const auto& list = ok[static_cast<int>(f)];
    OFT_CHECK(std::find(list.begin(), list.end(), arch) != list.end(), path, ": architecture ",
              arch, " is not supported (oft imports language models: causal LM for GPT-2 / OPT, "
              "masked LM for BERT); ", kSupported);
  }
  return f;
}

std::vector<std::string> model_settings(Family f, const json& cfg, const std::string& path,
                                        std::vector<std::string>& notes) {
  std::vector<std::string> s;
  if (cfg.contains("oft") && cfg["oft"].is_object() && cfg["oft"].contains("model")) {
    const json& m = cfg["oft"]["model"];
    OFT_CHECK(m.is_object(), path, ": oft.model must be an object of model.* keys");
    for (const auto& [k, v] : m.items()) {
      OFT_CHECK(k.starts_with("model."), path, ": oft.model holds \"", k,
                "\"; only model.* keys belong there");
      s.push_back(k + "=" + (v.is_string() ? v.get<std::string>() : v.dump()));
    }
    notes.push_back("config.json has an oft section: the model.* settings of the exporting run "
                    "are used as they are");
    return s;
  }
  switch (f) {
    case Family::GPT2: {
      const int64_t C = field<int64_t>(cfg, "n_embd", 768, path);
      s.push_back(kv("model.arch", std::string("gpt2")));
      s.push_back(kv("model.vocab_size", field<int64_t>(cfg, "vocab_size", 50257, path)));
      s.push_back(kv("model.max_seq_len", field<int64_t>(cfg, "n_positions", 1024, path)));
      s.push_back(kv("model.d_model", C));
      s.push_back(kv("model.n_layer", field<int64_t>(cfg, "n_layer", 12, path)));
      s.push_back(kv("model.n_head", field<int64_t>(cfg, "n_head", 12, path)));
      s.push_back(kv("model.d_ff", field<int64_t>(cfg, "n_inner", 4 * C, path)));
      s.push_back(kv("model.activation",
                     oft_activation(field<std::string>(cfg, "activation_function", "gelu_new", path),
                                    path, "activation_function")));
      s.push_back(kv("model.norm_eps", field<double>(cfg, "layer_norm_epsilon", 1e-5, path)));
      s.push_back(kv("model.init_std", field<double>(cfg, "initializer_range", 0.02, path)));
      s.push_back("model.block=pre_norm");
      s.push_back("model.final_norm=true");
      OFT_CHECK(field<bool>(cfg, "scale_attn_weights", true, path), path,
                ": scale_attn_weights=false is not supported (oft scales scores by 1/sqrt(d_head))");
      expect_false(cfg, "scale_attn_by_inverse_layer_idx", path,
                   "oft does not scale attention by the layer index");
      expect_false(cfg, "add_cross_attention", path, "oft models have no cross-attention");
      break;
    }
    case Family::OPT: {
      const int64_t C = field<int64_t>(cfg, "hidden_size", 768, path);
      const bool pre = field<bool>(cfg, "do_layer_norm_before", true, path);
      const bool remove_final = field<bool>(cfg, "_remove_final_layer_norm", false, path);
      const int64_t P = field<int64_t>(cfg, "word_embed_proj_dim", C, path);
      s.push_back("model.arch=opt");
      s.push_back(kv("model.vocab_size", field<int64_t>(cfg, "vocab_size", 50272, path)));
      s.push_back(kv("model.max_seq_len", field<int64_t>(cfg, "max_position_embeddings", 2048, path)));
      s.push_back(kv("model.d_model", C));
      s.push_back(kv("model.n_layer", field<int64_t>(cfg, "num_hidden_layers", 12, path)));
      s.push_back(kv("model.n_head", field<int64_t>(cfg, "num_attention_heads", 12, path)));
      s.push_back(kv("model.d_ff", field<int64_t>(cfg, "ffn_dim", 3072, path)));
      s.push_back(kv("model.word_embed_proj_dim", P == C ? int64_t(0) : P));
      s.push_back(kv("model.activation",
                     oft_activation(field<std::string>(cfg, "activation_function", "relu", path),
                                    path, "activation_function")));
      s.push_back("model.norm_eps=1e-05");  // transformers' OPT LayerNorms use the default eps
      s.push_back(kv("model.init_std", field<double>(cfg, "init_std", 0.02, path)));
      s.push_back(std::string("model.block=") + (pre ? "pre_norm" : "post_norm"));
      s.push_back(kv("model.final_norm", pre && !remove_final));
      OFT_CHECK(field<bool>(cfg, "enable_bias", true, path), path, ": enable_bias=false is not "
                "supported (oft's model.bias=false also removes the LayerNorm biases, which OPT "
                "keeps)");
      OFT_CHECK(field<bool>(cfg, "layer_norm_elementwise_affine", true, path), path,
                ": layer_norm_elementwise_affine=false is not supported (oft's LayerNorms have "
                "gains and biases)");
      if (!pre) notes.push_back("do_layer_norm_before=false: post-norm blocks, no final LayerNorm (OPT-350m)");
      if (P != C)
        notes.push_back("word_embed_proj_dim=" + std::to_string(P) + " != hidden_size=" +
                        std::to_string(C) + ": project_in / project_out (model.word_embed_proj_dim)");
      break;
    }
    case Family::BERT: {
      const std::string pe = field<std::string>(cfg, "position_embedding_type", "absolute", path);
      OFT_CHECK(pe == "absolute", path, ": position_embedding_type=\"", pe,
                "\" is not supported; oft has learned absolute positions (\"absolute\")");
      expect_false(cfg, "is_decoder", path, "oft's masked LM is bidirectional");
      expect_false(cfg, "add_cross_attention", path, "oft models have no cross-attention");
      const int64_t tv = field<int64_t>(cfg, "type_vocab_size", 2, path);
      OFT_CHECK(tv >= 1, path, ": type_vocab_size=", tv, " must be >= 1");
      s.push_back("model.arch=gpt2");
      s.push_back("model.objective=mlm");
      s.push_back(kv("model.vocab_size", field<int64_t>(cfg, "vocab_size", 30522, path)));
      s.push_back(kv("model.max_seq_len", field<int64_t>(cfg, "max_position_embeddings", 512, path)));
      s.push_back(kv("model.d_model", field<int64_t>(cfg, "hidden_size", 768, path)));
      s.push_back(kv("model.n_layer", field<int64_t>(cfg, "num_hidden_layers", 12, path)));
      s.push_back(kv("model.n_head", field<int64_t>(cfg, "num_attention_heads", 12, path)));
      s.push_back(kv("model.d_ff", field<int64_t>(cfg, "intermediate_size", 3072, path)));
      s.push_back(kv("model.activation",
                     oft_activation(field<std::string>(cfg, "hidden_act", "gelu", path), path,
                                    "hidden_act")));
      s.push_back(kv("model.norm_eps", field<double>(cfg, "layer_norm_eps", 1e-12, path)));
      s.push_back(kv("model.init_std", field<double>(cfg, "initializer_range", 0.02, path)));
      s.push_back(kv("model.type_vocab_size", tv));
      s.push_back("model.embed_norm=true");
      s.push_back("model.block=post_norm");
      s.push_back("model.final_norm=false");
      if (tv > 1)
        notes.push_back("token types: oft feeds type 0 to every position (single-segment "
                        "input); the whole table is kept");
      break;
    }
  }
  for (const char* k : {"attn_softmax=softmax", "norm=layernorm", "bias=true",
                        "attn_gate_type=none", "qk_norm=false", "branch_gain=1",
                        "gains_trainable=false"})
    s.push_back(std::string("model.") + k);
  if (f != Family::BERT) {
    s.push_back("model.objective=clm");
    s.push_back("model.type_vocab_size=0");
    s.push_back("model.embed_norm=false");
  }
  if (f != Family::OPT) s.push_back("model.word_embed_proj_dim=0");
  return s;
}

std::vector<std::string> variant_reasons(Family f, const ModelConfig& m) {
  std::vector<std::string> r;
  if (m.attn_softmax != "softmax" && m.attn_softmax != "vanilla")
    r.push_back("attention probabilities " + m.attn_softmax);
  if (m.alpha > 0) r.push_back("clipped softmax with alpha=" + std::to_string(m.alpha));
  if (m.attn_gate_type != "none") {
    std::string g = "gated attention (" + m.attn_gate_type;
    if (m.attn_gate_mlp) g += ", MLP gate";
    if (m.attn_gate_linear_all_features) g += ", all-features linear gate";
    r.push_back(g + ")");
  }
  if (m.qk_norm) r.push_back("QK-norm");
  if (m.norm != "layernorm") r.push_back("norm " + m.norm);
  if (m.branch_gain != 1.0) r.push_back("branch gain " + std::to_string(m.branch_gain));
  if (m.gains_trainable) r.push_back("trainable branch gains");
  if (!m.bias) r.push_back("no biases");
  if (hf_activation(m.activation).empty()) r.push_back("activation " + m.activation);
  switch (f) {
    case Family::GPT2:
      if (m.block != "pre_norm") r.push_back("block " + m.block);
      if (!m.final_norm) r.push_back("no final norm");
      if (m.type_vocab_size > 0) r.push_back("token-type embeddings");
      if (m.embed_norm) r.push_back("embedding norm");
      if (m.embed_proj()) r.push_back("project_in / project_out (an OPT feature)");
      break;
    case Family::OPT:
      if (m.block != "pre_norm" && m.block != "post_norm") r.push_back("block " + m.block);
      if (m.block == "post_norm" && m.final_norm)
        r.push_back("final norm after post-norm blocks (transformers' OPT has none)");
      if (std::abs(m.norm_eps - 1e-5) > 1e-12)
        r.push_back("norm_eps " + std::to_string(m.norm_eps) + " (OPT's LayerNorms use 1e-5)");
      if (m.type_vocab_size > 0) r.push_back("token-type embeddings");
      if (m.embed_norm) r.push_back("embedding norm");
      break;
    case Family::BERT:
      if (m.block != "post_norm") r.push_back("block " + m.block);
      if (m.final_norm) r.push_back("final norm");
      if (!m.embed_norm) r.push_back("no embedding norm");
      if (m.type_vocab_size < 1) r.push_back("no token-type embeddings");
      break;
  }
  return r;
}

json export_config(Family f, const ModelConfig& m, const json& model_keys,
                   const std::vector<std::string>& oft_tensors, const json& token_ids) {
  json c;
  c["architectures"] = {family_architecture(f)};
  c["model_type"] = family_name(f);
  c["vocab_size"] = m.vocab_size;
  c["dtype"] = "float32";
  c["tie_word_embeddings"] = true;
  const std::string act = hf_activation(m.activation);
  switch (f) {
    case Family::GPT2:
      c["n_embd"] = m.d_model;
      c["n_layer"] = m.n_layer;
      c["n_head"] = m.n_head;
      c["n_inner"] = m.d_ff;
      c["n_positions"] = m.max_seq_len;
      c["n_ctx"] = m.max_seq_len;
      c["activation_function"] = act.empty() ? "gelu_new" : act;
      c["layer_norm_epsilon"] = m.norm_eps;
      c["initializer_range"] = m.init_std;
      c["resid_pdrop"] = c["embd_pdrop"] = c["attn_pdrop"] = 0.0;
      c["scale_attn_weights"] = true;
      c["scale_attn_by_inverse_layer_idx"] = false;
      c["reorder_and_upcast_attn"] = false;
      c["use_cache"] = true;
      break;
    case Family::OPT:
      c["hidden_size"] = m.d_model;
      c["num_hidden_layers"] = m.n_layer;
      c["num_attention_heads"] = m.n_head;
      c["ffn_dim"] = m.d_ff;
      c["max_position_embeddings"] = m.max_seq_len;
      c["word_embed_proj_dim"] = m.embed_dim();
      c["do_layer_norm_before"] = m.block != "post_norm";
      c["_remove_final_layer_norm"] = m.block != "post_norm" && !m.final_norm;
      c["activation_function"] = act.empty() ? "relu" : act;
      c["enable_bias"] = true;
      c["layer_norm_elementwise_affine"] = true;
      c["init_std"] = m.init_std;
      c["dropout"] = c["attention_dropout"] = c["activation_dropout"] = c["layerdrop"] = 0.0;
      c["use_cache"] = true;
      break;
    case Family::BERT:
      c["hidden_size"] = m.d_model;
      c["num_hidden_layers"] = m.n_layer;
      c["num_attention_heads"] = m.n_head;
      c["intermediate_size"] = m.d_ff;
      c["max_position_embeddings"] = m.max_seq_len;
      c["type_vocab_size"] = std::max<int64_t>(m.type_vocab_size, 1);
      c["hidden_act"] = act.empty() ? "gelu" : act;
      c["layer_norm_eps"] = m.norm_eps;
      c["initializer_range"] = m.init_std;
      c["hidden_dropout_prob"] = c["attention_probs_dropout_prob"] = 0.0;
      c["position_embedding_type"] = "absolute";
      c["is_decoder"] = false;
      c["add_cross_attention"] = false;
      break;
  }
  for (const auto& [k, v] : token_ids.items()) c[k] = v;
  const std::vector<std::string> reasons = variant_reasons(f, m);
  json o;
  o["format"] = "oft-hf-export";
  o["version"] = 1;
  o["transformers_compatible"] = reasons.empty();
  o["variant"] = reasons;
  o["model"] = model_keys;
  o["tensors"] = oft_tensors;
  c["oft"] = o;
  return c;
}

}  // namespace oft::hf
