// bfloat16 <-> float conversion on the host (round to nearest even), shared by checkpoints and
// the CUDA backend's host-side staging.
#pragma once

#include <cstdint>
#include <cstring>

namespace oft {

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A stored bf16 value that converts to float or double (static_cast in templated loops), so
// host code reads bf16 tensors in place through a `const Bf16Value*` instead of a widened copy.
struct Bf16Value {
  uint16_t bits;
  explicit operator float() const { return bf16_to_float(bits); }
  explicit operator double() const { return static_cast<double>(bf16_to_float(bits)); }
};

}  // namespace oft
