// `oft data prepare`: turns text files into token shards out_dir/{train,val}.bin + meta.json.
//
// Inputs: files, directories (recursed; hidden entries skipped; optional extension filter) or
// glob(3) patterns. Files are sorted by path and deduplicated; files holding NUL bytes or invalid
// UTF-8 are skipped with a warning. Documents are whole files (doc_split "file") or paragraphs
// separated by blank lines ("blank_lines"); whitespace-only documents are dropped. Every
// document's tokens are followed by the tokenizer's eot_id and, when the tokenizer has a
// bos_id() (BERT WordPiece: [CLS]), preceded by it: [bos] tokens [eot].
//
// Train/validation split (deterministic, independent of where the corpus lives):
//   >= 2 documents: a document goes to validation when a stable 64-bit hash (FNV-1a, then a
//     64-bit avalanche finaliser) of "<relative path>#<doc index in file>" maps below
//     val_fraction. If val_fraction > 0, at least one document goes to each side.
//   1 document: its last val_fraction of tokens go to validation (both parts are documents:
//     [bos] ... eot).
//   val_fraction = 0: val.bin is written with no tokens.
// The relative path is relative to the input directory (directory inputs), to the literal
// prefix of the pattern (glob inputs) or the bare file name (file inputs).
//
// Output is byte-identical across runs for the same inputs, options and tokenizer; meta.json
// carries no timestamps. Tokenizer::encode() is called concurrently from OpenMP threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace oft {

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  double val_fraction = 0.05;         // in [0, 0.5]
  std::string doc_split = "file";     // file | blank_lines
  size_t max_bytes = 0;               // stop after this many input bytes (0 = all); the file
                                      // crossing the limit is cut at a UTF-8 boundary
  bool quiet = false;                 // no progress line or warnings on stderr
  std::vector<std::string> extensions;  // directory/glob-dir inputs: keep only these, e.g. {".py"}
};

struct PrepareResult {
  std::string train_path, val_path, meta_path;
  uint64_t files = 0;          // files that contributed text
  uint64_t skipped_files = 0;  // binary / non-UTF-8 files
  uint64_t input_bytes = 0;    // bytes of text read (after max_bytes)
  uint64_t train_documents = 0, val_documents = 0;
  uint64_t train_tokens = 0, val_tokens = 0;  // including the bos/eot tokens
  std::vector<std::string> warnings;          // one line per skipped file
  double seconds = 0.0;
};

// Throws oft::Error for: no input matched, unreadable file, empty corpus, val_fraction outside
// [0, 0.5], unknown doc_split, out_dir not creatable, write failures.
PrepareResult prepare_corpus(const PrepareOptions& opt, const Tokenizer& tok);

// The split hash: FNV-1a 64 of "<rel_path>#<doc_index>", avalanched. Exposed for tests/tools.
uint64_t document_hash(const std::string& rel_path, uint64_t doc_index);
// hash -> [0, 1): the top 53 bits as a fraction.
double hash_fraction(uint64_t h);

}  // namespace oft
