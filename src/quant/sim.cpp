// QuantSimulator (see sim.h).
#include "quant/sim.h"

namespace oft::quant {

QuantSimulator::QuantSimulator(const QuantConfig& q, const ModelConfig& m) : q_(q), m_(m) {
  // Fail early on unknown estimator names.
  make_estimator(q_.ranges_acts, static_cast<int>(q_.n_bits_act), false, q_.percentile);
}

int QuantSimulator::bits_of(Point p) const {
  const int act = static_cast<int>(q_.n_bits_act);
  const bool all_ln16 = q_.quant_setup == "fp32_head+int16_all_LN";
  const bool final_ln16 = all_ln16 || q_.quant_setup == "fp32_head+int16_final_LN";
  const bool mlm = m_.objective == "mlm";
  const bool gated = m_.attn_gate_type != "none";
  const bool post_norm = m_.block == "post_norm";
  switch (p) {
    case Point::EmbedNorm:
    case Point::Norm1:
    case Point::Norm2:
    case Point::AttnNorm:
    case Point::MlmHidden:
      return all_ln16 ? 16 : act;
    case Point::FinalNorm:
      return final_ln16 ? 16 : act;
    case Point::LayerOut:  // a LayerNorm output in post-norm blocks, else a residual sum
      return post_norm && all_ln16 ? 16 : act;
    case Point::Context:  // OPT quantizes the context before the gate, BERT after it
      return (mlm && gated) ? 0 : act;
    case Point::GatedContext:
      return mlm ? act : 0;
    case Point::Embedding:
      // BERT quantizes the embedding sum before its LayerNorm; so does OPT (no LayerNorm).
      return act;
    case Point::QKV:
    case Point::AttnOut:
    case Point::Residual:
    case Point::FfnAct:
    case Point::FfnOut:
    case Point::FfnSum:
      return act;
  }
  return 0;
}

namespace {
// Feeds one activation to a range estimator. Min-max estimators need only the tensor's range,
// which its own backend computes where the tensor lives (value_range: no copy of a GPU
// activation); percentile and MSE estimators see all values, through an f32 host copy when the
// tensor is on the GPU or bf16.
void observe_activation(RangeEstimator& est, const Tensor& t) {
  OFT_CHECK(t.numel() > 0, "quantization: cannot take the range of an empty tensor");
  if (est.min_max_only()) {
    const ops::ValueRange r = ops::on(t).value_range(t);
    OFT_CHECK(!r.nan, "quantization: NaN in a tensor whose range is being estimated");
    est.observe(Tensor::from_vector({2}, {r.lo, r.hi}, DType::F64));
    return;
  }
  if (t.device() == Device::CPU && t.dtype() != DType::BF16) {
    est.observe(t);
    return;
  }
  Tensor host = t.to(Device::CPU);
  if (host.dtype() == DType::BF16) host = host.cast(DType::F32);
  est.observe(host);
}
}  // namespace

void QuantSimulator::on_activation(Point p, int64_t layer, Tensor& t, int64_t, int64_t) {
  const int bits = bits_of(p);
  if (bits == 0) return;
  // The activation is quantized where it lives, by its backend's fake_quant (same bits on the
  // CPU and the GPU). Evaluation only; training never calls this.
  const bool symmetric = q_.qmethod_acts == "symmetric_uniform";
  const std::string label = point_label(p, layer);
  ActQuant& a = acts_[label];
  if (calibrating_) {
    if (!a.est) a.est = make_estimator(q_.ranges_acts, bits, symmetric, q_.percentile);
    observe_activation(*a.est, t);
    const auto [lo, hi] = a.est->range();
    a.grid = make_grid(lo, hi, bits, symmetric);
    a.ready = true;
  }
  OFT_CHECK(a.ready, "quantization: no calibrated range for ", label,
            " (run the calibration batches first; quant.est_num_batches >= 1)");
  ops::on(t).fake_quant(t, op_grid(a));
}

void QuantSimulator::observe_range(const std::string& label, double lo, double hi) {
  const bool symmetric = q_.qmethod_acts == "symmetric_uniform";
  const int bits = static_cast<int>(q_.n_bits_act);
  ActQuant& a = acts_[label];
  if (!a.est) a.est = make_estimator(q_.ranges_acts == "current_minmax" ? "current_minmax" : "running_minmax",
                                     bits, symmetric, q_.percentile);
  a.est->observe(Tensor::from_vector({2}, {lo, hi}, DType::F64));
  const auto [mn, mx] = a.est->range();
  a.grid = make_grid(mn, mx, bits, symmetric);
  a.ready = true;
}

ops::FakeQuant QuantSimulator::op_grid(const ActQuant& a) {
  ops::FakeQuant f;
  f.enabled = a.ready;
  f.delta = a.grid.delta;
  f.zero_point = a.grid.zero_point;
  f.qmin = a.grid.qmin;
  f.qmax = a.grid.qmax;
  return f;
}

AttentionQuantRequest* QuantSimulator::attention_quant(int64_t layer) {
  AttentionQuantRequest& r = attn_req_[layer];
  const auto s = acts_.find(point_label(Point::QKV, layer) + ".scores");
  const auto p = acts_.find(point_label(Point::QKV, layer) + ".probs");
  r.scores = s != acts_.end() ? op_grid(s->second) : ops::FakeQuant{};
  r.probs = p != acts_.end() ? op_grid(p->second) : ops::FakeQuant{};
  r.observe = calibrating_;
  OFT_CHECK(calibrating_ || (r.scores.enabled && r.probs.enabled), "quantization: no calibrated "
            "range for the attention scores of layer ", layer, " (calibrate first)");
  return &r;
}

void QuantSimulator::on_attention_ranges(int64_t layer, const double sr[2], const double pr[2]) {
  if (!calibrating_) return;
  observe_range(point_label(Point::QKV, layer) + ".scores", sr[0], sr[1]);
  observe_range(point_label(Point::QKV, layer) + ".probs", pr[0], pr[1]);
}

bool QuantSimulator::weight_quantized(const Param& p) const {
  // Every Linear / LayerNorm / Embedding weight; never biases, LayerNorm betas, gates (kept FP,
  // as the source does), block gains or shaped-attention scalars.
  if (!p.name.ends_with(".weight")) return false;
  if (p.name.find(".gate.") != std::string::npos) return false;
  return true;
}

void QuantSimulator::quantize_weights(TransformerLM& model) {
  OFT_CHECK(saved_.empty(), "quantize_weights called twice without restore_weights");
  const bool symmetric = true;
  const int bits = static_cast<int>(q_.n_bits);
  const bool fp_head = q_.quant_setup != "all";
  for (Param& p : model.params().all()) {
    if (!weight_quantized(p)) continue;
    Tensor host = p.value.to(Device::CPU);
    saved_.emplace_back(p.name, host.clone());
    if (p.name == "wte.weight" && fp_head) model.set_head_weight(p.compute.clone());
    if (q_.per_channel && host.ndim() == 2) {
      std::vector<QGrid> grids;
      for (const auto& [lo, hi] : row_min_max(host)) grids.push_back(make_grid(lo, hi, bits, symmetric));
      fake_quant_per_channel(host, grids);
      for (auto& e : encodings_of(p.name, grids)) param_enc_.push_back(e);
    } else {
      auto est = make_estimator(q_.ranges_weights, bits, symmetric, q_.percentile);
      est->observe(host);
      const auto [lo, hi] = est->range();
      const QGrid g = make_grid(lo, hi, bits, symmetric);
      fake_quant(host, g);
      param_enc_.push_back(encoding_of(p.name, g));
    }
    p.value.copy_from(host.to(p.value.device()));
  }
  model.params().sync_compute();
}

void QuantSimulator::restore_weights(TransformerLM& model) {
  for (auto& [name, t] : saved_) {
    Param* p = model.params().find(name);
    OFT_ASSERT(p != nullptr, "restore ", name);
    p->value.copy_from(t.to(p->value.device()));
  }
  saved_.clear();
  model.params().sync_compute();
  model.set_head_weight(Tensor());
}

std::vector<Encoding> QuantSimulator::activation_encodings() const {
  std::vector<Encoding> r;
  for (const auto& [label, a] : acts_)
    if (a.ready) r.push_back(encoding_of(label, a.grid));
  return r;
}

}  // namespace oft::quant
