// Masked-LM (BERT) masking, the semantics of Hugging Face's DataCollatorForLanguageModeling
// (mlm_probability 0.15) as used by run_mlm.py:
//   - every position whose token is neither special nor padding is selected with probability
//     mask_prob (an independent Bernoulli draw per position, so the count varies);
//   - selected positions: target = the original id; all others: target = -1 (ignored);
//   - a selected position's input becomes mask_id with probability replace_mask (0.8), else a
//     uniformly random id in [0, vocab_size) with probability replace_random (0.1 overall, i.e.
//     0.5 of the rest), else stays unchanged (0.1). The random id may be any id, special ones
//     included, like torch.randint(len(tokenizer)).
// The draws are a pure function of `seed` (an oft::Rng seeded by it), so a batch's masks can be
// recomputed from (seed, data) alone: no RNG state needs to be checkpointed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace oft {

struct MlmOptions {
  double mask_prob = 0.15;       // P(position selected)
  double replace_mask = 0.8;     // P(input -> mask_id | selected)
  double replace_random = 0.1;   // P(input -> random id | selected)
  int32_t mask_id = -1;          // [MASK]; must be >= 0
  int32_t vocab_size = 0;        // random ids are drawn from [0, vocab_size); must be > mask_id
  std::vector<int32_t> special_ids;  // never selected ([CLS] [SEP] [PAD] [MASK] for BERT)
  int32_t pad_id = -1;           // never selected either; -1 = none
};

// Throws oft::Error when the options cannot be used: no [MASK] token (mask_id < 0), vocab_size
// not above mask_id, probabilities outside [0, 1] or replace_mask + replace_random > 1.
void validate_mlm_options(const MlmOptions& opt);

// inputs[i], targets[i] for tokens[0..n) as described above. `tokens` may alias `inputs`.
// Calls validate_mlm_options(). Special ids are looked up in a short list: keep it small.
void mlm_mask(const int32_t* tokens, int64_t n, const MlmOptions& opt, uint64_t seed,
              int32_t* inputs, int32_t* targets);

// Options for a tokenizer: its mask_id(), pad_id(), special_ids() and vocab_size(), the
// probabilities at their defaults.
MlmOptions mlm_options_from_tokenizer(const Tokenizer& tok);
// The same from the meta.json that `oft data prepare` writes next to the shards (keys
// vocab_size, mask_id, pad_id, special_ids). Errors name the file and the fix.
MlmOptions mlm_options_from_meta(const std::string& meta_path);

}  // namespace oft
