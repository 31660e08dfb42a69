// OutlierCollector (see collect.h).
#include "analysis/collect.h"

#include <cmath>

namespace oft::analysis {

OutlierCollector::OutlierCollector(const ModelConfig& m, bool per_token_rows)
    : m_(m), per_token_(per_token_rows) {}

std::string OutlierCollector::kind(Point p) const {
  const bool mlm = m_.objective == "mlm";
  switch (p) {
    case Point::LayerOut: return mlm ? "ln" : "layer";
    case Point::FfnOut: return "ffn";
    case Point::FfnSum: return "ffn_io";
    case Point::AttnOut: return mlm ? "" : "attn_out";
    case Point::Norm1:
    case Point::Norm2:
    case Point::FinalNorm: return mlm ? "" : "ln";
    default: return "";
  }
}

namespace {
void add_into(HiddenStateMetrics& a, const HiddenStateMetrics& b) {
  a.kurt.kurtosis += b.kurt.kurtosis;
  a.kurt.var_form += b.kurt.var_form;
  a.kurt.rms += b.kurt.rms;
  a.kurt.mean_s2 += b.kurt.mean_s2;
  a.kurt.tokens += b.kurt.tokens;
  a.kurt.d = b.kurt.d;
  a.signal.feat_corr_rms += b.signal.feat_corr_rms;
  a.signal.feat_cos_rms += b.signal.feat_cos_rms;
  a.signal.token_corr_mean += b.signal.token_corr_mean;
  a.signal.token_corr_rms += b.signal.token_corr_rms;
  a.signal.token_cos_mean += b.signal.token_cos_mean;
  a.signal.token_cos_rms += b.signal.token_cos_rms;
  a.max_median_ratio += b.max_median_ratio;
}
}  // namespace

void OutlierCollector::on_activation(Point p, int64_t layer, Tensor& t, int64_t B, int64_t T) {
  const std::string k = kind(p);
  const int64_t width = t.numel() / (B * T);
  if (!k.empty()) {
    const std::string name = point_label(p, layer);
    kinds_[name] = k;
    // Row kurtosis and inf norm where t lives (row_moments): no host copy of a GPU activation;
    // likewise the seed-B sums below (hidden_state_sums).
    tracker_.add(name, layer, t, per_token_ ? width : T * width, k != "ffn_io");
  }
  // Seed B hidden states.
  const bool embed_out = m_.embed_norm ? p == Point::EmbedNorm : p == Point::Embedding;
  if (embed_out || p == Point::LayerOut || p == Point::FinalNorm) {
    const std::string name = embed_out ? "embedding" : point_label(p, layer);
    Hidden& h = hidden_[name];
    add_into(h.sum, hidden_state_metrics(t, B, T));
    ++h.batches;
  }
}

void OutlierCollector::after_forward(const TransformerLM& model) {
  for (int64_t l = 0; l < model.config().n_layer; ++l) {
    // A GPU attention op computed its rows' entropy (wants_attention_entropy); otherwise the
    // probabilities (the CPU op's, or recomputed on the host) give it.
    const std::vector<double>& rows = model.attention_entropy_rows(static_cast<size_t>(l));
    double entropy;
    if (!rows.empty()) {
      entropy = attention_entropy_from_rows(rows, model.last_seq_len());
    } else {
      const Tensor probs = model.attention_probs(static_cast<size_t>(l));
      if (!probs.defined() || probs.ndim() != 4) continue;
      entropy = attention_entropy(probs.to(Device::CPU), model.config().causal());
    }
    auto& e = entropy_[l];
    e.first += entropy;
    ++e.second;
  }
}

SeedASummary OutlierCollector::summary() const {
  return tracker_.summarize([this](const std::string& name) {
    auto it = kinds_.find(name);
    return it == kinds_.end() ? std::string("other") : it->second;
  });
}

double OutlierCollector::table_inf_norm() const {
  const SeedASummary s = summary();
  return m_.objective == "mlm" ? s.max_ffn_io_inf_norm : s.max_layer_inf_norm;
}

nlohmann::json OutlierCollector::to_json() const {
  nlohmann::json j;
  j["summary"] = analysis::to_json(summary());
  j["summary"]["table_inf_norm"] = table_inf_norm();
  j["seed_a"] = tracker_.to_json();
  nlohmann::json b = nlohmann::json::object();
  for (const auto& [name, h] : hidden_) {
    HiddenStateMetrics m = h.sum;
    const double n = double(std::max<int64_t>(1, h.batches));
    m.kurt.kurtosis /= n;
    m.kurt.var_form /= n;
    m.kurt.rms /= n;
    m.kurt.mean_s2 /= n;
    m.signal.feat_corr_rms /= n;
    m.signal.feat_cos_rms /= n;
    m.signal.token_corr_mean /= n;
    m.signal.token_corr_rms /= n;
    m.signal.token_cos_mean /= n;
    m.signal.token_cos_rms /= n;
    m.max_median_ratio /= n;
    nlohmann::json one;
    put_json(one, "", m);
    b[name] = one;
  }
  j["seed_b"] = b;
  nlohmann::json e = nlohmann::json::object();
  for (const auto& [l, se] : entropy_) e["h." + std::to_string(l)] = se.first / double(se.second);
  j["attention_entropy"] = e;
  return j;
}

}  // namespace oft::analysis
