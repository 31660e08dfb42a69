// Subcommands of the `oft` command line; each file in src/cli/ registers one group.
#pragma once

#include <CLI/CLI.hpp>

namespace oft::cli {

void register_commands(CLI::App& app);
void register_train(CLI::App& app);      // oft train, oft eval, oft config
void register_data(CLI::App& app);       // oft data prepare, oft tokenizer ...
void register_bench(CLI::App& app);      // oft bench

}  // namespace oft::cli
