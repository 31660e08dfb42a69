// Hugging Face interop: `oft import-hf` turns a transformers model directory (GPT-2, OPT, BERT;
// config.json, model.safetensors or sharded safetensors with their index, tokenizer files) into
// an oft run with a step-0 checkpoint that `oft validate`, `oft eval`, `oft logits` and
// `oft train ... train.init_from=RUN` use directly; `oft export-hf` writes an oft run as a
// directory transformers loads with from_pretrained (standard architectures) or, for oft's own
// variants, the same files plus an "oft" section in config.json that names the variant, all its
// model.* keys and the tensors only oft uses, so that importing the export again reproduces
// every tensor bit for bit.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "hf/hf_names.h"

namespace oft::hf {

struct ImportOptions {
  std::string src;                     // Hugging Face model directory
  std::string run_dir;                 // run directory to create
  std::vector<std::string> overrides;  // key=value settings recorded in the run (data.*, ...)
  bool tokenizer = true;               // copy the tokenizer files into RUN/tokenizer
  bool allow_extra = false;            // unexpected tensors: warn instead of failing
};

struct ImportReport {
  Family family = Family::GPT2;
  std::string checkpoint;            // RUN/checkpoints/step_00000000
  std::string tokenizer;             // tokenizer spec recorded as data.tokenizer ("" = none)
  int64_t params = 0;                // parameter count
  int64_t tensors = 0;               // Hugging Face tensors read
  std::map<std::string, int64_t> converted;  // source dtype -> tensors converted to f32
  std::vector<std::string> notes;    // what was ignored, converted or assumed
};

// Throws oft::Error naming the file, the tensor / field and the fix for every bad input.
ImportReport import_hf(const ImportOptions& opt);

struct ExportOptions {
  std::string run;      // run directory or checkpoint
  std::string out_dir;  // directory to write (created; existing model files are replaced)
};

struct ExportReport {
  Family family = Family::GPT2;
  bool transformers_compatible = true;
  std::vector<std::string> variant;  // what makes it an oft variant (empty: standard)
  int64_t tensors = 0;               // tensors written
  std::vector<std::string> oft_tensors;  // tensors only oft uses ("oft.<name>")
  std::vector<std::string> notes;
};

ExportReport export_hf(const ExportOptions& opt);

}  // namespace oft::hf
