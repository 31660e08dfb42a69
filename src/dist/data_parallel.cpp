// Data-parallel gradient reduction and ZeRO-1 sharding (see data_parallel.h).
#include "dist/data_parallel.h"

#include <algorithm>
#include <cmath>

#include "ops/ops.h"

namespace oft::dist {

namespace {
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Elements of the largest storage behind a parameter's gradient and master value: its slot
// holds either storage whole (the output layer's are padded beyond the parameter).
int64_t slot_elems(const Param& p) {
  const size_t es = dtype_size(p.grad.dtype());
  return int64_t((std::max(p.grad.storage_bytes(), p.value.storage_bytes()) + es - 1) / es);
}

// Collective: the whole tensor of shape `like` from the ranks' ranges of it. Each rank writes its
// range (`part`, or nothing when `r` is null) into zeros; the sum over ranks is the whole.
Tensor assemble(const Tensor& like, const ParamRange* r, const Tensor& part, Communicator& comm) {
  Tensor full = Tensor::zeros(like.shape(), like.dtype(), like.device());
  if (r) {
    Tensor dst = range_view(full, *r);
    dst.copy_from(part);
  }
  ops::comm_wait_compute();
  comm.all_reduce_sum(full);
  ops::compute_wait_comm();
  return full;
}

int group_of(const std::string& name, int n_layer) {
  for (int l = 0; l < n_layer; ++l)
    if (TransformerLM::in_block(name, size_t(l))) return l;
  return TransformerLM::grad_final_at_end(name) ? ArenaLayout::kEnd : ArenaLayout::kHead;
}
}  // namespace

ArenaLayout ArenaLayout::plan(const std::vector<int64_t>& elems, const std::vector<int>& group,
                              int n_layer, int world) {
  OFT_ASSERT(elems.size() == group.size() && world >= 1, "ArenaLayout::plan");
  ArenaLayout a;
  a.world = world;
  a.slot.assign(elems.size(), -1);
  // Buckets in the order gradients become final: the head, blocks L-1 .. 0, the embedding end.
  // members[0]: head; members[1 + L-1-l]: block l; members[L + 1]: end.
  const size_t L = size_t(n_layer);
  std::vector<std::vector<size_t>> members(L + 2);
  for (size_t i = 0; i < elems.size(); ++i) {
    const int g = group[i];
    OFT_ASSERT(g == kHead || g == kEnd || (g >= 0 && g < n_layer), "ArenaLayout: group ", g);
    members[g == kHead ? 0 : g == kEnd ? L + 1 : 1 + L - 1 - size_t(g)].push_back(i);
  }
  a.bucket_of_layer.assign(L, kNone);
  int64_t off = 0;
  for (size_t b = 0; b < members.size(); ++b) {
    if (members[b].empty()) continue;  // no head / end parameters, or a block without any
    Bucket k;
    k.offset = off;
    for (size_t i : members[b]) {
      a.slot[i] = off;
      off += round_up(std::max<int64_t>(elems[i], 1), kAlign);
    }
    k.size = round_up(std::max<int64_t>(off - k.offset, 1), kAlign * world);
    off = k.offset + k.size;
    k.params = members[b];
    if (b == 0)
      a.head_bucket = a.buckets.size();
    else if (b == L + 1)
      a.end_bucket = a.buckets.size();
    else
      a.bucket_of_layer[L - b] = a.buckets.size();
    a.buckets.push_back(std::move(k));
  }
  a.total = off;
  return a;
}

std::vector<ParamRange> ArenaLayout::owned_ranges(int rank,
                                                  const std::vector<int64_t>& numel) const {
  std::vector<ParamRange> r;
  for (const Bucket& b : buckets) {
    const int64_t cs = b.size / world;
    const int64_t lo = b.offset + rank * cs, hi = lo + cs;
    for (size_t i : b.params) {
      const int64_t a = std::max(lo, slot[i]), e = std::min(hi, slot[i] + numel[i]);
      if (a < e) r.push_back({i, a - slot[i], e - slot[i]});
    }
  }
  std::sort(r.begin(), r.end(), [](const ParamRange& x, const ParamRange& y) {
    return x.param < y.param;
  });
  return r;
}

DataParallel::DataParallel(TransformerLM& model, Communicator& comm, bool zero1,
                           bool bf16_reduce)
    : model_(model), comm_(comm), zero1_(zero1) {
  auto& ps = model_.params().all();
  OFT_CHECK(!ps.empty(), "data-parallel training of a model without parameters");
  const DType dt = ps.front().grad.dtype();
  std::vector<int64_t> elems;
  std::vector<int> layers;
  for (const Param& p : ps) {
    OFT_ASSERT(p.grad.storage_offset() == 0 && p.value.storage_offset() == 0 &&
                   p.grad.dtype() == dt && p.value.dtype() == dt,
               "parameter ", p.name, " does not start its own storage");
    elems.push_back(slot_elems(p));
    layers.push_back(group_of(p.name, int(model_.config().n_layer)));
  }
  layout_ = ArenaLayout::plan(elems, layers, int(model_.config().n_layer), comm_.size());
  const Device dev = model_.device();
  grad_arena_ = Tensor::zeros({layout_.total}, dt, dev);
  // ZeRO-1 all-gathers what the forward pass reads: the bf16 compute copies when the model has
  // them (half the bytes of the masters; other shards' masters are gathered for checkpoints
  // only), else the f32 masters themselves.
  split_compute_ = !ps.front().compute.same_storage(ps.front().value);
  const DType gather_dt = split_compute_ ? ps.front().compute.dtype() : dt;
  if (zero1_) value_arena_ = Tensor::zeros({layout_.total}, gather_dt, dev);
  if (bf16_reduce) comm_arena_ = Tensor::zeros({layout_.total}, DType::BF16, dev);
  const size_t es = dtype_size(dt);
  for (size_t i = 0; i < ps.size(); ++i) {
    char* g = static_cast<char*>(grad_arena_.raw()) + size_t(layout_.slot[i]) * es;
    ps[i].grad.move_storage_to(g);
    if (zero1_) {
      Tensor& t = split_compute_ ? ps[i].compute : ps[i].value;
      OFT_ASSERT(t.storage_offset() == 0 && t.dtype() == gather_dt &&
                     t.storage_bytes() <= size_t(elems[i]) * dtype_size(gather_dt),
                 "parameter ", ps[i].name, ": compute copy does not fit its slot");
      t.move_storage_to(static_cast<char*>(value_arena_.raw()) +
                        size_t(layout_.slot[i]) * dtype_size(gather_dt));
    }
  }
  // The input embedding's part of the tied token-embedding gradient is kept apart (it is only
  // final at the end) so the output layer's part can be reduced first.
  wte_ = model_.params().find("wte.weight");
  if (wte_ && layout_.head_bucket != ArenaLayout::kNone) {
    token_sink_ = Tensor::zeros(wte_->grad.shape(), dt, dev);
    token_seen_.assign(size_t(wte_->grad.dim(0)), 0);
    model_.set_token_grad_sink(token_sink_);
  }
  model_.set_head_grads_ready([this] {
    if (reduce_ && layout_.head_bucket != ArenaLayout::kNone) reduce_bucket(layout_.head_bucket);
  });
  model_.set_block_grads_ready([this](size_t l) {
    if (reduce_ && layout_.bucket_of_layer.at(l) != ArenaLayout::kNone)
      reduce_bucket(layout_.bucket_of_layer.at(l));
  });
}

DataParallel::~DataParallel() {
  model_.set_block_grads_ready(nullptr);
  model_.set_head_grads_ready(nullptr);
  model_.set_token_grad_sink(Tensor());
  ops::comm_synchronize();
  // The arenas own the parameters' memory: give every storage memory of its own again so the
  // model stays usable once the arenas are gone.
  for (Param& p : model_.params().all()) {
    p.grad.reallocate_storage();
    if (zero1_) (split_compute_ ? p.compute : p.value).reallocate_storage();
  }
}

std::vector<ParamRange> DataParallel::owned_ranges() const {
  std::vector<int64_t> numel;
  for (const Param& p : model_.params().all()) numel.push_back(p.value.numel());
  return layout_.owned_ranges(comm_.rank(), numel);
}

void DataParallel::broadcast_parameters() {
  ops::comm_wait_compute();
  comm_.group_start();
  for (Param& p : model_.params().all()) comm_.broadcast(p.value, 0);
  comm_.group_end();
  ops::compute_wait_comm();
  model_.params().sync_compute();
}

void DataParallel::before_backward(bool reduce) { reduce_ = reduce; }

double DataParallel::global_loss_and_grad_norm(double& loss, const AdamW& opt) {
  std::vector<double> v{loss, zero1_ ? opt.grad_sum_squares() : 0.0};
  comm_.all_reduce_host(v);
  loss = v[0];
  return zero1_ ? std::sqrt(v[1]) : opt.grad_norm();  // DDP: every rank holds the sum
}

AdamW DataParallel::make_optimizer(const TrainConfig& cfg) {
  return zero1_ ? AdamW(model_.params(), cfg, owned_ranges()) : AdamW(model_.params(), cfg);
}

void DataParallel::add_batch_tokens(const int32_t* ids, int64_t n) {
  if (!token_sink_.defined()) return;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = ids[i];
    OFT_ASSERT(t >= 0 && size_t(t) < token_seen_.size(), "token id ", t, " out of range");
    if (!token_seen_[size_t(t)]) {
      token_seen_[size_t(t)] = 1;
      token_rows_.push_back(double(t));
    }
  }
}

