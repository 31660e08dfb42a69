// Masked-LM masking (Hugging Face DataCollatorForLanguageModeling semantics); see mlm.h.
#include "data/mlm.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"

namespace oft {

void validate_mlm_options(const MlmOptions& o) {
  OFT_CHECK(o.mask_id >= 0,
            "the tokenizer has no [MASK] token: use a WordPiece vocabulary for masked-LM data");
  OFT_CHECK(o.vocab_size > o.mask_id, "masked LM: vocab_size ", o.vocab_size,
            " does not hold the [MASK] id ", o.mask_id,
            ": prepare the data and the options with the same tokenizer");
  OFT_CHECK(o.mask_prob >= 0.0 && o.mask_prob <= 1.0, "masked LM: mask_prob must be in [0, 1] (got ",
            o.mask_prob, "): the usual value is 0.15");
  OFT_CHECK(o.replace_mask >= 0.0 && o.replace_random >= 0.0 &&
                o.replace_mask + o.replace_random <= 1.0 + 1e-12,
            "masked LM: replace_mask (", o.replace_mask, ") and replace_random (", o.replace_random,
            ") must be >= 0 with a sum <= 1: the usual values are 0.8 and 0.1");
}

void mlm_mask(const int32_t* tokens, int64_t n, const MlmOptions& o, uint64_t seed,
              int32_t* inputs, int32_t* targets) {
  validate_mlm_options(o);
  // Short lists (BERT: 4-5 ids) are scanned; long ones are searched in a sorted copy.
  std::vector<int32_t> special = o.special_ids;
  if (o.pad_id >= 0) special.push_back(o.pad_id);
  const bool sorted = special.size() > 16;
  if (sorted) std::sort(special.begin(), special.end());
  auto is_special = [&](int32_t id) {
    return sorted ? std::binary_search(special.begin(), special.end(), id)
                  : std::find(special.begin(), special.end(), id) != special.end();
  };
  const double p_rand_end = o.replace_mask + o.replace_random;
  const uint64_t V = static_cast<uint64_t>(o.vocab_size);
  Rng rng(seed);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = tokens[i];
    // One selection draw per position, special or not (as torch.bernoulli draws over the whole
    // matrix), so a position's selection does not depend on its neighbours.
    const bool selected = rng.uniform() < o.mask_prob && !is_special(id);
    if (!selected) {
      inputs[i] = id;
      targets[i] = -1;
      continue;
    }
    targets[i] = id;
    // P(mask) = replace_mask; P(random) = replace_random (HF: bernoulli(0.8), then
    // bernoulli(0.5) among the rest); otherwise unchanged.
    const double u = rng.uniform();
    if (u < o.replace_mask)
      inputs[i] = o.mask_id;
    else if (u < p_rand_end)
      inputs[i] = static_cast<int32_t>(rng.below(V));
    else
      inputs[i] = id;
  }
}

MlmOptions mlm_options_from_tokenizer(const Tokenizer& tok) {
  MlmOptions o;
  o.mask_id = tok.mask_id();
  o.pad_id = tok.pad_id();
  o.special_ids = tok.special_ids();
  o.vocab_size = tok.vocab_size();
  return o;
}

MlmOptions mlm_options_from_meta(const std::string& meta_path) {
  std::ifstream f(meta_path, std::ios::binary);
  OFT_CHECK(f.good(), "cannot read '", meta_path,
            "': point at the meta.json that `oft data prepare` wrote next to the shards");
  const std::string text((std::istreambuf_iterator<char>(f)), {});
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  OFT_CHECK(j.is_object(), "'", meta_path, "' is not valid JSON: re-run `oft data prepare`");
  auto get_int = [&](const char* key) -> int32_t {
    OFT_CHECK(j.contains(key) && j.at(key).is_number_integer(), "'", meta_path,
              "' has no integer '", key,
              "': it predates masked-LM support; re-run `oft data prepare`");
    return j.at(key).get<int32_t>();
  };
  MlmOptions o;
  o.vocab_size = get_int("vocab_size");
  o.mask_id = get_int("mask_id");
  o.pad_id = get_int("pad_id");
  OFT_CHECK(j.contains("special_ids") && j.at("special_ids").is_array(), "'", meta_path,
            "' has no 'special_ids' list: it predates masked-LM support; re-run `oft data "
            "prepare`");
  for (const auto& v : j.at("special_ids")) {
    OFT_CHECK(v.is_number_integer(), "'", meta_path,
              "': special_ids must hold integers: re-run `oft data prepare`");
    o.special_ids.push_back(v.get<int32_t>());
  }
  return o;
}

}  // namespace oft
