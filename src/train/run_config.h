// The complete configuration of a run: model.*, data.*, train.* and run.* keys, their
// defaults, documentation and ranges, preset lookup (configs/NAME.yaml) and the cross-field
// checks that a single key's range cannot express.
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "model/model_config.h"

namespace oft {

struct DataConfig {
  std::string train = "data/cache/moby_sp2k/train.bin";  // token shard for training
  std::string val = "data/cache/moby_sp2k/val.bin";      // token shard for evaluation
  std::string tokenizer = "";  // tokenizer spec used to prepare the shards (for reports)
  int64_t seq_len = 128;       // T
  double mlm_probability = 0.15;  // masked LM: share of positions selected (80/10/10 rule)
  bool pack = true;  // masked LM: pack documents into T-token windows (false: one padded
                     // document per sequence, Hugging Face's --line_by_line)
};

struct TrainConfig {
  int64_t batch_size = 16;  // sequences per micro-batch
  int64_t grad_accum = 1;   // micro-batches per optimizer step
  int64_t steps = 1000;
  double lr = 1e-3;
  std::string schedule = "linear";  // linear | cosine | constant (after warmup)
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;  // alternative to warmup_steps: a fraction of train.steps
  double min_lr_ratio = 0.0;  // final lr = lr * min_lr_ratio
  double weight_decay = 0.0;
  std::string wd_exclude = "bias_norm";  // bias_norm: no decay on biases / norm gains | none
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
  double grad_clip = 1.0;  // max global gradient norm; 0 disables
  std::string nonfinite = "stop";  // stop | skip: policy for a NaN/Inf loss or gradient
  int64_t max_skipped = 10;        // with nonfinite=skip, stop after this many skipped steps
  int64_t seed = 1234;
  int64_t eval_every = 200;   // 0: only at the end
  int64_t eval_batches = 20;  // 0: the whole validation shard
  int64_t log_every = 10;
  int64_t ckpt_every = 0;        // 0: only at the end
  int64_t keep_checkpoints = 2;  // newest checkpoints kept (the final one is always kept)
  bool resume = false;           // continue from the run directory's latest checkpoint
  std::string init_from;         // start from these weights (a run, checkpoints/ or step dir,
                                 // e.g. one `oft import-hf` wrote) with a fresh optimizer
  int64_t stop_at = 0;           // end this invocation after step N with a checkpoint (0 = off)
  std::string device = "auto";   // auto | cpu | cuda
  std::string precision = "auto";  // auto | bf16 | f32 (activations; masters are f32)
  int64_t threads = 0;           // CPU threads; 0 = all cores
  int64_t zero_stage = 0;        // multi-GPU: 1 = shard the AdamW moments over the GPUs (ZeRO-1)
  std::string grad_reduce_dtype = "f32";  // multi-GPU: dtype gradients travel in (f32 | bf16)
  bool cuda_graph = true;  // GPU: replay each micro-step's kernels from a CUDA graph (step_graph.h)
  // GPU, one process: the AdamW step beside the next forward, on the update stream (ops.h);
  // opt-in until it has been measured on a GPU
  bool overlap_update = false;
};

// Simulated quantization for `oft validate --quantize` (REFERENCE.md §5; seed A's flag names).
struct QuantConfig {
  std::string quant_setup = "fp32_head";  // all | fp32_head | fp32_head+int16_final_LN |
                                          // fp32_head+int16_all_LN
  int64_t n_bits = 8;                     // weights
  int64_t n_bits_act = 8;                 // activations
  std::string qmethod_acts = "asymmetric_uniform";    // asymmetric_uniform | symmetric_uniform
  std::string ranges_acts = "running_minmax";         // current_minmax | running_minmax |
                                                      // percentile | mse
  std::string ranges_weights = "current_minmax";      // current_minmax | mse
  bool per_channel = false;               // per-output-channel weight grids
  double percentile = 99.999;             // for ranges_acts=percentile
  int64_t est_num_batches = 16;           // calibration batches
  std::string calib_data = "auto";        // train | val | auto (causal LM: train, masked LM: val)
};

// Outlier metrics of `oft validate` and of training (REFERENCE.md §4).
struct MetricsConfig {
  int64_t batches = 100;            // evaluation batches the outlier metrics are computed over
  std::string rows = "sequence";    // seed A kurtosis rows: whole sequences (T*d) or tokens (d)
  int64_t every = 0;                // during training: log the metrics every N steps (0 = off)
};

struct RunConfig {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  QuantConfig quant;
  MetricsConfig metrics;
  std::string name = "run";  // run.name: default run directory is runs/<name>
  std::string dir = "";      // run.dir: overrides runs/<name>

  RunConfig();
  RunConfig(const RunConfig&) = delete;  // the registry points into this object
  RunConfig& operator=(const RunConfig&) = delete;

  ConfigRegistry& registry() { return reg_; }
  const ConfigRegistry& registry() const { return reg_; }

  // Loads a preset name (configs/NAME.yaml) or a YAML path, then overrides; validates.
  void load(const std::string& preset_or_yaml, const std::vector<std::string>& overrides);
  // Cross-field validation; errors name the keys and the fix.
  void validate() const;
  std::string run_dir() const;
  int64_t warmup() const;  // resolved warmup steps

 private:
  ConfigRegistry reg_;
};

// configs/NAME.yaml for a preset name, or the path itself for a .yaml path.
std::string resolve_preset(const std::string& name_or_path);
std::vector<std::string> list_presets();

}  // namespace oft
