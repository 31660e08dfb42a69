// OutlierCollector: an ActivationHook that feeds the outlier metrics of both source systems
// from a model's forward passes (REFERENCE.md §4).
//   Seed A tensors — causal LM (OPT): per layer the block output (residual stream), FFN output
//   (fc2), the two branch-input norms and the attention output projection, plus the final norm;
//   masked LM (BERT): per layer the FFN output, the FFN input+output sum (inf norm only) and its
//   LayerNorm. Kurtosis / inf norm rows are whole sequences (T*d values, metrics.rows=sequence,
//   the BERT convention) or tokens (d values, metrics.rows=token).
//   Seed B hidden states: the embedding output, every block output (= next block input) and the
//   final normed output, averaged over batches; plus attention entropy per layer.
#pragma once

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "analysis/metrics.h"
#include "model/hooks.h"
#include "model/transformer.h"

namespace oft::analysis {

class OutlierCollector : public ActivationHook {
 public:
  OutlierCollector(const ModelConfig& m, bool per_token_rows);

  void on_activation(Point p, int64_t layer, Tensor& t, int64_t B, int64_t T) override;
  // After each forward: attention entropy of every layer, from the rows' entropies a GPU op
  // computed (wants_attention_entropy) or from the model's saved probabilities.
  void after_forward(const TransformerLM& model);
  bool wants_attention_entropy() const override { return true; }

  // {"summary": {...seed A aggregates...}, "seed_a": {per tensor}, "seed_b": {per hidden state},
  //  "attention_entropy": {per layer}}
  nlohmann::json to_json() const;
  SeedASummary summary() const;
  // The paper table's "max inf norm": the residual stream's (OPT: layer outputs; BERT: the
  // FFN input+output sums), and "avg kurtosis".
  double table_inf_norm() const;

 private:
  std::string kind(Point p) const;
  ModelConfig m_;
  bool per_token_;
  SeedATracker tracker_;
  std::map<std::string, std::string> kinds_;  // tracked name -> seed A kind
  struct Hidden {
    HiddenStateMetrics sum{};
    int64_t batches = 0;
  };
  std::map<std::string, Hidden> hidden_;
  std::map<int64_t, std::pair<double, int64_t>> entropy_;  // layer -> (sum, batches)
};

}  // namespace oft::analysis
