// Raw Unicode tables for the BERT WordPiece tokenizer (wordpiece.cpp), generated from Python's
// unicodedata and str.lower() into unicode_nfd.cpp by scripts/gen_unicode_nfd.py (run it to
// regenerate; the Unicode version is recorded in kUnicodeVersion). wordpiece.cpp decodes them
// once into lookup structures. Encodings:
//  * flags: run i covers code points [start_i, start_{i+1}) (the last run ends at 0x110000), with
//    start_i = sum of kFlagRunStartDelta[0..i]; its value kFlagRunValue[i] is a set of kFlag* bits;
//  * kCccRuns: triples (first code point, count, canonical combining class), nonzero classes only;
//  * decompositions: entry i is code point sum(kDecompCpDelta[0..i]), whose full canonical
//    decomposition (unicodedata.normalize("NFD", ch)) is the next kDecompLen[i] - '0' values of
//    kDecompPool; Hangul syllables (U+AC00..U+D7A3) are left out: they decompose arithmetically;
//  * kLowerRuns: quadruples (first, count, stride, delta): str.lower() maps first + k*stride to
//    first + k*stride + delta for k < count; kLowerMulti: (code point, n, up to 3 code points)
//    for the mappings to several code points (U+0130 only). The final-sigma rule of str.lower()
//    is not in the tables; kFlagCased / kFlagCaseIgnorable give what it needs.
#pragma once

#include <cstdint>

namespace oft::unicode_nfd {

enum : uint8_t {
  kFlagControl = 1,         // general category C* (Cc, Cf, Cn, Co, Cs)
  kFlagSpaceSep = 2,        // general category Zs
  kFlagPunct = 4,           // general category P*
  kFlagNonspacingMark = 8,  // general category Mn
  kFlagCased = 16,          // Cased (as str.lower()'s final-sigma test sees it; not case-ignorable)
  kFlagCaseIgnorable = 32,  // Case_Ignorable
};

extern const char kUnicodeVersion[];
extern const int kNumFlagRuns, kNumCccRuns, kNumDecomp, kNumLowerRuns, kNumLowerMulti;
extern const uint32_t kFlagRunStartDelta[];
extern const uint8_t kFlagRunValue[];
extern const uint32_t kCccRuns[];
extern const uint32_t kDecompCpDelta[];
extern const char kDecompLen[];
extern const uint32_t kDecompPool[];
extern const int32_t kLowerRuns[];
extern const uint32_t kLowerMulti[];

}  // namespace oft::unicode_nfd
