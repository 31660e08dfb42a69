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

// Elements [begin, end) (row-major) of parameter `param` (an index into ParamStore::all()):
// the pieces of the model a ZeRO-1 rank updates.
struct ParamRange {
  size_t param = 0;
  int64_t begin = 0, end = 0;
  bool operator==(const ParamRange&) const = default;
};

class AdamW {
 public:
  AdamW(ParamStore& params, const TrainConfig& cfg);
  // Sharded (ZeRO-1): moments and updates for `ranges` only (at most one range per parameter).
  // step() writes the master weights and compute copies of those ranges; the caller gathers
  // the other ranks' ranges.
  AdamW(ParamStore& params, const TrainConfig& cfg, std::vector<ParamRange> ranges);
  // Sum of squared gradients (f64 accumulation) over all parameters, or over the ranges when
  // sharded (the ranks' sums add up to the total).
  double grad_sum_squares() const;
  // sqrt(grad_sum_squares()).
  double grad_norm() const;
  // One update with learning rate `lr`; gradients are multiplied by grad_scale first.
  void step(double lr, double grad_scale);
  // The same step with its gradient norm, clipping and non-finite check left on the device, so
  // that one process queues the update without waiting for the norm (the trainer reads the
  // statistics a step later; unsharded only, a shard's sums are partial):
  //   begin_stats()              before the step's first forward;
  //   add_loss_stats(losses)     after each forward (its per-row losses);
  //   finish_stats(max_norm)     after the backward: returns the statistics, f64 [4] on the
  //                              device (ops::Backend::clip_from_stats), to read back:
  //                              [0] = grad_sum_squares(), [3] != 0 for a non-finite step;
  //   step_with_stats(lr)        the update, clipped by [2], or none at all when [3] != 0
  //                              (as the host's step(lr, scale) would have been skipped).
  void begin_stats();
  void add_loss_stats(const Tensor& row_losses);
  const Tensor& finish_stats(double max_norm);
  void step_with_stats(double lr);
  // The update beside the next forward (train.overlap_update; unsharded): step() then queues
  // it on the update stream in stages, parameter i (ParamStore order) in stage stage_of[i] of
  // `stages` (TransformerLM::update_stage), marks every stage (ops::update_stage_done) and
  // returns; the model's forward waits for each stage before reading it
  // (TransformerLM::wait_for_update). Empty stage_of: one launch on the compute stream.
  void set_update_stages(std::vector<int> stage_of, int stages);
  bool overlapped() const { return !stage_of_.empty(); }
  // For the next overlapped step() only: parameter `param` (ParamStore index) updated in two
  // parts, the rows `first` (i32 [R] on its device) in its own stage and the rows `rest` (every
  // other row) in the last stage. The trainer passes the token embedding's rows the next batch
  // reads (embedding_rows() in trainer.h), so the forward starts after a fraction of its
  // update. Ignored when the step is not overlapped.
  void split_next_update(size_t param, Tensor first, Tensor rest);
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }
  // Moment tensors named "m.<param>" / "v.<param>" for checkpoints (unsharded only: a sharded
  // optimizer's full state is assembled by dist::gather_optimizer_state).
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  bool decays(const Param& p) const;

  bool sharded() const { return sharded_; }
  const std::vector<ParamRange>& ranges() const { return ranges_; }
  // Moments of range i: [end - begin] when sharded, else the parameter's shape.
  Tensor& m(size_t i) { return m_[i]; }
  Tensor& v(size_t i) { return v_[i]; }
  const Tensor& m(size_t i) const { return m_[i]; }
  const Tensor& v(size_t i) const { return v_[i]; }
  const ParamStore& params() const { return params_; }

 private:
  ParamStore& params_;
  TrainConfig cfg_;
  bool sharded_ = false;
  std::vector<ParamRange> ranges_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
  // begin_stats(): this step's statistics, and the last step's, which an overlapped update may
  // still read while this step's are written.
  Tensor stats_, prev_stats_;
  void add_grad_squares(Tensor& acc) const;
  void update(double lr, double grad_scale, const Tensor* stats);
  std::vector<int> stage_of_;  // set_update_stages
  int stages_ = 0;
  // split_next_update(): the parameter (or npos) and its rows; the rows of the last step stay
  // alive until the next one, after the update stream has read them.
  size_t split_param_ = static_cast<size_t>(-1);
  Tensor split_first_, split_rest_, used_first_, used_rest_;
};

// Elements [r.begin, r.end) of `t` as a 1-D view.
Tensor range_view(const Tensor& t, const ParamRange& r);

}  // namespace oft
