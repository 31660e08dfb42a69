// AdamW and learning-rate schedules (see optimizer.h).
#include "train/optimizer.h"

#include <cmath>
#include <utility>

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
  size_t i = 0;
  for (const Param& p : params_.all()) {
    ranges_.push_back({i++, 0, p.value.numel()});
    m_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
    v_.push_back(Tensor::zeros(p.value.shape(), p.value.dtype(), p.value.device()));
  }
}

AdamW::AdamW(ParamStore& params, const TrainConfig& cfg, std::vector<ParamRange> ranges)
    : params_(params), cfg_(cfg), sharded_(true), ranges_(std::move(ranges)) {
  std::vector<bool> seen(params_.all().size(), false);
  for (const ParamRange& r : ranges_) {
    OFT_ASSERT(r.param < seen.size() && !seen[r.param], "AdamW: bad or repeated range");
    seen[r.param] = true;
    const Param& p = params_.all()[r.param];
    OFT_ASSERT(0 <= r.begin && r.begin < r.end && r.end <= p.value.numel(), "AdamW: range of ",
               p.name);
    m_.push_back(Tensor::zeros({r.end - r.begin}, p.value.dtype(), p.value.device()));
    v_.push_back(Tensor::zeros({r.end - r.begin}, p.value.dtype(), p.value.device()));
  }
}

Tensor range_view(const Tensor& t, const ParamRange& r) {
  return t.view({t.numel()}).slice(r.begin, r.end);
}

bool AdamW::decays(const Param& p) const { return cfg_.wd_exclude == "none" || p.matrix; }

void AdamW::add_grad_squares(Tensor& acc) const {
  const auto& ps = params_.all();
  std::vector<Tensor> views;
  views.reserve(ranges_.size());
  for (const ParamRange& r : ranges_) views.push_back(range_view(ps[r.param].grad, r));
  std::vector<const Tensor*> grads;
  for (const Tensor& g : views) grads.push_back(&g);
  if (!grads.empty()) ops::on(acc).sum_squares_multi(acc, grads);
}

double AdamW::grad_sum_squares() const {
  const auto& ps = params_.all();
  if (ps.empty()) return 0.0;
  Tensor acc = Tensor::zeros({1}, DType::F64, ps.front().grad.device());
  add_grad_squares(acc);
  return acc.item();
}

void AdamW::begin_stats() {
  OFT_ASSERT(!sharded_, "AdamW::begin_stats: the device statistics need the whole model");
  const auto& ps = params_.all();
  // The last step's statistics stay alive: an overlapped update may still read them.
  prev_stats_ = std::move(stats_);
  stats_ = Tensor::zeros({4}, DType::F64, ps.empty() ? Device::CPU : ps.front().grad.device());
}

void AdamW::add_loss_stats(const Tensor& row_losses) {
  OFT_ASSERT(stats_.defined(), "AdamW::add_loss_stats before begin_stats");
  if (!row_losses.defined() || row_losses.numel() == 0) return;
  Tensor acc = stats_.slice(1, 2);
  ops::on(acc).sum_squares_into(acc, row_losses);
}

const Tensor& AdamW::finish_stats(double max_norm) {
  OFT_ASSERT(stats_.defined(), "AdamW::finish_stats before begin_stats");
  Tensor acc = stats_.slice(0, 1);
  add_grad_squares(acc);
  ops::on(stats_).clip_from_stats(stats_, max_norm);
  return stats_;
}

double AdamW::grad_norm() const { return std::sqrt(grad_sum_squares()); }

void AdamW::step(double lr, double grad_scale) { update(lr, grad_scale, nullptr); }

void AdamW::step_with_stats(double lr) {
  OFT_ASSERT(stats_.defined(), "AdamW::step_with_stats before finish_stats");
  update(lr, 1.0, &stats_);
}

