// MetricsWriter implementation (see metrics.h).
#include "io/metrics.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"

namespace oft {

MetricsWriter::MetricsWriter(const std::string& path, int64_t keep_through_step) : path_(path) {
  if (keep_through_step >= 0 && std::filesystem::exists(path)) {
    std::ifstream in(path);
    std::string line, kept;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        const auto j = nlohmann::json::parse(line);
        if (j.value("step", int64_t(0)) <= keep_through_step) kept += line + "\n";
      } catch (const nlohmann::json::exception&) {
        // A torn last line from a crash: drop it.
      }
    }
    write_file_atomic(path, kept);
  } else {
    write_file_atomic(path, "");
  }
  f_ = std::fopen(path.c_str(), "a");
  OFT_CHECK(f_ != nullptr, "cannot open ", path, " for writing: ", std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const nlohmann::json& record) {
  const std::string s = record.dump() + "\n";
  OFT_CHECK(std::fwrite(s.data(), 1, s.size(), f_) == s.size() && std::fflush(f_) == 0,
            "cannot write ", path_, ": ", std::strerror(errno));
}

}  // namespace oft
