// Named parameters with their gradients. Layers hold Tensor handles that share storage with
// the entries here, so optimizers, checkpoints and gradient checks see one flat list.
#pragma once

#include <string>
#include <deque>
#include <vector>

#include "core/tensor.h"

namespace oft {

// Mixed precision: `value` (the master weight) and `grad` are f32 (f64 in gradient checks);
// `compute` is the tensor ops read, `value` itself or, when the model computes in bf16, a bf16
// copy that ParamStore::sync_compute() refreshes after every change to `value`.
struct Param {
  std::string name;
  Tensor value;
  Tensor grad;
  Tensor compute;
  bool matrix = false;  // weight matrix or embedding (decayed by default); else bias / norm gain
  bool fixed_init = false;  // initialised at construction (gate biases, gains, zero-init maps);
                            // TransformerLM::init_weights leaves it as it is
  // Set by the layer that writes the gradient first in every backward, with a product that can
  // overwrite (beta = 0): zero_grad() then leaves the gradient as it is and marks it
  // pending_zero instead of clearing it (a pass over the weight gradients saved per step).
  bool first_write_overwrites = false;
  // The gradient's contents are stale and stand for zero: its first writer overwrites them and
  // clears the flag (see take_pending_zero); settle_grads() zeroes what nobody wrote.
  bool pending_zero = false;
};

// For a layer's first gradient write: the beta of its product (0 when the gradient is pending
// zero, else 1: accumulate), and the gradient is real from then on.
inline double take_pending_zero(Param* p) {
  if (p == nullptr || !p->pending_zero) return 1.0;
  p->pending_zero = false;
  return 0.0;
}

class ParamStore {
 public:
  // Creates a zero-initialised parameter and its gradient. `dtype` is the dtype the model
  // computes in: for bf16, value and grad are f32 masters and `compute` a bf16 copy.
  Param& create(const std::string& name, const Shape& shape, DType dtype, Device device,
                bool matrix);
  // A deque: references returned by create() stay valid as more parameters are added.
  std::deque<Param>& all() { return params_; }
  const std::deque<Param>& all() const { return params_; }
  Param* find(const std::string& name);
  int64_t numel() const;
  // Starts a step's gradients: zeroes them, except those of first_write_overwrites parameters,
  // which become pending_zero. With zero_after_update(true) (train.overlap_update: this store's
  // optimizer step runs on the update stream and the model's forward waits for it before the
  // backward) an update in flight may still read them, so they are zeroed on the update stream
  // after it; otherwise on the compute stream, whatever another model's update is doing.
  void zero_grad();
  void zero_after_update(bool on) { zero_after_update_ = on; }
  // Zeroes the gradients still pending_zero (their layer did not run, e.g. a masked-LM batch
  // with no masked position). Models call it at the end of backward(), so every gradient is
  // real when backward() returns.
  void settle_grads();
  // The pending_zero flags of every parameter, in order, and their restoration: a recorded
  // step (CUDA graph) bakes in which gradients its products overwrite, and a replay leaves the
  // flags as the recorded step did.
  std::vector<bool> pending_flags() const;
  void set_pending_flags(const std::vector<bool>& flags);
  // Refreshes the compute copies from the master values (after init, load, optimizer steps
  // and weight quantization); free when there are no separate copies.
  void sync_compute();
  // Re-homes a freshly created (still zero) parameter into zero-padded storage of `rows` leading
  // rows: value / grad / compute become views of the first rows, and the full padded compute
  // and gradient tensors are returned (the output layer pads the vocabulary to an aligned width).
  static void pad_rows(Param& p, int64_t rows, Tensor& compute_full, Tensor& grad_full);

 private:
  std::deque<Param> params_;
  bool zero_after_update_ = false;
};

}  // namespace oft
