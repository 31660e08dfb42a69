// Errors: every failure the user can cause is an oft::Error whose message names the file or key
// and says how to fix it. The CLI prints it on one line and exits non-zero. Internal invariant
// violations use OFT_ASSERT, which also reports file:line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace oft {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<< into one message.
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

}  // namespace oft

// User-facing check: OFT_CHECK(n > 0, "config: model.n_layer must be >= 1 (got ", n, ")").
#define OFT_CHECK(cond, ...)          \
  do {                                \
    if (!(cond)) ::oft::fail(__VA_ARGS__); \
  } while (0)

// Internal invariant: a failure here is a bug in oft, reported with its location.
#define OFT_ASSERT(cond, ...)                                                              \
  do {                                                                                     \
    if (!(cond))                                                                           \
      ::oft::fail("internal error at ", __FILE__, ":", __LINE__, ": ", #cond, " ", ##__VA_ARGS__); \
  } while (0)
