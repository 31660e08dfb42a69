// Training micro-steps of a causal LM on the GPU through CUDA graphs (train.cuda_graph): the
// forward and backward are recorded once per batch shape and then replayed with one launch, so
// the GPU does not wait for the host between the step's few hundred kernels (H100, one call:
// gpt2_124m +0.9 / +1.2%, opt_125m_vanilla +2.6 / +1.8% tokens/s; docs/performance.md).
//
// A recorded step holds the addresses of the model's buffers, parameters and gradients and the
// values the host passed to its kernels. It reads the batch from device buffers of its own,
// which run() fills before each replay, and everything else it depends on is its key: the
// batch shape, the number of counted targets (the loss's denominator), the mask's presence, the
// loss scale and target total, which gradients its products overwrite (the first micro-batch of
// a step) and the model's buffer generation. A micro-step that matches no recorded one runs
// eagerly, and the second time its key is seen it is recorded. Observed forwards (metric hooks)
// always run eagerly. (Batches whose count of ignored targets varies keep changing the key:
// recording then stops, see kMinRecordingsToJudge.)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/transformer.h"
#include "ops/device_graph.h"

namespace oft {

class StepGraph {
 public:
  // enabled: train.cuda_graph. Off (why_off() says why) on the CPU, for data-parallel ranks
  // (their backward interleaves collectives) and for masked LMs (the head's rows follow the
  // batch's masked positions).
  StepGraph(TransformerLM& model, bool enabled, bool distributed);

  // model.forward(tokens, targets, mask, will_backward = true, read_loss = false) and then
  // model.backward(loss_scale, total_targets) for one micro-batch, through a recorded graph.
  // Returns false, having done nothing, when the caller must run them itself (see above).
  // tokens, targets, mask: [B, T] i32 on the host (mask undefined when there is none;
  // targets < 0 are ignored).
  bool run(const Tensor& tokens, const Tensor& targets, const Tensor& mask, double loss_scale,
           int64_t total_targets);

  bool active() const { return why_off_.empty(); }
  // Empty while graphs are in use; else the reason they are not.
  const std::string& why_off() const { return why_off_; }
  int64_t replays() const { return replays_; }
  int64_t recordings() const { return recordings_; }

 private:
  struct Key {
    int64_t B = 0, T = 0, n_targets = 0;
    bool mask = false;
    double loss_scale = 0;
    int64_t total_targets = 0;
    uint64_t generation = 0;
    std::vector<bool> pending;
    bool operator==(const Key&) const = default;
  };
  struct Recorded {
    Key key;
    ops::DeviceGraph graph;
    std::vector<bool> pending_after;  // the gradients' pending flags the step leaves
    TransformerLM::LossState loss;    // what last_loss() reads after it
  };
  bool record(Recorded& r, const Key& key, int64_t n_targets);
  // Device input buffers of [B, T] (and the mask's when needed); new ones drop the recordings
  // (they read the old ones), so run() calls it before looking a key up.
  void ensure_input(int64_t B, int64_t T, bool with_mask);

  TransformerLM& model_;
  std::string why_off_;
  std::vector<std::unique_ptr<Recorded>> recorded_;  // at most kMaxGraphs, newest last
  std::vector<Key> warm_;  // the last keys that ran eagerly: recorded when seen again
  Tensor tokens_, targets_, mask_;  // the graphs' inputs on the device
  int64_t replays_ = 0, recordings_ = 0;
  static constexpr size_t kMaxGraphs = 2;      // first and later micro-batches of a step
  static constexpr size_t kMaxWarm = 4;
  // Recording stops when, after this many recordings, they are more than a quarter of the
  // replays (the key changes too often for recordings to pay).
  static constexpr int64_t kMinRecordingsToJudge = 8;
};

}  // namespace oft
