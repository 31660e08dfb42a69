// oft validate (see validate.h).
#include "train/validate.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "analysis/collect.h"
#include "io/atomic_file.h"
#include "quant/sim.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace oft {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Wall-clock seconds of run_batches' parts (each forward returns its loss to the host, so a GPU
// batch is complete when its time is taken).
struct BatchTimes {
  double metric_batches = 0;  // forwards with the outlier collector, and its metrics
  double other_batches = 0;
};

// Runs `batches` forward passes over `shard` with `hook` installed; returns the mean loss.
EvalResult run_batches(TransformerLM& model, std::shared_ptr<const Shard> shard, LoaderOptions lo,
                       int64_t batches, ActivationHook* hook,
                       analysis::OutlierCollector* collector, int64_t collect_batches,
                       BatchTimes* times = nullptr) {
  lo.mode = LoaderMode::Eval;
  TokenLoader loader(shard, lo);
  const int64_t B = static_cast<int64_t>(lo.batch_size), T = static_cast<int64_t>(lo.seq_len);
  int64_t n = static_cast<int64_t>(loader.batches_per_epoch());
  OFT_CHECK(n > 0, shard->path(), ": too small for one batch of ", B, " x ", T,
            " tokens; lower train.batch_size or data.seq_len");
  if (batches > 0) n = std::min(n, batches);
  Tensor in = Tensor::empty({B, T}, DType::I32), tg = Tensor::empty({B, T}, DType::I32);
  Tensor mask = Tensor::empty({B, T}, DType::I32);
  const bool use_mask = lo.objective == Objective::MaskedLM && !lo.pack;
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    loader.next_batch(in.data<int32_t>(), tg.data<int32_t>(), mask.data<int32_t>());
    model.set_hook(collector && i < collect_batches ? collector : hook);
    const double l = model.forward(in.to(model.device()), tg.to(model.device()),
                                   use_mask ? mask.to(model.device()) : Tensor());
    if (collector && i < collect_batches) collector->after_forward(model);
    sum += l * double(model.counted_targets());
    count += model.counted_targets();
    if (times) (collector && i < collect_batches ? times->metric_batches : times->other_batches) +=
        seconds_since(t0);
  }
  model.set_hook(nullptr);
  EvalResult r;
  r.tokens = count;
  r.loss = count ? sum / double(count) : 0.0;
  r.ppl = std::exp(r.loss);
  return r;
}

nlohmann::json eval_json(const EvalResult& e) {
  return {{"loss", e.loss}, {"ppl", e.ppl}, {"tokens", e.tokens}};
}

}  // namespace

