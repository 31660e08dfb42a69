// Environment-variable switches (see env_choice.h).
#include "core/env_choice.h"

#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace oft {

int env_choice(const char* name, std::initializer_list<EnvChoice> choices, int fallback,
               const char* expected) {
  const char* e = std::getenv(name);
  if (e == nullptr || *e == '\0') return fallback;
  for (const EnvChoice& c : choices)
    if (std::strcmp(e, c.text) == 0) return c.value;
  fail(name, "='", e, "': expected ", expected);
}

}  // namespace oft
