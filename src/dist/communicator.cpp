// NCCL communicator, rendezvous and rank discovery (see communicator.h).
#include "dist/communicator.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "io/atomic_file.h"
#include "ops/ops.h"

namespace fs = std::filesystem;

namespace oft::dist {

int env_int(const char* name, const char* value) {
  char* end = nullptr;
  const long v = std::strtol(value, &end, 10);
  OFT_CHECK(end != value && *end == '\0' && v >= 0 && v < (1 << 20), "environment variable ",
            name, "=", value, " is not a non-negative integer: unset it, or let `oft train "
            "--gpus N` / mpirun set it");
  return static_cast<int>(v);
}

namespace {
const char* env(const char* n) {
  const char* v = std::getenv(n);
  return v && *v ? v : nullptr;
}
}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  const char* prefix = nullptr;
  if (env("OFT_WORLD_SIZE")) {
    e.world = env_int("OFT_WORLD_SIZE", env("OFT_WORLD_SIZE"));
    OFT_CHECK(env("OFT_RANK"), "OFT_WORLD_SIZE is set but OFT_RANK is not: set both (or "
                               "neither, and launch with `oft train --gpus N`)");
    e.rank = env_int("OFT_RANK", env("OFT_RANK"));
    e.local_rank = env("OFT_LOCAL_RANK") ? env_int("OFT_LOCAL_RANK", env("OFT_LOCAL_RANK")) : e.rank;
    prefix = "OFT_";
  } else if (env("OMPI_COMM_WORLD_SIZE")) {
    e.world = env_int("OMPI_COMM_WORLD_SIZE", env("OMPI_COMM_WORLD_SIZE"));
    e.rank = env_int("OMPI_COMM_WORLD_RANK", env("OMPI_COMM_WORLD_RANK") ? env("OMPI_COMM_WORLD_RANK") : "");
    e.local_rank = env("OMPI_COMM_WORLD_LOCAL_RANK")
                       ? env_int("OMPI_COMM_WORLD_LOCAL_RANK", env("OMPI_COMM_WORLD_LOCAL_RANK"))
                       : e.rank;
    prefix = "OMPI_COMM_WORLD_";
  } else {
    return e;
  }
  OFT_CHECK(e.world >= 1 && e.rank < e.world, prefix, "RANK=", e.rank, " is not below ", prefix,
            "SIZE=", e.world);
  e.distributed = true;
  if (env("OFT_RENDEZVOUS")) {
    e.rendezvous = env("OFT_RENDEZVOUS");
  } else if (e.world > 1) {
    const char* job = env("PMIX_NAMESPACE") ? env("PMIX_NAMESPACE")
                      : env("OMPI_MCA_ess_base_jobid") ? env("OMPI_MCA_ess_base_jobid")
                                                       : env("OMPI_MCA_orte_ess_jobid");
    OFT_CHECK(job, "cannot name a rendezvous file for this job: set OFT_RENDEZVOUS to a file "
                   "path that every rank can see (e.g. /tmp/oft-job-1)");
    std::string j = job;
    for (char& c : j)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    const fs::path tmp = env("TMPDIR") ? env("TMPDIR") : "/tmp";
    e.rendezvous = (tmp / ("oft-rendezvous-" + j)).string();
  }
  return e;
}

std::string unique_id_to_hex(const NcclUniqueId& id) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (char c : id.internal) {
    const auto b = static_cast<unsigned char>(c);
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

NcclUniqueId unique_id_from_hex(const std::string& hex_in, const std::string& source) {
  std::string hex = hex_in;
  while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r')) hex.pop_back();
  NcclUniqueId id{};
  OFT_CHECK(hex.size() == 2 * sizeof(id.internal), source, ": expected ",
            2 * sizeof(id.internal), " hex digits of an NCCL id, found ", hex.size(),
            " characters: remove the file and start all ranks again");
  auto nib = [&](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    fail(source, ": '", std::string(1, c), "' is not a hex digit: remove the file and start "
                 "all ranks again");
  };
  for (size_t i = 0; i < sizeof(id.internal); ++i)
    id.internal[i] = static_cast<char>(nib(hex[2 * i]) * 16 + nib(hex[2 * i + 1]));
  return id;
}

void publish_unique_id(const std::string& path, const NcclUniqueId& id) {
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  write_file_atomic(path, unique_id_to_hex(id) + "\n");
}

NcclUniqueId wait_for_unique_id(const std::string& path, double timeout_s) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(path)) {
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    OFT_CHECK(waited < timeout_s, "waited ", timeout_s, " s for rank 0 to write the NCCL id to ",
              path, ": is rank 0 running (and did it fail earlier)? All ranks must see the same "
              "OFT_RENDEZVOUS path; raise OFT_RENDEZVOUS_TIMEOUT for slow starts");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return unique_id_from_hex(read_file(path), path);
}

