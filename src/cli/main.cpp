// The `oft` command: parses the command line (CLI11) and runs a subcommand. Every oft::Error
// is printed as one line "oft: error: ..." with exit status 1.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/commands.h"
#include "core/error.h"

namespace {
// "rank N: " in the processes of a multi-GPU run, so a failure names the rank that hit it.
std::string rank_prefix() {
  const char* r = std::getenv("OFT_RANK");
  if (!r) r = std::getenv("OMPI_COMM_WORLD_RANK");
  return r && *r ? std::string("rank ") + r + ": " : std::string();
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"oft: outlier-free transformers — pre-train, measure outliers, quantize"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  oft::cli::register_commands(app);
  oft::cli::program_args().assign(argv, argv + argc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const oft::Error& e) {
    std::fprintf(stderr, "oft: error: %s%s\n", rank_prefix().c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft: error: %s%s\n", rank_prefix().c_str(), e.what());
    return 2;
  }
  return 0;
}
