// Data-parallel training over a Communicator: every rank holds the whole model and computes the
// gradients of its rows of the global batch; the gradients are summed across ranks bucket by
// bucket while the backward pass continues (overlap), and with ZeRO-1 each rank keeps the AdamW
// moments of its shard only.
//
// Layout. Every parameter's gradient storage is moved into one flat f32 arena (the layers keep
// their handles: Tensor::move_storage_to). Parameters are grouped into buckets in the order
// their gradients become final: the head (output layer = the tied token embedding, final norm,
// masked-LM head), block L-1, ..., block 0, then the embedding end (position / token-type
// embeddings, embedding norm, project_in). Each parameter gets a slot aligned to 64 elements; each bucket is padded to a multiple
// of 64 * world elements so it splits into `world` equal, aligned chunks. With ZeRO-1 the master
// weights live in a second arena with the same slots, and rank r owns chunk r of every bucket:
//
//   head backward done       -> (comm stream) reduce the head bucket:
//                               all-reduce (DDP)  |  reduce-scatter, chunk r summed (ZeRO-1)
//   backward of block l done -> reduce bucket l the same way
//   after backward           -> reduce the embedding-end bucket; the input embedding's part of
//                               the token-embedding gradient (kept apart by the model) is
//                               all-reduced for the rows of the global batch's tokens only and
//                               added to the reduced output-layer part; the compute stream waits
//                               for the comm stream
//   optimizer                -> DDP: every rank updates everything (identical results);
//                               ZeRO-1: rank r updates the parameter ranges in its chunks, then
//                               the master arena is all-gathered and the bf16 copies refreshed
//
// The gradients are scaled before the reduction (each rank's loss is divided by the target
// count of the whole global batch), so a sum gives the global mean. With reduce_dtype bf16 the
// buckets travel as bf16 copies (half the bytes; each sum rounds to bf16, like FSDP's
// reduce_dtype) and are widened back to f32 after the backward pass.
#pragma once

#include <cstdint>
#include <vector>

#include "dist/communicator.h"
#include "model/transformer.h"
#include "train/optimizer.h"

namespace oft::dist {

struct Bucket {
  int64_t offset = 0;  // first element in the arena
  int64_t size = 0;    // elements, a multiple of 64 * world
  std::vector<size_t> params;  // indices into ParamStore::all()
};

// The arena layout (pure bookkeeping, no memory): slots and buckets for `world` ranks.
struct ArenaLayout {
  static constexpr int64_t kAlign = 64;  // elements (256 bytes of f32)
  static constexpr int kHead = -1, kEnd = -2;  // groups besides the blocks
  static constexpr size_t kNone = size_t(-1);
  std::vector<int64_t> slot;  // per parameter: element offset of its slot
  std::vector<Bucket> buckets;
  int64_t total = 0;  // elements
  int world = 1;
  // Bucket indices: block l's, the head's and the embedding end's (kNone when empty).
  std::vector<size_t> bucket_of_layer;
  size_t head_bucket = kNone, end_bucket = kNone;

  // `slot_elems[i]`: elements parameter i needs (its largest storage); `group[i]`: its block,
  // or kHead / kEnd.
  static ArenaLayout plan(const std::vector<int64_t>& slot_elems, const std::vector<int>& group,
                          int n_layer, int world);
  // Parameter element ranges inside chunk `rank` of every bucket: what ZeRO-1 rank `rank`
  // updates. `numel[i]`: elements of parameter i.
  std::vector<ParamRange> owned_ranges(int rank, const std::vector<int64_t>& numel) const;
};

class DataParallel {
 public:
  // Moves the gradient (and with zero1 the master) storages into arenas on the model's device.
  // bf16_reduce: the buckets travel as bf16 copies (train.grad_reduce_dtype=bf16).
  DataParallel(TransformerLM& model, Communicator& comm, bool zero1, bool bf16_reduce = false);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  bool zero1() const { return zero1_; }
  const ArenaLayout& layout() const { return layout_; }
  // The parameter ranges this rank's optimizer updates (ZeRO-1), for AdamW's sharded form.
  std::vector<ParamRange> owned_ranges() const;

  // Makes every rank start from rank 0's weights (after init or loading).
  void broadcast_parameters();
  // Call before the backward pass: with `reduce` the buckets are reduced as they become final
  // (the last micro-batch of an accumulation); without, gradients just accumulate locally.
  void before_backward(bool reduce);
  // The token ids of a micro-batch of the *global* batch (every rank passes the same ids, all
  // rows): the rows of the input-embedding gradient to reduce. Without any, all rows are.
  void add_batch_tokens(const int32_t* ids, int64_t n);
  // Call after the backward pass: reduces the rest bucket and orders the compute stream after
  // the reductions.
  void after_backward();
  // ZeRO-1, after the optimizer updated this rank's ranges (masters and compute copies): all-
  // gathers the compute copies (bf16 models; the f32 masters of f32 models). No-op for DDP.
  void after_step();
  // The step's one blocking exchange: `loss` (this rank's share of the global mean) becomes the
  // global loss, and the global gradient norm is returned (ZeRO-1: summed over the shards).
  double global_loss_and_grad_norm(double& loss, const AdamW& opt);
  // AdamW over the whole model, or (ZeRO-1) over this rank's ranges.
  AdamW make_optimizer(const TrainConfig& cfg);
  // ZeRO-1 with bf16 compute copies: every rank's masters are current only in its own ranges.
  // This collective makes them whole (before a checkpoint). No-op otherwise.
  void gather_masters();

 private:
  void reduce_bucket(size_t b);
  void reduce_token_rows();

  TransformerLM& model_;
  Communicator& comm_;
  bool zero1_;
  Tensor comm_arena_;  // [total] bf16 copies of the gradients in flight (reduce_dtype bf16)
  bool reduce_ = false;
  ArenaLayout layout_;
  // [total]: the f32 gradients; (ZeRO-1) what is all-gathered after each step, the compute
  // copies (bf16) or, for f32 models, the masters.
  Tensor grad_arena_, value_arena_;
  bool split_compute_ = false;  // the model keeps separate (bf16) compute copies
  Param* wte_ = nullptr;             // the token embedding
  Tensor token_sink_;                // [V, P] the input embedding's part of its gradient
  std::vector<char> token_seen_;     // [V] tokens of this step's global batches
  std::vector<double> token_rows_;   // their ids, in first-seen order
};

// ZeRO-1 checkpoints: the full AdamW moments ("m.<param>", "v.<param>" host tensors in
// parameter order), assembled from every rank's ranges. Collective: every rank calls it.
std::vector<std::pair<std::string, Tensor>> gather_optimizer_state(const AdamW& opt,
                                                                   Communicator& comm);

}  // namespace oft::dist