void DataParallel::reduce_token_rows() {
  if (!token_sink_.defined()) return;
  const int64_t V = token_sink_.dim(0), P = token_sink_.dim(1);
  if (token_rows_.empty())  // no ids given: every row
    for (int64_t t = 0; t < V; ++t) token_rows_.push_back(double(t));
  const int64_t U = int64_t(token_rows_.size());
  const Device dev = token_sink_.device();
  const Tensor idx = Tensor::from_vector({U}, token_rows_, DType::I32).to(dev);
  Tensor part = Tensor::empty({U, P}, token_sink_.dtype(), dev);
  ops::on(part).gather_rows(part, token_sink_, idx);
  ops::comm_wait_compute();
  comm_.all_reduce_sum(part);
  ops::compute_wait_comm();  // also after the head bucket's reduction (one comm stream)
  Tensor rows = Tensor::empty({U, P}, token_sink_.dtype(), dev);
  ops::on(rows).gather_rows(rows, wte_->grad, idx);
  ops::add(rows, rows, part);
  ops::on(rows).scatter_rows(wte_->grad, rows, idx);
  ops::fill(token_sink_, 0.0);
  for (double t : token_rows_) token_seen_[size_t(t)] = 0;
  token_rows_.clear();
}

void DataParallel::reduce_bucket(size_t b) {
  const Bucket& k = layout_.buckets.at(b);
  Tensor range = grad_arena_.slice(k.offset, k.offset + k.size);
  if (comm_arena_.defined()) {  // narrow the bucket to its bf16 copy, which travels instead
    Tensor narrow = comm_arena_.slice(k.offset, k.offset + k.size);
    ops::convert(narrow, range);
    range = narrow;
  }
  ops::comm_wait_compute();  // the bucket's gradients are computed
  if (zero1_)
    comm_.reduce_scatter_sum(range);
  else
    comm_.all_reduce_sum(range);
}

