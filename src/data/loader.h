// TokenLoader: (inputs, targets[, key_mask]) batches of int32 [B, T] cut from a token Shard.
//
// The shard is cut into n sequences; a row of a batch is one sequence:
//   CausalLM: n = (tokens - 1) / T non-overlapping windows of T+1 tokens (window w covers tokens
//     [w*T, w*T + T], so consecutive windows share one boundary token); inputs = window[0..T),
//     targets = window[1..T+1).
//   MaskedLM, pack (Hugging Face run_mlm.py's group_texts): n = tokens / T windows of exactly T
//     tokens (window w = tokens [w*T, w*T + T); the tail is dropped); documents run across
//     window edges with their [CLS] ... [SEP] inside.
//   MaskedLM, !pack (run_mlm.py --line_by_line): one document per sequence. The documents are
//     the spans ending at each eot token ([CLS] ... [SEP] when prepared with a bos token; a
//     tail without eot is a document too), indexed once at construction. A document longer than
//     T keeps its first T-1 tokens and its last one ([SEP]); a shorter one is padded to T with
//     pad_id (key_mask 0, target -1).
//   MaskedLM inputs/targets are mlm_mask() (mlm.h) of the sequence with seed
//   mask_seed(epoch, sequence index): the masks are a pure function of (seed, epoch, sequence),
//   so they differ between epochs, do not depend on rank or batch layout, and need no state to
//   resume. Eval mode always masks with epoch 0 (the same masks every evaluation).
//
// Train mode: every epoch visits the sequences in a permutation drawn from an oft::Rng seeded by
// (seed, epoch). Eval mode: sequences in order 0, 1, 2, ... every epoch. With world_size W > 1,
// rank r takes positions r, r+W, r+2W, ... of the epoch's order; every rank gets the same
// n / W sequences per epoch (the remainder is dropped), so ranks stay in lockstep and disjoint.
//
// The stream of sequences is the concatenation of epochs: a batch that runs past the end of an
// epoch continues with the first sequences of the next one, so every sequence is seen exactly
// once per epoch. LoaderState {epoch, position} names the next sequence; saving it with a
// checkpoint and restoring it with set_state() continues bit-exactly (masks included).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "data/mlm.h"
#include "data/shard.h"

namespace oft {

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t position = 0;  // sequences of this rank already consumed in `epoch`

  nlohmann::json to_json() const;
  // Throws oft::Error when a key is missing or has the wrong type.
  static LoaderState from_json(const nlohmann::json& j);
  bool operator==(const LoaderState&) const = default;
};

enum class LoaderMode { Train, Eval };
enum class Objective { CausalLM, MaskedLM };

struct LoaderOptions {
  using Objective = ::oft::Objective;  // also reachable as LoaderOptions::Objective
  size_t batch_size = 1;  // B
  size_t seq_len = 0;     // T
  uint64_t seed = 0;
  LoaderMode mode = LoaderMode::Train;
  int rank = 0;
  int world_size = 1;
  Objective objective = Objective::CausalLM;
  // MaskedLM only. mlm.vocab_size <= 0 means the shard's vocab_size; pad_id is needed when
  // !pack. Build it with mlm_options_from_tokenizer() / mlm_options_from_meta().
  MlmOptions mlm;
  // MaskedLM: true = fixed T-token windows over the concatenated documents, false = one
  // document per sequence, padded. CausalLM requires true.
  bool pack = true;
};

class TokenLoader {
 public:
  // Throws oft::Error if the shard holds fewer than T+1 tokens (CausalLM), fewer than T tokens
  // (MaskedLM, pack) or no document (MaskedLM, !pack); fewer sequences than ranks; or for
  // MaskedLM, unusable mlm options (no [MASK] token; no [PAD] token when !pack).
  TokenLoader(std::shared_ptr<const Shard> shard, const LoaderOptions& opt);

  // Fills inputs[B*T] and targets[B*T] (row-major [B, T]; targets < 0 are not scored) and
  // advances the state by B sequences. Not for MaskedLM with !pack (padding needs a key mask).
  void next_batch(int32_t* inputs, int32_t* targets);
  // The same plus key_mask[B*T]: 1 = real token, 0 = padding (all ones unless MaskedLM !pack).
  void next_batch(int32_t* inputs, int32_t* targets, int32_t* key_mask);

  LoaderState state() const { return state_; }
  // Throws oft::Error if position is not inside an epoch of this loader (different shard,
  // seq_len or world_size than the run that saved it).
  void set_state(const LoaderState& s);
  // Back to epoch 0, position 0 (eval: the first sequence again, with the same masks).
  void reset() { set_state(LoaderState{}); }

  // "Windows" are sequences: windows, or documents for MaskedLM with !pack.
  size_t num_windows() const { return n_windows_; }           // in the whole shard
  size_t windows_per_epoch() const { return per_rank_; }      // for this rank
  size_t batches_per_epoch() const { return per_rank_ / opt_.batch_size; }  // full batches
  // Sequence index (into the shard) at `position` of `epoch` for this rank.
  size_t window_at(uint64_t epoch, uint64_t position);
  // MaskedLM, !pack: document d is shard tokens [begin, end) (before truncation to T).
  std::pair<size_t, size_t> document_span(size_t d) const {
    return {static_cast<size_t>(doc_off_.at(d)), static_cast<size_t>(doc_off_.at(d + 1))};
  }
  // MaskedLM: the mlm_mask() seed of sequence `seq` in `epoch` (eval mode passes epoch 0).
  uint64_t mask_seed(uint64_t epoch, size_t seq) const;
  const LoaderOptions& options() const { return opt_; }

 private:
  void build_order(uint64_t epoch);  // fills order_ for this rank
  void index_documents();            // fills doc_off_
  // Row b of a MaskedLM batch from sequence `seq`.
  void masked_row(size_t seq, int32_t* inputs, int32_t* targets, int32_t* key_mask);

  std::shared_ptr<const Shard> shard_;
  LoaderOptions opt_;
  size_t n_windows_ = 0, per_rank_ = 0;
  LoaderState state_;
  uint64_t order_epoch_ = UINT64_MAX;  // epoch whose order is in order_
  std::vector<uint64_t> order_;        // [per_rank_] sequence indices of this rank
  std::vector<int32_t> window_;        // [T+1] scratch
  std::vector<uint64_t> doc_off_;      // MaskedLM !pack: [documents + 1] start offsets
};

}  // namespace oft
