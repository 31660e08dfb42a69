// `oft bench`: training throughput, MFU and memory of a preset on synthetic tokens.
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/launch.h"
#include "train/bench.h"
#include "train/run_config.h"

namespace oft::cli {

void register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench", "Training throughput (tokens/s), MFU against the measured bf16 peak, and peak "
               "memory of a preset on synthetic tokens");
  auto args = std::make_shared<std::vector<std::string>>();
  auto opt = std::make_shared<BenchOptions>();
  auto no_peak = std::make_shared<bool>(false);
  auto json = std::make_shared<std::string>();
  cmd->add_option("args", *args, "PRESET_OR_YAML [key=value ...] (default preset: gpt2_small)");
  cmd->add_option("--steps", opt->steps, "timed optimizer steps")->check(CLI::Range(1, 1000000));
  cmd->add_option("--warmup", opt->warmup, "untimed steps first")->check(CLI::Range(0, 1000000));
  cmd->add_flag("--profile", opt->profile, "per-op device-time breakdown over extra steps");
  cmd->add_flag("--no-peak", *no_peak, "skip measuring the bf16 matmul peak (no MFU)");
  cmd->add_option("--json", *json, "also write the result as JSON to this file");
  auto gpus = std::make_shared<int>(1);
  cmd->add_option("--gpus", *gpus, "data-parallel over N GPUs of this host (0 = all), "
                                   "train.batch_size rows on each (per-GPU figures)")
      ->check(CLI::Range(0, 1024));
  cmd->callback([=] {
    if (dist::launch_if_requested(*gpus, program_args())) return;
    const dist::DistEnv env = dist::dist_env_from_environment();
    std::string preset;
    std::vector<std::string> ov;
    for (const auto& a : *args) {
      if (a.find('=') != std::string::npos) {
        ov.push_back(a);
      } else {
        OFT_CHECK(preset.empty(), "oft bench: two presets given ('", preset, "' and '", a, "')");
        preset = a;
      }
    }
    if (preset.empty()) preset = "gpt2_small";
    RunConfig cfg;
    cfg.load(preset, ov);
    BenchOptions o = *opt;
    o.measure_peak = !*no_peak;
    const BenchResult r = bench(cfg, o);
    if (env.rank != 0) return;
    std::printf("%s", bench_report(preset, r).c_str());
    if (!json->empty()) {
      nlohmann::json j = {{"preset", preset}, {"overrides", ov}, {"device", r.device},
                          {"dtype", r.dtype}, {"gpus", r.gpus}, {"zero_stage", r.zero_stage},
                          {"params", r.params}, {"batch", r.batch},
                          {"seq_len", r.seq_len}, {"tokens_per_step", r.tokens_per_step},
                          {"step_ms", r.step_ms}, {"tokens_per_s", r.tokens_per_s},
                          {"steps", r.steps}, {"wall_tokens_per_s", r.wall_tokens_per_s},
                          {"flops_per_token", r.flops_per_token}, {"tflops", r.tflops},
                          {"peak_tflops", r.peak_tflops}, {"mfu", r.mfu},
                          {"peak_mem_gib", r.peak_mem_gib}, {"reserved_gib", r.reserved_gib},
                          {"loss_first", r.loss_first}, {"loss_last", r.loss_last},
                          {"cuda_graph", r.cuda_graph}, {"overlap_update", r.overlap_update}};
      for (size_t i = 0; i < r.op_ms.size(); ++i)
        j["ops"][r.op_ms[i].first] = {{"ms", r.op_ms[i].second}, {"calls", r.op_calls[i]}};
      std::ofstream f(*json);
      OFT_CHECK(f.good(), "oft bench --json ", *json, ": cannot write the file");
      f << j.dump(2) << "\n";
    }
  });
}

}  // namespace oft::cli
