// TokenLoader: (inputs, targets) batches of int32 [B, T] cut from a token Shard.
//
// The shard is cut into n = (tokens - 1) / T non-overlapping windows of T+1 tokens (window w
// covers tokens [w*T, w*T + T], so consecutive windows share one boundary token). A row of a
// batch is one window: inputs = window[0..T), targets = window[1..T+1).
//
// Train mode: every epoch visits the windows in a permutation drawn from an oft::Rng seeded by
// (seed, epoch). Eval mode: windows in order 0, 1, 2, ... every epoch. With world_size W > 1,
// rank r takes positions r, r+W, r+2W, ... of the epoch's order; every rank gets the same
// n / W windows per epoch (the remainder is dropped), so ranks stay in lockstep and disjoint.
//
// The stream of windows is the concatenation of epochs: a batch that runs past the end of an
// epoch continues with the first windows of the next one, so every window is seen exactly once
// per epoch. LoaderState {epoch, position} names the next window; saving it with a checkpoint
// and restoring it with set_state() continues bit-exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "data/shard.h"

namespace oft {

struct LoaderState {
  uint64_t epoch = 0;
  uint64_t position = 0;  // windows of this rank already consumed in `epoch`

  nlohmann::json to_json() const;
  // Throws oft::Error when a key is missing or has the wrong type.
  static LoaderState from_json(const nlohmann::json& j);
  bool operator==(const LoaderState&) const = default;
};

enum class LoaderMode { Train, Eval };

struct LoaderOptions {
  size_t batch_size = 1;  // B
  size_t seq_len = 0;     // T
  uint64_t seed = 0;
  LoaderMode mode = LoaderMode::Train;
  int rank = 0;
  int world_size = 1;
};

class TokenLoader {
 public:
  // Throws oft::Error if the shard holds fewer than T+1 tokens, or fewer windows than ranks.
  TokenLoader(std::shared_ptr<const Shard> shard, const LoaderOptions& opt);

  // Fills inputs[B*T] and targets[B*T] (row-major [B, T]) and advances the state by B windows.
  void next_batch(int32_t* inputs, int32_t* targets);

  LoaderState state() const { return state_; }
  // Throws oft::Error if position is not inside an epoch of this loader (different shard,
  // seq_len or world_size than the run that saved it).
  void set_state(const LoaderState& s);
  // Back to epoch 0, position 0 (eval: the first window again).
  void reset() { set_state(LoaderState{}); }

  size_t num_windows() const { return n_windows_; }           // in the whole shard
  size_t windows_per_epoch() const { return per_rank_; }      // for this rank
  size_t batches_per_epoch() const { return per_rank_ / opt_.batch_size; }  // full batches
  // Window index (into the shard) at `position` of `epoch` for this rank.
  size_t window_at(uint64_t epoch, uint64_t position);
  const LoaderOptions& options() const { return opt_; }

 private:
  void build_order(uint64_t epoch);  // fills order_ for this rank

  std::shared_ptr<const Shard> shard_;
  LoaderOptions opt_;
  size_t n_windows_ = 0, per_rank_ = 0;
  LoaderState state_;
  uint64_t order_epoch_ = UINT64_MAX;  // epoch whose order is in order_
  std::vector<uint64_t> order_;        // [per_rank_] window indices of this rank
  std::vector<int32_t> window_;        // [T+1] scratch
};

}  // namespace oft
