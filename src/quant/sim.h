// Simulated (fake) quantization of a whole model, as the source system evaluates W8A8 and
// lower (REFERENCE.md §5): weights quantized in place (symmetric, per tensor or per output
// channel; biases, gates and gains stay FP), activations quantized at the forward-pass points of
// hooks.h by an ActivationHook whose ranges are estimated on calibration batches and then frozen.
// quant_setup decides what stays FP: `fp32_head` keeps the output layer's weight FP,
// `+int16_final_LN` / `+int16_all_LN` quantize the final / every LayerNorm output to 16 bits.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/hooks.h"
#include "model/transformer.h"
#include "quant/encodings.h"
#include "quant/quantizer.h"
#include "quant/range_estimators.h"
#include "train/run_config.h"

namespace oft::quant {

class QuantSimulator : public ActivationHook {
 public:
  QuantSimulator(const QuantConfig& q, const ModelConfig& m);

  // Quantizes every weight of `model` in place, keeping FP copies; restore_weights() undoes it.
  void quantize_weights(TransformerLM& model);
  void restore_weights(TransformerLM& model);
  // While calibrating, each quantized point updates its range estimator and quantizes with the
  // current estimate; afterwards the grids are frozen.
  void set_calibrating(bool on) { calibrating_ = on; }

  void on_activation(Point p, int64_t layer, Tensor& t, int64_t B, int64_t T) override;
  // Attention scores (before the mask) and probabilities are quantized inside the attention
  // op. Their ranges come from the per-batch min/max the op reports, combined by the
  // activation estimator (percentile / MSE estimators see only those two values here).
  AttentionQuantRequest* attention_quant(int64_t layer) override;
  void on_attention_ranges(int64_t layer, const double score_range[2],
                           const double prob_range[2]) override;

  // Which points are quantized and with how many bits (0 = left FP).
  int bits_of(Point p) const;
  std::vector<Encoding> activation_encodings() const;
  std::vector<Encoding> param_encodings() const { return param_enc_; }
  size_t quantized_points() const { return acts_.size(); }

 private:
  struct ActQuant {
    std::unique_ptr<RangeEstimator> est;
    QGrid grid;
    bool ready = false;
  };
  bool weight_quantized(const Param& p) const;

  QuantConfig q_;
  ModelConfig m_;
  bool calibrating_ = false;
  std::map<std::string, ActQuant> acts_;
  std::map<int64_t, AttentionQuantRequest> attn_req_;
  void observe_range(const std::string& label, double lo, double hi);
  static ops::FakeQuant op_grid(const ActQuant& a);
  std::vector<std::pair<std::string, Tensor>> saved_;  // FP copies of quantized weights
  std::vector<Encoding> param_enc_;
};

}  // namespace oft::quant
