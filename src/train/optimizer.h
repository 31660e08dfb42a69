// AdamW over a ParamStore (decoupled weight decay, PyTorch semantics) with the source systems'
// weight-decay exclusions, global-norm gradient clipping and the learning-rate schedules.
#pragma once

#include <vector>

#include "model/params.h"
#include "ops/ops.h"
#include "train/run_config.h"

namespace oft {

// Learning rate for optimizer step `step` (0-based): linear warmup (step+1)/warmup, then
// linear / cosine decay to lr * min_lr_ratio at the last step, or constant.
double learning_rate(const TrainConfig& t, int64_t warmup, int64_t step);

class AdamW {
 public:
  AdamW(ParamStore& params, const TrainConfig& cfg);
  // sqrt(sum of squared gradients) over all parameters (f64 accumulation).
  double grad_norm() const;
  // One update with learning rate `lr`; gradients are multiplied by grad_scale first.
  void step(double lr, double grad_scale);
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }
  // Moment tensors named "m.<param>" / "v.<param>" for checkpoints.
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  bool decays(const Param& p) const;

 private:
  ParamStore& params_;
  TrainConfig cfg_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

}  // namespace oft