void AdamW::update(double lr, double grad_scale, const Tensor* stats) {
  ++t_;
  auto& ps = params_.all();
  if (ps.empty() || ranges_.empty()) return;
  ops::AdamWStep h;
  h.lr = lr;
  h.beta1 = cfg_.beta1;
  h.beta2 = cfg_.beta2;
  h.eps = cfg_.adam_eps;
  h.step = t_;
  h.grad_scale = grad_scale;
  h.stats = stats;
  // One fused update of every parameter (range), refreshing its compute copy on the way.
  std::vector<Tensor> value(ranges_.size()), grad(ranges_.size()), compute(ranges_.size());
  std::vector<ops::AdamWTensors> items(ranges_.size());
  for (size_t i = 0; i < ranges_.size(); ++i) {
    Param& p = ps[ranges_[i].param];
    value[i] = sharded_ ? range_view(p.value, ranges_[i]) : p.value;
    grad[i] = sharded_ ? range_view(p.grad, ranges_[i]) : p.grad;
    compute[i] = sharded_ ? range_view(p.compute, ranges_[i]) : p.compute;
    items[i] = {&value[i], &grad[i], &m_[i], &v_[i], &compute[i],
                decays(p) ? cfg_.weight_decay : 0.0};
  }
  // The rows of the last split may be released now: the update that read them finished before
  // anything queued after the next step's first copy to the host (copy_to_host_queued waits for
  // the update), and the trainer queues such copies every step.
  used_first_ = std::move(split_first_);
  used_rest_ = std::move(split_rest_);
  const size_t split = std::exchange(split_param_, static_cast<size_t>(-1));
  if (stage_of_.empty()) {
    ops::on(value[0]).adamw_multi(items, h);
    return;
  }
  // Stage by stage on the update stream, each marked for the forward that waits for it; a
  // split parameter's first rows in its own stage, the others in the last.
  ops::update_stream_begin();
  std::vector<ops::AdamWTensors> stage_items;
  for (int s = 0; s < stages_; ++s) {
    stage_items.clear();
    for (size_t i = 0; i < ranges_.size(); ++i) {
      const size_t p = ranges_[i].param;
      if (p == split) {
        ops::AdamWTensors part = items[i];
        if (stage_of_[p] == s) {
          part.rows = &used_first_;
          stage_items.push_back(part);
        }
        if (s == stages_ - 1) {
          part.rows = &used_rest_;
          stage_items.push_back(part);
        }
      } else if (stage_of_[p] == s) {
        stage_items.push_back(items[i]);
      }
    }
    if (!stage_items.empty()) ops::on(value[0]).adamw_multi(stage_items, h);
    ops::update_stage_done(s);
  }
  ops::update_stream_end();
}

void AdamW::split_next_update(size_t param, Tensor first, Tensor rest) {
  OFT_ASSERT(param < params_.all().size() && first.defined() && rest.defined() &&
                 first.numel() + rest.numel() == params_.all()[param].value.dim(0),
             "split_next_update: the rows must split parameter ", param, "'s rows in two");
  split_param_ = param;
  split_first_ = std::move(first);
  split_rest_ = std::move(rest);
}

void AdamW::set_update_stages(std::vector<int> stage_of, int stages) {
  OFT_CHECK(stage_of.empty() || !sharded_,
            "train.overlap_update: not with a sharded optimizer (train.zero_stage=1)");
  OFT_ASSERT(stage_of.empty() || stage_of.size() == params_.all().size(),
             "set_update_stages: ", stage_of.size(), " stages for ", params_.all().size(),
             " parameters");
  for (int s : stage_of) OFT_ASSERT(0 <= s && s < stages, "set_update_stages: stage ", s);
  stage_of_ = std::move(stage_of);
  stages_ = stages;
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  OFT_ASSERT(!sharded_, "state_tensors() of a sharded AdamW: use dist::gather_optimizer_state");
  std::vector<std::pair<std::string, Tensor>> r;
  const auto& ps = params_.all();
  for (size_t i = 0; i < ps.size(); ++i) {
    r.emplace_back("m." + ps[i].name, m_[i]);
    r.emplace_back("v." + ps[i].name, v_[i]);
  }
  return r;
}

}  // namespace oft
