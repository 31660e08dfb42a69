// metrics.jsonl: one JSON object per line ({"step": ..., ...}), flushed line by line so a
// crashed run keeps everything it logged. On resume, records after the resumed step are
// dropped first, so a resumed run's file equals an uninterrupted run's.
#pragma once

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace oft {

class MetricsWriter {
 public:
  // keep_through_step < 0: start a new file; otherwise keep records with step <= it.
  MetricsWriter(const std::string& path, int64_t keep_through_step);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const nlohmann::json& record);

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace oft
