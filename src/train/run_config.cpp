// RunConfig: key registration, preset resolution and validation (see run_config.h).
#include "train/run_config.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include "core/error.h"
#include "core/resources.h"

namespace fs = std::filesystem;

namespace oft {

namespace {
constexpr int64_t kBig = std::numeric_limits<int64_t>::max();
constexpr double kInf = std::numeric_limits<double>::infinity();
}  // namespace

RunConfig::RunConfig() {
  auto& r = reg_;
  ModelConfig& m = model;
  r.add("model.arch", &m.arch, "model family (naming / interop conventions)", {"gpt2", "opt"});
  r.add("model.n_layer", &m.n_layer, "number of transformer blocks", 1, 1024);
  r.add("model.d_model", &m.d_model, "model width", 1, 1 << 16);
  r.add("model.n_head", &m.n_head, "attention heads (must divide d_model)", 1, 1024);
  r.add("model.d_ff", &m.d_ff, "MLP hidden width", 1, 1 << 18);
  r.add("model.vocab_size", &m.vocab_size, "vocabulary size; 0 = from the training shard", 0,
        1 << 24);
  r.add("model.max_seq_len", &m.max_seq_len, "rows of the position table", 1, 1 << 20);
  r.add("model.word_embed_proj_dim", &m.word_embed_proj_dim,
        "token embedding width with project_in / project_out to and from d_model (OPT-350m: "
        "512); 0 = d_model, no projections", 0, 1 << 16);
  r.add("model.activation", &m.activation, "MLP activation",
        {"relu", "gelu", "gelu_tanh", "gelu_new", "gelu_erf"});
  r.add("model.norm", &m.norm, "normalisation layer", {"layernorm", "rmsnorm", "none"});
  r.alias("model.norm_type", "model.norm");  // seed B's Hydra name
  r.add("model.norm_eps", &m.norm_eps, "norm epsilon", 0.0, 1.0);
  r.add("model.final_norm", &m.final_norm, "norm before the output layer");
  r.add("model.bias", &m.bias, "biases in linear layers and LayerNorm");
  r.add("model.init_std", &m.init_std, "std of the N(0, s) weight initialisation", 0.0, 10.0);
  r.add("model.attn_softmax", &m.attn_softmax,
        "attention probabilities: softmax | softmax1 | clipped(GAMMA:ZETA)");
  r.alias("attn_softmax", "model.attn_softmax");
  r.add("model.alpha", &m.alpha, "clipped softmax with gamma = -alpha / data.seq_len (0 = off)",
        0.0, 1e6);
  r.add("model.attn_gate_type", &m.attn_gate_type, "gated attention type",
        {"none", "unconditional_per_head", "conditional_per_head", "conditional_per_token"});
  r.alias("attn_gate_type", "model.attn_gate_type");
  r.add("model.attn_gate_init", &m.attn_gate_init, "initial gate probability pi_init", 1e-6,
        1 - 1e-6);
  r.alias("attn_gate_init", "model.attn_gate_init");
  r.add("model.attn_gate_mlp", &m.attn_gate_mlp, "per-head MLP gate (D -> hidden -> 1)");
  r.alias("attn_gate_mlp", "model.attn_gate_mlp");
  r.add("model.attn_gate_hidden", &m.attn_gate_hidden, "hidden width of the MLP gate", 1, 1 << 16);
  r.add("model.attn_gate_linear_all_features", &m.attn_gate_linear_all_features,
        "gate from all features: one Linear(d_model -> n_head) per token");
  r.alias("attn_gate_linear_all_features", "model.attn_gate_linear_all_features");
  r.add("model.objective", &m.objective, "training objective: causal LM or masked LM (BERT)",
        {"clm", "mlm"});
  r.add("model.type_vocab_size", &m.type_vocab_size, "token-type embeddings (BERT: 2; 0 = none)",
        0, 1024);
  r.add("model.embed_norm", &m.embed_norm, "LayerNorm after the embedding sum (BERT)");
  r.add("model.block", &m.block, "block type", {"pre_norm", "post_norm", "parallel", "op", "skipless", "skipless_parallel"});
  r.add("model.qk_norm", &m.qk_norm, "RMSNorm over the head dimension on q and k");
  r.add("model.branch_gain", &m.branch_gain, "residual branch gain beta (OP block: 0.2)", 0.0, 100.0);
  r.add("model.gains_trainable", &m.gains_trainable, "learn the branch gains");

  r.add("data.train", &data.train, "training token shard (from `oft data prepare`)");
  r.add("data.val", &data.val, "validation token shard");
  r.add("data.tokenizer", &data.tokenizer, "tokenizer the shards were made with (informational)");
  r.add("data.seq_len", &data.seq_len, "training sequence length T", 1, 1 << 20);
  r.alias("block_size", "data.seq_len");
  r.add("data.mlm_probability", &data.mlm_probability, "masked LM: share of positions masked",
        0.0, 1.0);
  r.alias("mlm_probability", "data.mlm_probability");
  r.add("data.pack", &data.pack,
        "masked LM: pack documents into windows (false: one padded document per sequence)");
  r.alias("max_seq_length", "data.seq_len");

  TrainConfig& t = train;
  r.add("train.batch_size", &t.batch_size, "sequences per micro-batch", 1, 1 << 20);
  r.alias("per_device_train_batch_size", "train.batch_size");
  r.add("train.grad_accum", &t.grad_accum, "micro-batches per optimizer step", 1, 1 << 20);
  r.alias("gradient_accumulation_steps", "train.grad_accum");
  r.add("train.steps", &t.steps, "optimizer steps", 1, kBig);
  r.alias("max_train_steps", "train.steps");
  r.add("train.lr", &t.lr, "peak learning rate", 0.0, 10.0);
  r.alias("learning_rate", "train.lr");
  r.add("train.schedule", &t.schedule, "learning-rate decay after warmup",
        {"linear", "cosine", "constant"});
  r.alias("lr_scheduler_type", "train.schedule");
  r.add("train.warmup_steps", &t.warmup_steps, "linear warmup steps", 0, kBig);
  r.alias("num_warmup_steps", "train.warmup_steps");
  r.add("train.warmup_ratio", &t.warmup_ratio, "warmup as a fraction of train.steps", 0.0, 1.0);
  r.add("train.min_lr_ratio", &t.min_lr_ratio, "final lr as a fraction of train.lr", 0.0, 1.0);
  r.add("train.weight_decay", &t.weight_decay, "AdamW decoupled weight decay", 0.0, 10.0);
  r.add("train.wd_exclude", &t.wd_exclude,
        "parameters without weight decay: bias_norm (biases and norm gains) or none",
        {"bias_norm", "none"});
  r.add("train.beta1", &t.beta1, "AdamW beta1", 0.0, 0.999999);
  r.alias("adam_beta1", "train.beta1");
  r.add("train.beta2", &t.beta2, "AdamW beta2", 0.0, 0.999999999);
  r.alias("adam_beta2", "train.beta2");
  r.add("train.adam_eps", &t.adam_eps, "AdamW epsilon", 0.0, 1.0);
  r.alias("adam_epsilon", "train.adam_eps");
  r.add("train.grad_clip", &t.grad_clip, "max global gradient norm (0 = off)", 0.0, kInf);
  r.alias("max_grad_norm", "train.grad_clip");
  r.add("train.nonfinite", &t.nonfinite, "on a NaN/Inf loss or gradient: stop or skip the step",
        {"stop", "skip"});
  r.add("train.max_skipped", &t.max_skipped, "with nonfinite=skip: stop after this many", 0, kBig);
  r.add("train.seed", &t.seed, "seed for initialisation and data order", 0, kBig);
  r.add("train.eval_every", &t.eval_every, "evaluate every N steps (0 = at the end only)", 0, kBig);
  r.add("train.eval_batches", &t.eval_batches, "validation batches per evaluation (0 = all)", 0,
        kBig);
  r.add("train.log_every", &t.log_every, "progress line every N steps", 1, kBig);
  r.add("train.ckpt_every", &t.ckpt_every, "checkpoint every N steps (0 = at the end only)", 0,
        kBig);
  r.add("train.keep_checkpoints", &t.keep_checkpoints, "newest checkpoints to keep", 1, kBig);
  r.add("train.resume", &t.resume, "resume from the run directory's latest checkpoint");
  r.add("train.init_from", &t.init_from,
        "start from the weights of this run / checkpoint (e.g. an `oft import-hf` output) with a "
        "fresh optimizer and data order; empty = random initialisation");
  r.add("train.stop_at", &t.stop_at,
        "end this invocation after step N with a checkpoint, to split a run (0 = off)", 0, kBig);
  r.add("train.zero_stage", &t.zero_stage,
        "multi-GPU (--gpus N / mpirun): 0 = every GPU keeps the whole AdamW state, 1 = each keeps "
        "its 1/N shard (ZeRO-1: gradients reduce-scattered, weights all-gathered)", 0, 1);
  r.add("train.grad_reduce_dtype", &t.grad_reduce_dtype,
        "multi-GPU: dtype the gradients are summed in across GPUs (bf16 halves the traffic; "
        "each sum rounds to bf16)", {"f32", "bf16"});
  r.add("train.cuda_graph", &t.cuda_graph,
        "GPU, causal LM, one process: record each micro-step's forward and backward into a CUDA "
        "graph and replay it with one launch (same results; false = launch every kernel)");
  r.add("train.overlap_update", &t.overlap_update,
        "GPU, one process: run each AdamW step on a second stream beside the next step's forward, "
        "layer by layer (same results; false = after the backward on the compute stream; opt-in "
        "until measured)");
  r.add("train.device", &t.device, "compute device (auto = the GPU when one is usable)",
        {"auto", "cpu", "cuda"});
  r.add("train.precision", &t.precision,
        "activation / matmul precision (auto = bf16 on the GPU, f32 on the CPU; master weights "
        "and optimizer state are always f32)",
        {"auto", "bf16", "f32"});
  r.add("train.threads", &t.threads, "CPU threads (0 = all cores)", 0, 4096);

  QuantConfig& q = quant;
  r.add("quant.quant_setup", &q.quant_setup, "what stays in floating point",
        {"all", "fp32_head", "fp32_head+int16_final_LN", "fp32_head+int16_all_LN"});
  r.add("quant.n_bits", &q.n_bits, "weight bits", 2, 16);
  r.add("quant.n_bits_act", &q.n_bits_act, "activation bits", 2, 16);
  r.add("quant.qmethod_acts", &q.qmethod_acts, "activation quantizer",
        {"asymmetric_uniform", "symmetric_uniform"});
  r.add("quant.ranges_acts", &q.ranges_acts, "activation range estimator",
        {"current_minmax", "running_minmax", "percentile", "mse"});
  r.add("quant.ranges_weights", &q.ranges_weights, "weight range estimator",
        {"current_minmax", "mse"});
  r.add("quant.per_channel", &q.per_channel, "per-output-channel weight quantization");
  r.add("quant.percentile", &q.percentile, "percentile for ranges_acts=percentile", 50.0, 100.0);
  r.add("quant.est_num_batches", &q.est_num_batches, "calibration batches", 1, 1 << 20);
  r.add("quant.calib_data", &q.calib_data, "calibration data: train, val, or auto (CLM: train, "
        "MLM: val, as the source does)", {"auto", "train", "val"});
  MetricsConfig& mc = metrics;
  r.add("metrics.batches", &mc.batches, "evaluation batches for the outlier metrics", 1, 1 << 20);
  r.add("metrics.rows", &mc.rows, "seed A kurtosis rows: sequence (T*d values) or token (d)",
        {"sequence", "token"});
  r.add("metrics.every", &mc.every, "log outlier metrics every N training steps (0 = off)", 0,
        kBig);

  r.add("run.name", &name, "run name (run directory runs/<name>)");
  r.add("run.dir", &dir, "run directory (overrides runs/<name>)");
}

std::string resolve_preset(const std::string& s) {
  if (s.ends_with(".yaml") || s.ends_with(".yml") || s.find('/') != std::string::npos) return s;
  const fs::path p = fs::path(resource_root()) / "configs" / (s + ".yaml");
  if (!fs::exists(p)) {
    std::string names;
    for (const auto& n : list_presets()) names += (names.empty() ? "" : ", ") + n;
    fail("unknown preset '", s, "'. Presets: ", names, " (or give a path to a .yaml file)");
  }
  return p.string();
}

std::vector<std::string> list_presets() {
  std::vector<std::string> r;
  for (const auto& e : fs::directory_iterator(fs::path(resource_root()) / "configs"))
    if (e.path().extension() == ".yaml") r.push_back(e.path().stem().string());
  std::sort(r.begin(), r.end());
  return r;
}

void RunConfig::load(const std::string& preset_or_yaml, const std::vector<std::string>& overrides) {
  if (!preset_or_yaml.empty()) {
    const std::string path = resolve_preset(preset_or_yaml);
    name = fs::path(path).stem().string();
    reg_.load_yaml_file(path, resolve_preset);
  }
  reg_.apply_overrides(overrides);
  validate();
}

void RunConfig::validate() const {
  OFT_CHECK(model.d_model % model.n_head == 0, "model.n_head=", model.n_head,
            " does not divide model.d_model=", model.d_model,
            ": choose a head count that divides the width");
  OFT_CHECK(data.seq_len <= model.max_seq_len, "data.seq_len=", data.seq_len,
            " is longer than the position table model.max_seq_len=", model.max_seq_len,
            ": lower data.seq_len or raise model.max_seq_len");
  OFT_CHECK(train.lr > 0, "train.lr must be > 0 (got ", train.lr, ")");
  OFT_CHECK(!(train.warmup_steps > 0 && train.warmup_ratio > 0),
            "set train.warmup_steps or train.warmup_ratio, not both");
  OFT_CHECK(!data.train.empty(), "data.train is empty: give the training shard path");
  OFT_CHECK(!model.embed_proj() || model.objective == "clm", "model.word_embed_proj_dim=",
            model.word_embed_proj_dim, " (project_in / project_out, OPT) is for causal LMs: set "
            "it to 0 with model.objective=mlm");
  OFT_CHECK(data.pack || model.objective == "mlm",
            "data.pack=false (one padded document per sequence) is for model.objective=mlm only");
}

std::string RunConfig::run_dir() const { return dir.empty() ? "runs/" + name : dir; }

int64_t RunConfig::warmup() const {
  return train.warmup_ratio > 0 ? static_cast<int64_t>(train.warmup_ratio * train.steps + 0.5)
                                : train.warmup_steps;
}

}  // namespace oft
