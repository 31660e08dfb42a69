// The `oft` command: parses the command line (CLI11) and runs a subcommand. Every oft::Error
// is printed as one line "oft: error: ..." with exit status 1.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"oft: outlier-free transformers — pre-train, measure outliers, quantize"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  oft::cli::register_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const oft::Error& e) {
    std::fprintf(stderr, "oft: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "oft: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
