// StepGraph (step_graph.h): when a training micro-step is recorded into a CUDA graph, replayed,
// or left to the caller.
#include "train/step_graph.h"

#include <cstdio>
#include <exception>

#include "core/error.h"

namespace oft {

StepGraph::StepGraph(TransformerLM& model, bool enabled, bool distributed) : model_(model) {
  if (!enabled)
    why_off_ = "train.cuda_graph=false";
  else if (model.device() != Device::CUDA || !ops::device_graphs_available())
    why_off_ = "the model is not on the GPU";
  else if (distributed)
    why_off_ = "data-parallel training (collectives run inside the backward)";
  else if (model.config().objective == "mlm")
    why_off_ = "masked LM (the head runs on each batch's masked positions)";
}

bool StepGraph::run(const Tensor& tokens, const Tensor& targets, const Tensor& mask,
                    double loss_scale, int64_t total_targets) {
  if (!active() || model_.hooked()) return false;
  OFT_ASSERT(tokens.ndim() == 2 && targets.shape() == tokens.shape() &&
                 tokens.device() == Device::CPU && targets.device() == Device::CPU,
             "StepGraph::run: tokens and targets must be [B, T] on the host");
  const int64_t B = tokens.dim(0), T = tokens.dim(1);
  const int32_t* pt = targets.data<int32_t>();
  int64_t n_targets = 0;  // the loss's denominator is recorded, so it is part of the key
  for (int64_t i = 0; i < targets.numel(); ++i) n_targets += pt[i] >= 0;
  model_.reserve_batch(B, T);  // buffers for this shape first: their generation is in the key
  ensure_input(B, T, mask.defined());
  Key key{B, T, n_targets, mask.defined(), loss_scale, total_targets, model_.buffer_generation(),
          model_.params().pending_flags()};

  Recorded* hit = nullptr;
  for (auto& r : recorded_)
    if (r->key == key) hit = r.get();
  if (hit == nullptr) {
    bool warm = false;
    for (const Key& k : warm_) warm |= k == key;
    if (!warm) {
      // Run this key eagerly once first: that allocates the model's buffers and warms the
      // library caches and kernel attributes outside the recording.
      if (warm_.size() == kMaxWarm) warm_.erase(warm_.begin());
      warm_.push_back(std::move(key));
      return false;
    }
    if (recordings_ >= kMinRecordingsToJudge && recordings_ * 4 > replays_) {
      why_off_ = "the step's key (batch shape, target count, loss scale) changed too often";
      std::fprintf(stderr, "oft: CUDA graphs off: %s; steps run without them\n", why_off_.c_str());
      recorded_.clear();
      return false;
    }
    if (recorded_.size() == kMaxGraphs) recorded_.erase(recorded_.begin());
    auto r = std::make_unique<Recorded>();
    if (!record(*r, key, n_targets)) return false;
    recorded_.push_back(std::move(r));
    hit = recorded_.back().get();
  }
  tokens_.copy_from(tokens);
  targets_.copy_from(targets);
  if (mask.defined()) mask_.copy_from(mask);
  hit->graph.launch();
  model_.set_loss_state(hit->loss);
  model_.params().set_pending_flags(hit->pending_after);
  ++replays_;
  return true;
}

void StepGraph::ensure_input(int64_t B, int64_t T, bool with_mask) {
  const Device dev = model_.device();
  if (!tokens_.defined() || tokens_.dim(0) != B || tokens_.dim(1) != T) {
    // New buffers: recordings that read the old ones are stale.
    recorded_.clear();
    tokens_ = Tensor::empty({B, T}, DType::I32, dev);
    targets_ = Tensor::empty({B, T}, DType::I32, dev);
    mask_ = Tensor();
  }
  if (with_mask && !mask_.defined()) mask_ = Tensor::empty({B, T}, DType::I32, dev);
}

bool StepGraph::record(Recorded& r, const Key& key, int64_t n_targets) {
  ParamStore& params = model_.params();
  const std::vector<bool> before = params.pending_flags();
  try {
    r.graph.begin_capture();
    model_.forward(tokens_, targets_, key.mask ? mask_ : Tensor(), /*will_backward=*/true,
                   /*read_loss=*/false, n_targets);
    model_.backward(key.loss_scale, key.total_targets);
    r.graph.end_capture();
    OFT_CHECK(model_.buffer_generation() == key.generation,
              "the model reallocated its buffers while recording");
  } catch (const std::exception& e) {
    r.graph.abort_capture();
    params.set_pending_flags(before);  // the caller's eager step starts from the same flags
    why_off_ = std::string("recording the step failed: ") + e.what();
    std::fprintf(stderr, "oft: CUDA graphs off: %s; steps run without them\n", why_off_.c_str());
    recorded_.clear();
    return false;
  }
  r.key = key;
  r.pending_after = params.pending_flags();
  r.loss = model_.loss_state();
  ++recordings_;
  return true;
}

}  // namespace oft
