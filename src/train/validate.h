// `oft validate`: floating-point perplexity with the outlier metrics of both source systems,
// and with quantize, the simulated-quantization perplexity after calibration (REFERENCE.md
// §4-§5). Results go to validation.json in the run directory; several runs print side by side
// as the paper's table (FP ppl | max inf norm | avg kurtosis | W8A8 ppl).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/trainer.h"

namespace oft {

struct ValidationResult {
  std::string run;  // run or checkpoint path as given
  EvalResult fp;
  bool quantized = false;
  EvalResult quant;
  std::string quant_label;  // e.g. "W8A8"
  double max_inf_norm = 0, avg_kurtosis = 0, max_kurtosis = 0;
  nlohmann::json report;  // everything, as written to validation.json
};

// Validates the checkpoint `ckpt` (config from the checkpoint plus overrides).
ValidationResult validate_checkpoint(const std::string& run_or_ckpt, bool quantize,
                                     const std::vector<std::string>& overrides, bool quiet);

// The paper's table for several results, one line each.
std::string validation_table(const std::vector<ValidationResult>& results);

}  // namespace oft
