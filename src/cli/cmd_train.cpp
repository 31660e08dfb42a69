// `oft train`, `oft eval` and `oft config`.
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/launch.h"
#include "ops/ops.h"
#include "train/checkpoint.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "train/validate.h"

namespace oft::cli {

std::vector<std::string>& program_args() {
  static std::vector<std::string> args;
  return args;
}

namespace {
// Splits positional arguments into an optional preset/YAML and key=value overrides.
void split_args(const std::vector<std::string>& args, std::string& preset,
                std::vector<std::string>& overrides) {
  for (const auto& a : args) {
    if (a.find('=') != std::string::npos) {
      overrides.push_back(a);
    } else {
      OFT_CHECK(preset.empty(), "command line: two presets given ('", preset, "' and '", a,
                "'): give one preset or YAML file, then key=value overrides");
      preset = a;
    }
  }
}
}  // namespace

void register_train(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("train", "Pre-train a language model");
    auto args = std::make_shared<std::vector<std::string>>();
    auto run_dir = std::make_shared<std::string>();
    auto quiet = std::make_shared<bool>(false);
    auto gpus = std::make_shared<int>(1);
    cmd->add_option("args", *args, "PRESET_OR_YAML [key=value ...] (default preset: tiny)");
    cmd->add_option("--run-dir", *run_dir, "run directory (default runs/<preset>)");
    cmd->add_flag("-q,--quiet", *quiet, "no progress lines");
    cmd->add_option("--gpus", *gpus,
                    "data-parallel over N GPUs of this host, one process each (0 = every "
                    "visible GPU); train.batch_size stays the global batch")
        ->check(CLI::Range(0, 1024));
    cmd->callback([=] {
      if (dist::launch_if_requested(*gpus, program_args())) return;
      const dist::DistEnv env = dist::dist_env_from_environment();
      std::string preset;
      std::vector<std::string> ov;
      split_args(*args, preset, ov);
      RunConfig cfg;
      cfg.load(preset.empty() ? "tiny" : preset, ov);
      if (!run_dir->empty()) cfg.dir = *run_dir;
      TrainResult r = train(cfg, *quiet);
      if (env.rank != 0) return;
      std::printf("run %s: %lld steps, %.0f tokens/s\n", r.run_dir.c_str(), (long long)r.steps,
                  r.tokens_per_s);
      if (r.initial_val.tokens > 0)
        std::printf("validation loss %.4f -> %.4f, perplexity %.2f -> %.2f\n", r.initial_val.loss,
                    r.final_val.loss, r.initial_val.ppl, r.final_val.ppl);
      else
        std::printf("validation loss %.4f, perplexity %.2f\n", r.final_val.loss, r.final_val.ppl);
    });
  }
  {
    auto* cmd = app.add_subcommand("eval", "Validation loss and perplexity of a run or checkpoint");
    auto target = std::make_shared<std::string>();
    auto args = std::make_shared<std::vector<std::string>>();
    cmd->add_option("run", *target, "run directory or checkpoint directory")->required();
    cmd->add_option("overrides", *args, "key=value overrides (e.g. data.val=... train.eval_batches=0)");
    cmd->callback([=] {
      const std::string ckpt = find_checkpoint(*target);
      RunConfig cfg;
      auto model = load_model_from_checkpoint(ckpt, cfg, *args);
      auto val = std::make_shared<const Shard>(Shard::open(cfg.data.val));
      EvalResult e = evaluate(*model, val, loader_options(cfg, cfg.data.val), cfg.train.eval_batches);
      std::printf("checkpoint %s\nvalidation tokens %lld\nvalidation loss %.4f\nperplexity %.3f\n",
                  ckpt.c_str(), (long long)e.tokens, e.loss, e.ppl);
    });
  }
  {
    auto* cmd = app.add_subcommand(
        "validate", "FP perplexity, outlier metrics and (--quantize) simulated-quantization "
                    "perplexity of one or more runs");
    auto args = std::make_shared<std::vector<std::string>>();
    auto quantize = std::make_shared<bool>(false);
    auto per_layer = std::make_shared<bool>(false);
    auto quiet = std::make_shared<bool>(false);
    cmd->add_option("args", *args, "RUN_OR_CHECKPOINT... [key=value ...]")->required();
    cmd->add_flag("--quantize", *quantize, "also calibrate and evaluate the quantized model");
    cmd->add_flag("--per-layer", *per_layer, "print every tracked tensor's kurtosis and inf norm");
    cmd->add_flag("-q,--quiet", *quiet, "no progress lines");
    cmd->callback([=] {
      std::vector<std::string> runs, ov;
      for (const auto& a : *args) (a.find('=') != std::string::npos ? ov : runs).push_back(a);
      OFT_CHECK(!runs.empty(), "oft validate: give at least one run directory or checkpoint");
      std::vector<ValidationResult> results;
      for (const auto& run : runs) results.push_back(validate_checkpoint(run, *quantize, ov, *quiet));
      if (*per_layer) {
        for (const auto& r : results) {
          std::printf("%s\n", r.run.c_str());
          for (const auto& [name, e] : r.report["outliers"]["seed_a"].items())
            std::printf("  %-24s kurtosis %10.2f  inf norm %10.3f\n", name.c_str(),
                        e["kurtosis"].is_number() ? e["kurtosis"].get<double>() : NAN,
                        e["inf_norm"].get<double>());
        }
      }
      std::printf("%s", validation_table(results).c_str());
    });
  }
  {
    auto* cmd = app.add_subcommand("config", "Show a preset's resolved configuration or list presets");
    auto args = std::make_shared<std::vector<std::string>>();
    auto list = std::make_shared<bool>(false);
    auto keys = std::make_shared<bool>(false);
    cmd->add_option("args", *args, "PRESET_OR_YAML [key=value ...]");
    cmd->add_flag("--list", *list, "list the presets");
    cmd->add_flag("--keys", *keys, "list every config key with its default and meaning");
    cmd->callback([=] {
      if (*list) {
        for (const auto& p : list_presets()) std::printf("%s\n", p.c_str());
        return;
      }
      std::string preset;
      std::vector<std::string> ov;
      split_args(*args, preset, ov);
      RunConfig cfg;
      if (*keys) {
        std::printf("%s", cfg.registry().help().c_str());
        return;
      }
      cfg.load(preset.empty() ? "tiny" : preset, ov);
      std::printf("%s", cfg.registry().to_yaml().c_str());
    });
  }
}

void register_commands(CLI::App& app) {
  register_train(app);
  register_data(app);
  register_bench(app);
  register_hf(app);
}

}  // namespace oft::cli