namespace {
int nccl_type(const Tensor& x) {
  switch (x.dtype()) {
    case DType::F32: return kNcclFloat32;
    case DType::F64: return kNcclFloat64;
    case DType::BF16: return kNcclBfloat16;
    case DType::I32: return kNcclInt32;
  }
  return kNcclFloat32;
}
void expect_gpu(const Tensor& x, const char* what) {
  OFT_ASSERT(x.defined() && x.device() == Device::CUDA, what, ": NCCL needs a GPU tensor");
}
}  // namespace

NcclCommunicator::NcclCommunicator(const DistEnv& e) : rank_(e.rank), size_(e.world) {
  const NcclApi& api = nccl();
  NcclUniqueId id{};
  double timeout = 600;
  if (const char* t = env("OFT_RENDEZVOUS_TIMEOUT")) timeout = env_int("OFT_RENDEZVOUS_TIMEOUT", t);
  OFT_CHECK(!e.rendezvous.empty() || size_ == 1, "rank ", rank_, ": no rendezvous file named");
  if (rank_ == 0) {
    nccl_check(api.GetUniqueId(&id), "ncclGetUniqueId");
    if (size_ > 1) publish_unique_id(e.rendezvous, id);
  } else {
    id = wait_for_unique_id(e.rendezvous, timeout);
  }
  nccl_check(api.CommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
  // Every rank has read the id once the communicator exists.
  if (rank_ == 0 && size_ > 1) {
    std::error_code ec;
    fs::remove(e.rendezvous, ec);
  }
  host_buf_ = Tensor::zeros({64}, DType::F64, Device::CUDA);
}

NcclCommunicator::~NcclCommunicator() {
  if (!comm_) return;
  ops::comm_synchronize();
  nccl().CommDestroy(comm_);
}

void NcclCommunicator::all_reduce_sum(Tensor& x) {
  expect_gpu(x, "all_reduce_sum");
  nccl_check(nccl().AllReduce(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x), kNcclSum, comm_,
                              ops::comm_stream_handle()),
             "ncclAllReduce", comm_);
}

void NcclCommunicator::reduce_scatter_sum(Tensor& x) {
  expect_gpu(x, "reduce_scatter_sum");
  OFT_ASSERT(x.numel() % size_ == 0, "reduce_scatter_sum: ", x.numel(), " % ", size_);
  const size_t n = size_t(x.numel() / size_);
  char* base = static_cast<char*>(x.raw());
  void* mine = base + size_t(rank_) * n * dtype_size(x.dtype());
  nccl_check(nccl().ReduceScatter(base, mine, n, nccl_type(x), kNcclSum, comm_,
                                  ops::comm_stream_handle()),
             "ncclReduceScatter", comm_);
}

void NcclCommunicator::all_gather(Tensor& x) {
  expect_gpu(x, "all_gather");
  OFT_ASSERT(x.numel() % size_ == 0, "all_gather: ", x.numel(), " % ", size_);
  const size_t n = size_t(x.numel() / size_);
  char* base = static_cast<char*>(x.raw());
  const void* mine = base + size_t(rank_) * n * dtype_size(x.dtype());
  nccl_check(nccl().AllGather(mine, base, n, nccl_type(x), comm_, ops::comm_stream_handle()),
             "ncclAllGather", comm_);
}

void NcclCommunicator::broadcast(Tensor& x, int root) {
  expect_gpu(x, "broadcast");
  nccl_check(nccl().Broadcast(x.raw(), x.raw(), size_t(x.numel()), nccl_type(x), root, comm_,
                              ops::comm_stream_handle()),
             "ncclBroadcast", comm_);
}

void NcclCommunicator::all_reduce_host(std::vector<double>& v) {
  if (v.empty()) return;
  OFT_ASSERT(v.size() <= size_t(host_buf_.numel()), "all_reduce_host: too many values");
  Tensor buf = host_buf_.slice(0, int64_t(v.size()));
  buf.copy_from(Tensor::from_vector({int64_t(v.size())}, v, DType::F64));
  ops::comm_wait_compute();
  all_reduce_sum(buf);
  ops::comm_synchronize();
  v = buf.to_vector();
}

void NcclCommunicator::group_start() { nccl_check(nccl().GroupStart(), "ncclGroupStart"); }
void NcclCommunicator::group_end() { nccl_check(nccl().GroupEnd(), "ncclGroupEnd", comm_); }

}  // namespace oft::dist
