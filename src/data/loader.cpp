// TokenLoader: shuffled (train) or sequential (eval) [B, T] batches from a Shard, causal-LM
// windows or masked-LM windows / documents; see loader.h.
#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace oft {
namespace {

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t get_u64(const nlohmann::json& j, const char* key) {
  OFT_CHECK(j.is_object() && j.contains(key), "loader state: missing key '", key,
            "': the checkpoint's data-loader state is incomplete; resume from another checkpoint");
  const auto& v = j.at(key);
  OFT_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
            "loader state: '", key, "' must be a non-negative integer (got ", v.dump(),
            "): the checkpoint is corrupted");
  return v.get<uint64_t>();
}

}  // namespace

nlohmann::json LoaderState::to_json() const {
  return nlohmann::json{{"epoch", epoch}, {"position", position}};
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  LoaderState s;
  s.epoch = get_u64(j, "epoch");
  s.position = get_u64(j, "position");
  return s;
}

TokenLoader::TokenLoader(std::shared_ptr<const Shard> shard, const LoaderOptions& opt)
    : shard_(std::move(shard)), opt_(opt) {
  OFT_ASSERT(shard_ != nullptr);
  const Shard& s = *shard_;
  OFT_CHECK(opt.seq_len >= 1, "data loader: seq_len must be >= 1 (got ", opt.seq_len,
            "): set model.seq_len");
  OFT_CHECK(opt.batch_size >= 1, "data loader: batch_size must be >= 1 (got ", opt.batch_size,
            "): set train.batch_size");
  OFT_CHECK(opt.world_size >= 1 && opt.rank >= 0 && opt.rank < opt.world_size,
            "data loader: rank ", opt.rank, " is not in [0, world_size=", opt.world_size,
            "): check the launcher's rank settings");
  if (opt.objective == Objective::CausalLM) {
    OFT_CHECK(opt.pack, "data loader: one document per sequence (pack = false) is only for "
              "masked-LM data: set pack = true for causal-LM training");
    OFT_CHECK(s.size() >= opt.seq_len + 1, "shard '", s.path(), "' has ", s.size(),
              " tokens, fewer than seq_len+1 = ", opt.seq_len + 1,
              ": use a smaller seq_len or prepare more data");
    n_windows_ = (s.size() - 1) / opt.seq_len;
    per_rank_ = n_windows_ / static_cast<size_t>(opt.world_size);
    OFT_CHECK(per_rank_ >= 1, "shard '", s.path(), "' has only ", n_windows_,
              " windows of seq_len+1 = ", opt.seq_len + 1, " tokens for ", opt.world_size,
              " ranks: use a smaller seq_len, fewer ranks or more data");
    window_.resize(opt.seq_len + 1);
    return;
  }

  // ---- masked LM
  MlmOptions& m = opt_.mlm;
  OFT_CHECK(m.mask_id >= 0, "shard '", s.path(),
            "': the tokenizer has no [MASK] token: use a WordPiece vocabulary for masked-LM data");
  if (m.vocab_size <= 0) m.vocab_size = static_cast<int32_t>(s.vocab_size());
  OFT_CHECK(static_cast<uint64_t>(m.vocab_size) <= s.vocab_size(), "masked LM: vocab_size ",
            m.vocab_size, " exceeds the vocabulary ", s.vocab_size(), " of shard '", s.path(),
            "': build the masking options from the tokenizer that prepared it");
  validate_mlm_options(m);
  const size_t T = opt.seq_len;
  if (opt.pack) {
    OFT_CHECK(s.size() >= T, "shard '", s.path(), "' has ", s.size(),
              " tokens, fewer than seq_len = ", T, ": use a smaller seq_len or prepare more data");
    n_windows_ = s.size() / T;
  } else {
    OFT_CHECK(m.pad_id >= 0 && m.pad_id < m.vocab_size, "shard '", s.path(),
              "': the tokenizer has no [PAD] token (pad_id ", m.pad_id,
              "), needed for one document per sequence: use a WordPiece vocabulary or pack = "
              "true");
    OFT_CHECK(T >= 2, "data loader: seq_len must be >= 2 for one document per sequence (got ",
              T, "): set model.seq_len");
    index_documents();
    n_windows_ = doc_off_.size() - 1;
    OFT_CHECK(n_windows_ >= 1, "shard '", s.path(),
              "' holds no documents: prepare more data");
  }
  per_rank_ = n_windows_ / static_cast<size_t>(opt.world_size);
  OFT_CHECK(per_rank_ >= 1, "shard '", s.path(), "' has only ", n_windows_,
            opt.pack ? cat(" windows of seq_len = ", T, " tokens") : std::string(" documents"),
            " for ", opt.world_size, " ranks: use ",
            opt.pack ? "a smaller seq_len, " : "", "fewer ranks or more data");
  window_.resize(T);
}

