// Hugging Face tokenizer directories read through oft's own tokenizers, files used as they are:
//   tokenizer.json            a fast tokenizer: byte-level BPE (GPT-2, OPT) or WordPiece (BERT)
//   vocab.json + merges.txt   GPT-2 / OPT byte-level BPE (the encoder.json / vocab.bpe formats)
//   vocab.txt                 BERT WordPiece
// tokenizer_config.json, when present, supplies eos_token (the document separator of BPE
// vocabularies without <|endoftext|>, e.g. OPT's </s>) and the BERT switches do_lower_case,
// strip_accents and tokenize_chinese_chars; in tokenizer.json the BertNormalizer's lowercase /
// strip_accents / handle_chinese_chars take their place. Anything these tokenizers cannot
// reproduce token for token (another model type, a normalizer, add_prefix_space, BPE dropout)
// is an error that names the file and the field.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace oft {

// The tokenizer files a directory holds, in the order they are used: "tokenizer.json",
// "vocab.json+merges.txt", "vocab.txt", or "" when there are none.
std::string hf_tokenizer_kind(const std::string& dir);

// The tokenizer of a Hugging Face model (or tokenizer) directory; its name() is "hf:<dir>".
// Throws oft::Error when the directory has no tokenizer files or they cannot be used.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& dir);

// The files of the directory's tokenizer (the kind above plus tokenizer_config.json and
// special_tokens_map.json when present), for copying into a run or an export.
std::vector<std::string> hf_tokenizer_files(const std::string& dir);

}  // namespace oft
