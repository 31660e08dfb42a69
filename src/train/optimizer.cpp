// AdamW and learning-rate schedules (see optimizer.h).
#include "train/optimizer.h"

#include <cmath>

namespace oft {

double learning_rate(const TrainConfig& t, int64_t warmup, int64_t step) {
  if (step < warmup) return t.lr * double(step + 1) / double(warmup);
  if (t.schedule == "constant") return t.lr;
  const int64_t decay_steps = std::max<int64_t>(1, t.steps - warmup);
  const double progress = std::min(1.0, double(step - warmup) / double(decay_steps));
  const double floor = t.min_lr_ratio;
  if (t.schedule == "cosine")
    return t.lr * (floor + (1 - floor) * 0.5 * (1 + std::cos(M_PI * progress)));
  return t.lr * (floor + (1 - floor) * (1 - progress));
}

AdamW::AdamW(ParamStore& params, const TrainConfig& cfg) : params_(params), cfg_(cfg) {
  for (const Param& p : params_.all()) {
    m_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
    v_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
  }
}

bool AdamW::decays(const Param& p) const { return cfg_.wd_exclude == "none" || p.matrix; }

double AdamW::grad_norm() const {
  if (params_.all().empty()) return 0.0;
  const Device dev = params_.all().front().grad.device();
  Tensor acc = Tensor::zeros({1}, DType::F64, dev);
  std::vector<const Tensor*> grads;
  for (const Param& p : params_.all()) grads.push_back(&p.grad);
  ops::on(acc).sum_squares_multi(acc, grads);
  return std::sqrt(acc.item());
}

void AdamW::step(double lr, double grad_scale) {
  ++t_;
  auto& ps = params_.all();
  if (ps.empty()) return;
  ops::AdamWStep h;
  h.lr = lr;
  h.beta1 = cfg_.beta1;
  h.beta2 = cfg_.beta2;
  h.eps = cfg_.adam_eps;
  h.step = t_;
  h.grad_scale = grad_scale;
  // One fused update of every parameter, refreshing the compute copies on the way.
  std::vector<ops::AdamWTensors> items(ps.size());
  for (size_t i = 0; i < ps.size(); ++i)
    items[i] = {&ps[i].value, &ps[i].grad, &m_[i], &v_[i], &ps[i].compute,
                decays(ps[i]) ? cfg_.weight_decay : 0.0};
  ops::on(ps[0].value).adamw_multi(items, h);
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> r;
  const auto& ps = params_.all();
  for (size_t i = 0; i < ps.size(); ++i) {
    r.emplace_back("m." + ps[i].name, m_[i]);
    r.emplace_back("v." + ps[i].name, v_[i]);
  }
  return r;
}

}  // namespace oft
