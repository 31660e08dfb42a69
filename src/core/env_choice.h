// Switches read from environment variables (the GPU backend's OFT_ATTN_WGMMA, OFT_GEMM_WGMMA,
// OFT_ATTN_DQ_STORE, OFT_MATMUL_TUNE): one of a few words, anything else refused with a message
// that names the variable, the value and what it accepts.
#pragma once

#include <initializer_list>

namespace oft {

struct EnvChoice {
  const char* text;  // the accepted value, e.g. "auto"
  int value;         // what env_choice() returns for it
};

// The value of the choice that environment variable `name` spells; `fallback` when it is unset
// or empty. Any other value throws oft::Error: "NAME='value': expected " + expected.
int env_choice(const char* name, std::initializer_list<EnvChoice> choices, int fallback,
               const char* expected);

}  // namespace oft
