// oft parameter <-> Hugging Face tensor rules for GPT-2, OPT and BERT (see hf_names.h).
#include "hf/hf_names.h"

#include <regex>

namespace oft::hf {

const char* family_name(Family f) {
  switch (f) {
    case Family::GPT2: return "gpt2";
    case Family::OPT: return "opt";
    case Family::BERT: return "bert";
  }
  return "?";
}

const char* family_architecture(Family f) {
  switch (f) {
    case Family::GPT2: return "GPT2LMHeadModel";
    case Family::OPT: return "OPTForCausalLM";
    case Family::BERT: return "BertForMaskedLM";
  }
  return "?";
}

Family family_of(const ModelConfig& cfg) {
  if (cfg.objective == "mlm") return Family::BERT;
  return cfg.arch == "opt" ? Family::OPT : Family::GPT2;
}

const char* default_prefix(Family f) {
  switch (f) {
    case Family::GPT2: return "transformer.";
    case Family::OPT: return "model.decoder.";
    case Family::BERT: return "bert.";
  }
  return "";
}

bool top_level(const std::string& n) {
  return n.starts_with("cls.") || n.starts_with("lm_head.");
}

std::vector<std::string> read_prefixes(Family f) {
  switch (f) {
    case Family::GPT2: return {"transformer.", ""};
    case Family::OPT: return {"model.decoder.", "decoder.", ""};
    case Family::BERT: return {"bert.", ""};
  }
  return {""};
}

const char* embedding_name(Family f) {
  switch (f) {
    case Family::GPT2: return "wte.weight";
    case Family::OPT: return "embed_tokens.weight";
    case Family::BERT: return "embeddings.word_embeddings.weight";
  }
  return "";
}

Shape hf_shape(Layout l, const Shape& s) {
  switch (l) {
    case Layout::Copy: return s;
    case Layout::Transpose: return s.size() == 2 ? Shape{s[1], s[0]} : s;
    case Layout::ConcatRows: {
      Shape r = s;
      r[0] /= 3;
      return r;
    }
    case Layout::PosOffset2: return {s[0] + 2, s[1]};
  }
  return s;
}

namespace {

// "h.<l>.<rest>" -> (l, rest); false for other names.
bool split_layer(const std::string& name, std::string* layer, std::string* rest) {
  static const std::regex re(R"(h\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return false;
  *layer = m[1];
  *rest = m[2];
  return true;
}

// ".weight" / ".bias" suffix of a parameter name, or "".
std::string suffix(const std::string& n) {
  if (n.ends_with(".weight")) return "weight";
  if (n.ends_with(".bias")) return "bias";
  return "";
}

Rule copy(const std::string& hf, const std::string& field) { return {Layout::Copy, {hf}, field}; }

std::optional<Rule> gpt2_rule(const std::string& n) {
  if (n == "wte.weight") return copy("wte.weight", "vocab_size, n_embd");
  if (n == "wpe.weight") return copy("wpe.weight", "n_positions, n_embd");
  if (n == "ln_f.weight" || n == "ln_f.bias") return copy(n, "n_embd");
  std::string l, r;
  if (!split_layer(n, &l, &r)) return std::nullopt;
  const std::string p = "h." + l + ".";
  if (r == "ln_1.weight" || r == "ln_1.bias" || r == "ln_2.weight" || r == "ln_2.bias")
    return copy(p + r, "n_embd");
  // Conv1D: weight [in, out]
  if (r == "attn.c_attn.weight" || r == "attn.c_proj.weight" || r == "mlp.c_fc.weight" ||
      r == "mlp.c_proj.weight")
    return Rule{Layout::Transpose, {p + r}, r.starts_with("mlp") ? "n_embd, n_inner" : "n_embd"};
  if (r == "attn.c_attn.bias" || r == "attn.c_proj.bias" || r == "mlp.c_fc.bias" ||
      r == "mlp.c_proj.bias")
    return copy(p + r, r == "mlp.c_fc.bias" ? "n_inner" : "n_embd");
  return std::nullopt;
}

std::optional<Rule> opt_rule(const std::string& n) {
  if (n == "wte.weight") return copy("embed_tokens.weight", "vocab_size, word_embed_proj_dim");
  if (n == "wpe.weight")
    return Rule{Layout::PosOffset2, {"embed_positions.weight"}, "max_position_embeddings, hidden_size"};
  if (n == "ln_f.weight" || n == "ln_f.bias")
    return copy("final_layer_norm." + suffix(n), "hidden_size");
  if (n == "project_in.weight" || n == "project_out.weight")
    return copy(n, "hidden_size, word_embed_proj_dim");
  std::string l, r;
  if (!split_layer(n, &l, &r)) return std::nullopt;
  const std::string p = "layers." + l + ".";
  const std::string s = suffix(r);
  if (r == "attn.c_attn.weight" || r == "attn.c_attn.bias")
    return Rule{Layout::ConcatRows,
                {p + "self_attn.q_proj." + s, p + "self_attn.k_proj." + s, p + "self_attn.v_proj." + s},
                "hidden_size"};
  if (r.starts_with("attn.c_proj.")) return copy(p + "self_attn.out_proj." + s, "hidden_size");
  if (r.starts_with("ln_1.")) return copy(p + "self_attn_layer_norm." + s, "hidden_size");
  if (r.starts_with("ln_2.")) return copy(p + "final_layer_norm." + s, "hidden_size");
  if (r.starts_with("mlp.c_fc.")) return copy(p + "fc1." + s, "hidden_size, ffn_dim");
  if (r.starts_with("mlp.c_proj.")) return copy(p + "fc2." + s, "hidden_size, ffn_dim");
  return std::nullopt;
}

std::optional<Rule> bert_rule(const std::string& n) {
  if (n == "wte.weight") return copy("embeddings.word_embeddings.weight", "vocab_size, hidden_size");
  if (n == "wpe.weight")
    return copy("embeddings.position_embeddings.weight", "max_position_embeddings, hidden_size");
  if (n == "wtt.weight")
    return copy("embeddings.token_type_embeddings.weight", "type_vocab_size, hidden_size");
  if (n == "emb_ln.weight" || n == "emb_ln.bias")
    return copy("embeddings.LayerNorm." + suffix(n), "hidden_size");
  if (n == "mlm.dense.weight" || n == "mlm.dense.bias")
    return copy("cls.predictions.transform.dense." + suffix(n), "hidden_size");
  if (n == "mlm.ln.weight" || n == "mlm.ln.bias")
    return copy("cls.predictions.transform.LayerNorm." + suffix(n), "hidden_size");
  if (n == "mlm.decoder.bias") return copy("cls.predictions.bias", "vocab_size");
  std::string l, r;
  if (!split_layer(n, &l, &r)) return std::nullopt;
  const std::string p = "encoder.layer." + l + ".";
  const std::string s = suffix(r);
  if (r == "attn.c_attn.weight" || r == "attn.c_attn.bias")
    return Rule{Layout::ConcatRows,
                {p + "attention.self.query." + s, p + "attention.self.key." + s,
                 p + "attention.self.value." + s},
                "hidden_size"};
  if (r.starts_with("attn.c_proj.")) return copy(p + "attention.output.dense." + s, "hidden_size");
  if (r.starts_with("ln_1.")) return copy(p + "attention.output.LayerNorm." + s, "hidden_size");
  if (r.starts_with("mlp.c_fc.")) return copy(p + "intermediate.dense." + s, "hidden_size, intermediate_size");
  if (r.starts_with("mlp.c_proj.")) return copy(p + "output.dense." + s, "hidden_size, intermediate_size");
  if (r.starts_with("ln_2.")) return copy(p + "output.LayerNorm." + s, "hidden_size");
  return std::nullopt;
}

}  // namespace

std::optional<Rule> rule_for(Family f, const std::string& name) {
  switch (f) {
    case Family::GPT2: return gpt2_rule(name);
    case Family::OPT: return opt_rule(name);
    case Family::BERT: return bert_rule(name);
  }
  return std::nullopt;
}

const char* ignorable(Family f, const std::string& n) {
  static const std::regex gpt2_buf(R"(h\.\d+\.attn\.(bias|masked_bias))");
  if (f == Family::GPT2 && std::regex_match(n, gpt2_buf))
    return "GPT-2's causal-mask buffers (not parameters)";
  if (f == Family::BERT) {
    if (n == "embeddings.position_ids") return "BERT's position-id buffer (not a parameter)";
    if (n.starts_with("pooler.")) return "the pooler (used by sentence-level heads, not by the masked LM)";
    if (n.starts_with("cls.seq_relationship."))
      return "the next-sentence-prediction head (BertForPreTraining), not used by the masked LM";
  }
  return nullptr;
}

std::vector<std::string> name_variants(const std::string& n) {
  std::vector<std::string> r{n};
  if (n.ends_with("LayerNorm.weight")) r.push_back(n.substr(0, n.size() - 6) + "gamma");
  if (n.ends_with("LayerNorm.bias")) r.push_back(n.substr(0, n.size() - 4) + "beta");
  if (n == "cls.predictions.bias") r.push_back("cls.predictions.decoder.bias");
  return r;
}

}  // namespace oft::hf