void DataParallel::after_backward() {
  const bool reduced = reduce_;
  if (reduce_) {
    if (layout_.end_bucket != ArenaLayout::kNone) reduce_bucket(layout_.end_bucket);
    if (!comm_arena_.defined()) reduce_token_rows();
  }
  reduce_ = false;
  ops::compute_wait_comm();
  if (reduced && comm_arena_.defined()) {
    ops::convert(grad_arena_, comm_arena_);  // widen the reduced buckets back to f32
    reduce_token_rows();                     // (in f32; it adds into wte's widened rows)
  }
}

void DataParallel::after_step() {
  if (!zero1_) return;
  ops::comm_wait_compute();  // the updates of this rank's chunks are done
  comm_.group_start();
  for (const Bucket& k : layout_.buckets) {
    Tensor range = value_arena_.slice(k.offset, k.offset + k.size);
    comm_.all_gather(range);
  }
  comm_.group_end();
  ops::compute_wait_comm();
  // The gathered arena holds the compute copies (or the f32 masters they are): nothing to refresh.
}

void DataParallel::gather_masters() {
  if (!zero1_ || !split_compute_) return;  // f32 models gather the masters every step
  const std::vector<ParamRange> mine = owned_ranges();
  std::vector<const ParamRange*> of(model_.params().all().size(), nullptr);
  for (const ParamRange& r : mine) of[r.param] = &r;
  auto& ps = model_.params().all();
  for (size_t i = 0; i < ps.size(); ++i) {
    const Tensor mine = of[i] ? range_view(ps[i].value, *of[i]) : Tensor();
    ps[i].value.copy_from(assemble(ps[i].value, of[i], mine, comm_));
  }
}

std::vector<std::pair<std::string, Tensor>> gather_optimizer_state(const AdamW& opt,
                                                                   Communicator& comm) {
  const auto& ps = opt.params().all();
  std::vector<const ParamRange*> mine(ps.size(), nullptr);
  std::vector<size_t> index(ps.size(), 0);
  for (size_t i = 0; i < opt.ranges().size(); ++i) {
    mine[opt.ranges()[i].param] = &opt.ranges()[i];
    index[opt.ranges()[i].param] = i;
  }
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t p = 0; p < ps.size(); ++p) {
    out.emplace_back("m." + ps[p].name,
                     assemble(ps[p].value, mine[p], mine[p] ? opt.m(index[p]) : Tensor(), comm)
                         .to(Device::CPU));
    out.emplace_back("v." + ps[p].name,
                     assemble(ps[p].value, mine[p], mine[p] ? opt.v(index[p]) : Tensor(), comm)
                         .to(Device::CPU));
  }
  return out;
}

}  // namespace oft::dist
