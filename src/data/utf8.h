// UTF-8 decoding shared by the tokenizers: strict (RFC 3629) decoding of one code point, with
// invalid, truncated, overlong and surrogate sequences reported as kInvalidCp of length 1.
#pragma once

#include <cstddef>
#include <cstdint>

namespace oft::utf8 {

constexpr uint32_t kInvalidCp = 0xFFFFFFFFu;

// Decodes one UTF-8 code point at p (p < end). Invalid or truncated sequences, overlong forms
// and surrogates yield kInvalidCp with length 1.
inline int decode_utf8(const unsigned char* p, const unsigned char* end, uint32_t* cp) {
  const unsigned c = p[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  const ptrdiff_t avail = end - p;
  auto cont = [&](int k) { return k < avail && (p[k] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) {
    if (cont(1)) {
      *cp = ((c & 0x1Fu) << 6) | (p[1] & 0x3Fu);
      return 2;
    }
  } else if (c >= 0xE0 && c <= 0xEF) {
    if (cont(1) && cont(2)) {
      const uint32_t v = ((c & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
      if (v >= 0x800 && (v < 0xD800 || v > 0xDFFF)) {
        *cp = v;
        return 3;
      }
    }
  } else if (c >= 0xF0 && c <= 0xF4) {
    if (cont(1) && cont(2) && cont(3)) {
      const uint32_t v = ((c & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) |
                         (p[3] & 0x3Fu);
      if (v >= 0x10000 && v <= 0x10FFFF) {
        *cp = v;
        return 4;
      }
    }
  }
  *cp = kInvalidCp;
  return 1;
}

}  // namespace oft::utf8
