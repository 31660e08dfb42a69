// The training loop of `oft train` and the evaluation of `oft eval`: data loading, gradient
// accumulation, clipping, AdamW, schedules, non-finite detection, periodic evaluation,
// progress lines, metrics.jsonl and checkpoints (with bit-exact resume).
#pragma once

#include <memory>
#include <string>

#include "data/loader.h"
#include "data/shard.h"
#include "model/transformer.h"
#include "train/run_config.h"

namespace oft {

struct EvalResult {
  double loss = 0;  // mean cross-entropy per predicted token (nats)
  double ppl = 0;   // exp(loss)
  int64_t tokens = 0;
};

struct TrainResult {
  std::string run_dir;
  int64_t steps = 0;
  double train_loss = 0;  // mean loss of the last optimizer step
  EvalResult initial_val, final_val;
  double tokens_per_s = 0;
};

// The train.nonfinite policy: a step whose loss or gradient norm is NaN/Inf either stops the
// run (an oft::Error naming the step and the remedies) or is skipped, up to max_skipped times.
class NonFiniteGuard {
 public:
  NonFiniteGuard(const TrainConfig& t, int64_t already_skipped)
      : skip_(t.nonfinite == "skip"), max_(t.max_skipped), skipped_(already_skipped) {}
  // True when the step must be skipped; throws when the policy says stop. `flagged`: the
  // device's own check (AdamW::finish_stats) found a non-finite value where the host's figures
  // are finite (a per-row loss whose square overflows); the update was not applied.
  bool skip_step(int64_t step, double loss, double grad_norm, bool flagged = false);
  int64_t skipped() const { return skipped_; }

 private:
  bool skip_;
  int64_t max_, skipped_;
};

// Loader options of a run's objective: causal-LM windows, or masked-LM sequences with the
// masking ids of the shard's meta.json (written by `oft data prepare` next to it).
LoaderOptions loader_options(const RunConfig& cfg, const std::string& shard_path);

// Mean validation loss over `max_batches` sequential batches (0 = the whole shard); `base`
// gives the objective, batch size and sequence length.
EvalResult evaluate(TransformerLM& model, std::shared_ptr<const Shard> val, LoaderOptions base,
                    int64_t max_batches);

class AdamW;
// train.overlap_update: opt's steps run on the update stream beside the model's next forward,
// layer by layer (TransformerLM::update_stage), with the same results. Only on the GPU, for one
// process (`on` is ignored otherwise); returns whether it is now on.
bool overlap_update(TransformerLM& model, AdamW& opt, bool on);
// With the update overlapped: the token-embedding rows that `tokens` (the next micro-batch,
// [B, T] i32 on the host) reads, and the other rows, on the model's device, for
// AdamW::split_next_update: the next step then updates the first before the blocks and the
// others after them, instead of the whole table before the forward can start. param is npos
// (and nothing is uploaded) when the update is not overlapped.
struct EmbeddingRows {
  size_t param = static_cast<size_t>(-1);
  Tensor first, rest;
  // opt.split_next_update(param, first, rest) when there is a split.
  void apply(AdamW& opt) const;
};
EmbeddingRows embedding_rows(const TransformerLM& model, const AdamW& opt, const Tensor& tokens);

// Sets OpenMP / OpenBLAS threads (0 = all cores).
void set_cpu_threads(int64_t threads);
// train.device -> the device (auto: the GPU when usable), with a clear error for cuda without one.
Device parse_device(const std::string& device);
// train.precision -> the dtype the model computes in on that device.
DType compute_dtype(const TrainConfig& t, Device device);

// Trains per `cfg`; `quiet` suppresses the progress lines.
TrainResult train(RunConfig& cfg, bool quiet = false);

// Builds the model a checkpoint's config describes and loads its weights.
std::unique_ptr<TransformerLM> load_model_from_checkpoint(const std::string& ckpt_dir,
                                                          RunConfig& cfg_out,
                                                          const std::vector<std::string>& overrides);

}  // namespace oft
