// Subcommands of the `oft` command line; each file in src/cli/ registers one group.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace oft::cli {

void register_commands(CLI::App& app);
// The process's command line (main() records it; `oft train --gpus N` re-runs it per GPU).
std::vector<std::string>& program_args();
void register_train(CLI::App& app);      // oft train, oft eval, oft config
void register_data(CLI::App& app);       // oft data prepare, oft tokenizer ...
void register_bench(CLI::App& app);      // oft bench
void register_hf(CLI::App& app);         // oft import-hf, oft export-hf, oft logits

}  // namespace oft::cli
