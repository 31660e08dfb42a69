// Resource root discovery (see resources.h).
#include "core/resources.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"

#ifndef OFT_SOURCE_DIR
#define OFT_SOURCE_DIR ""
#endif

namespace fs = std::filesystem;

namespace oft {

namespace {
bool is_root(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p / "data", ec) && fs::is_directory(p / "configs", ec);
}
}  // namespace

std::string resource_root() {
  static std::string cached;
  if (!cached.empty()) return cached;
  if (const char* env = std::getenv("OFT_HOME"); env && *env) {
    OFT_CHECK(is_root(env), "OFT_HOME=", env,
              " does not contain data/ and configs/; point it at the oft checkout");
    return cached = fs::absolute(env).string();
  }
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) {
    buf[n] = 0;
    for (fs::path p = fs::path(buf).parent_path(); !p.empty() && p != p.root_path();
         p = p.parent_path()) {
      if (is_root(p)) return cached = p.string();
    }
  }
  if (is_root(OFT_SOURCE_DIR)) return cached = OFT_SOURCE_DIR;
  fail("cannot find oft's data/ and configs/ directories; set OFT_HOME to the oft checkout");
}

std::string resource_path(const std::string& relative) {
  fs::path p = fs::path(resource_root()) / relative;
  OFT_CHECK(fs::exists(p), "missing resource ", p.string(),
            " (is the oft checkout complete? set OFT_HOME to it)");
  return p.string();
}

}  // namespace oft