ValidationResult validate_checkpoint(const std::string& run_or_ckpt, bool quantize,
                                     const std::vector<std::string>& overrides, bool quiet) {
  const auto t_start = std::chrono::steady_clock::now();
  const std::string ckpt = find_checkpoint(run_or_ckpt);
  RunConfig cfg;
  auto model = load_model_from_checkpoint(ckpt, cfg, overrides);
  auto val = std::make_shared<const Shard>(Shard::open(cfg.data.val));
  const LoaderOptions val_lo = loader_options(cfg, cfg.data.val);

  ValidationResult r;
  r.run = run_or_ckpt;
  // Wall-clock seconds per phase, for the report.
  nlohmann::json secs;
  secs["load"] = seconds_since(t_start);
  BatchTimes fp_times;
  // FP: perplexity over train.eval_batches, outlier metrics over the first metrics.batches.
  analysis::OutlierCollector collector(cfg.model, cfg.metrics.rows == "token");
  r.fp = run_batches(*model, val, val_lo, cfg.train.eval_batches, nullptr, &collector,
                     cfg.metrics.batches, &fp_times);
  secs["fp_metric_batches"] = fp_times.metric_batches;
  secs["fp_other_batches"] = fp_times.other_batches;
  const auto summary = collector.summary();
  r.max_inf_norm = collector.table_inf_norm();
  r.avg_kurtosis = summary.avg_kurtosis;
  r.max_kurtosis = summary.max_kurtosis;
  r.report["checkpoint"] = ckpt;
  r.report["fp"] = eval_json(r.fp);
  r.report["outliers"] = collector.to_json();
  if (!quiet)
    std::fprintf(stderr, "%s: FP perplexity %.3f, max inf norm %.1f, avg kurtosis %.1f\n",
                 run_or_ckpt.c_str(), r.fp.ppl, r.max_inf_norm, r.avg_kurtosis);

  if (quantize) {
    const QuantConfig& q = cfg.quant;
    auto t_phase = std::chrono::steady_clock::now();
    quant::QuantSimulator sim(q, cfg.model);
    sim.quantize_weights(*model);
    secs["quantize_weights"] = seconds_since(t_phase);
    t_phase = std::chrono::steady_clock::now();
    // Calibration (causal LM: training data, masked LM: evaluation data, as the source does).
    const bool use_train = q.calib_data == "train" || (q.calib_data == "auto" && cfg.model.causal());
    const std::string calib_path = use_train ? cfg.data.train : cfg.data.val;
    auto calib = use_train ? std::make_shared<const Shard>(Shard::open(calib_path)) : val;
    sim.set_calibrating(true);
    run_batches(*model, calib, loader_options(cfg, calib_path), q.est_num_batches, &sim, nullptr, 0);
    sim.set_calibrating(false);
    secs["calibration"] = seconds_since(t_phase);
    t_phase = std::chrono::steady_clock::now();
    r.quant = run_batches(*model, val, val_lo, cfg.train.eval_batches, &sim, nullptr, 0);
    secs["quantized_batches"] = seconds_since(t_phase);
    sim.restore_weights(*model);
    r.quantized = true;
    r.quant_label = "W" + std::to_string(q.n_bits) + "A" + std::to_string(q.n_bits_act);
    r.report["quantized"] = eval_json(r.quant);
    r.report["quantized"]["label"] = r.quant_label;
    r.report["quantized"]["config"] = {{"quant_setup", q.quant_setup}, {"n_bits", q.n_bits},
                                       {"n_bits_act", q.n_bits_act}, {"qmethod_acts", q.qmethod_acts},
                                       {"ranges_acts", q.ranges_acts}, {"ranges_weights", q.ranges_weights},
                                       {"per_channel", q.per_channel}, {"percentile", q.percentile},
                                       {"est_num_batches", q.est_num_batches},
                                       {"calibration_data", calib_path},
                                       {"quantized_activation_points", sim.quantized_points()}};
    const std::string enc_path = (fs::path(run_dir_of(ckpt)) / "encodings.json").string();
    write_file_atomic(enc_path, quant::encodings_json(sim.activation_encodings(),
                                                      sim.param_encodings()).dump(2) + "\n");
    r.report["quantized"]["encodings"] = enc_path;
    if (!quiet)
      std::fprintf(stderr, "%s: %s perplexity %.3f (%s, %s ranges, %lld calibration batches)\n",
                   run_or_ckpt.c_str(), r.quant_label.c_str(), r.quant.ppl, q.quant_setup.c_str(),
                   q.ranges_acts.c_str(), (long long)q.est_num_batches);
  }
  secs["total"] = seconds_since(t_start);
  r.report["seconds"] = secs;
  write_file_atomic((fs::path(run_dir_of(ckpt)) / "validation.json").string(),
                    r.report.dump(2) + "\n");
  return r;
}

std::string validation_table(const std::vector<ValidationResult>& results) {
  std::string label = "quantized ppl";
  for (const auto& r : results)
    if (r.quantized) label = r.quant_label + " ppl";
  size_t w = 3;
  for (const auto& r : results) w = std::max(w, r.run.size());
  char buf[512];
  std::string out;
  std::snprintf(buf, sizeof(buf), "%-*s | %8s | %12s | %12s | %12s\n", int(w), "run", "FP ppl",
                "max inf norm", "avg kurtosis", label.c_str());
  out += buf;
  out += std::string(w, '-') + "-|----------|--------------|--------------|-------------\n";
  for (const auto& r : results) {
    char q[32] = "-";
    if (r.quantized) std::snprintf(q, sizeof(q), "%.2f", r.quant.ppl);
    std::snprintf(buf, sizeof(buf), "%-*s | %8.2f | %12.1f | %12.1f | %12s\n", int(w),
                  r.run.c_str(), r.fp.ppl, r.max_inf_norm, r.avg_kurtosis, q);
    out += buf;
  }
  return out;
}

}  // namespace oft