void TokenLoader::index_documents() {
  const Shard& s = *shard_;
  const int32_t eot = s.eot_id();
  const size_t n = s.size();
  doc_off_.assign(1, 0);
  for (size_t i = 0; i < n; ++i)
    if (s.token(i) == eot) doc_off_.push_back(i + 1);
  if (doc_off_.back() != n) doc_off_.push_back(n);  // a tail without eot
  doc_off_.shrink_to_fit();
}

uint64_t TokenLoader::mask_seed(uint64_t epoch, size_t seq) const {
  constexpr uint64_t kMlmStream = 0x6d6c6d2d6d61736bull;  // "mlm-mask": apart from the shuffle
  return mix64(mix64(mix64(opt_.seed ^ kMlmStream) ^ epoch) ^ static_cast<uint64_t>(seq));
}

void TokenLoader::masked_row(size_t seq, int32_t* inputs, int32_t* targets, int32_t* key_mask) {
  const size_t T = opt_.seq_len;
  size_t len = T;
  if (opt_.pack) {
    shard_->copy(seq * T, T, window_.data());
  } else {
    const auto [begin, end] = document_span(seq);
    len = std::min(end - begin, T);
    // Truncation keeps the document's last token ([SEP]) as the last one, like Hugging Face's
    // truncation with special tokens.
    shard_->copy(begin, len - 1, window_.data());
    window_[len - 1] = shard_->token(end - 1);
  }
  const uint64_t epoch = opt_.mode == LoaderMode::Eval ? 0 : state_.epoch;
  mlm_mask(window_.data(), static_cast<int64_t>(len), opt_.mlm, mask_seed(epoch, seq), inputs,
           targets);
  for (size_t t = 0; t < len; ++t) key_mask[t] = 1;
  for (size_t t = len; t < T; ++t) {
    inputs[t] = opt_.mlm.pad_id;
    targets[t] = -1;
    key_mask[t] = 0;
  }
}

void TokenLoader::build_order(uint64_t epoch) {
  const size_t W = static_cast<size_t>(opt_.world_size), r = static_cast<size_t>(opt_.rank);
  if (opt_.mode == LoaderMode::Eval) {
    if (!order_.empty()) return;  // the same order every epoch
    order_.resize(per_rank_);
    for (size_t k = 0; k < per_rank_; ++k) order_[k] = r + k * W;
  } else {
    if (order_epoch_ == epoch) return;
    // Fisher-Yates over all windows, identical on every rank; each rank keeps its stride.
    std::vector<uint64_t> perm(n_windows_);
    std::iota(perm.begin(), perm.end(), uint64_t{0});
    Rng rng(mix64(mix64(opt_.seed) ^ epoch));
    for (size_t i = n_windows_; i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
    order_.resize(per_rank_);
    for (size_t k = 0; k < per_rank_; ++k) order_[k] = perm[r + k * W];
  }
  order_epoch_ = epoch;
}

size_t TokenLoader::window_at(uint64_t epoch, uint64_t position) {
  OFT_ASSERT(position < per_rank_);
  build_order(epoch);
  return static_cast<size_t>(order_[position]);
}

void TokenLoader::set_state(const LoaderState& s) {
  OFT_CHECK(s.position < per_rank_, "loader state position ", s.position,
            " is beyond this loader's ", per_rank_,
            " windows per epoch: the checkpoint was made with a different shard, seq_len or "
            "world_size; resume with the original settings");
  state_ = s;
}

void TokenLoader::next_batch(int32_t* inputs, int32_t* targets) {
  OFT_CHECK(opt_.objective == Objective::CausalLM || opt_.pack,
            "data loader: one-document-per-sequence masked-LM batches are padded: call "
            "next_batch(inputs, targets, key_mask) and pass the key mask to the model");
  const size_t T = opt_.seq_len;
  if (opt_.objective == Objective::MaskedLM) {
    std::vector<int32_t> ones(opt_.batch_size * T);
    next_batch(inputs, targets, ones.data());
    return;
  }
  for (size_t b = 0; b < opt_.batch_size; ++b) {
    const size_t w = window_at(state_.epoch, state_.position);
    shard_->copy(w * T, T + 1, window_.data());
    std::memcpy(inputs + b * T, window_.data(), T * sizeof(int32_t));
    std::memcpy(targets + b * T, window_.data() + 1, T * sizeof(int32_t));
    if (++state_.position == per_rank_) {
      state_.position = 0;
      ++state_.epoch;
    }
  }
}

void TokenLoader::next_batch(int32_t* inputs, int32_t* targets, int32_t* key_mask) {
  const size_t T = opt_.seq_len;
  if (opt_.objective == Objective::CausalLM) {
    next_batch(inputs, targets);
    std::fill(key_mask, key_mask + opt_.batch_size * T, 1);
    return;
  }
  for (size_t b = 0; b < opt_.batch_size; ++b) {
    // The epoch is read before the position advances: a row belongs to the epoch it came from.
    masked_row(window_at(state_.epoch, state_.position), inputs + b * T, targets + b * T,
               key_mask + b * T);
    if (++state_.position == per_rank_) {
      state_.position = 0;
      ++state_.epoch;
    }
  }
}

}  // namespace oft
