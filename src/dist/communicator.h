// Collectives among data-parallel ranks (one process per GPU) and how a process learns its rank:
//   Communicator      the interface the trainer uses (sum, reduce-scatter, all-gather, broadcast)
//   NcclCommunicator  NCCL on the GPU; collectives run on the comm stream (ops.h), which the
//                     caller orders against the compute stream with ops::comm_wait_compute()
//                     and ops::compute_wait_comm()
//   DistEnv           rank / world size / local GPU from the environment that `oft train
//                     --gpus N` or mpirun sets
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "dist/nccl_api.h"

namespace oft::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place over ranks, for contiguous f32 / f64 / bf16 tensors x.
  // x = sum over ranks of x.
  virtual void all_reduce_sum(Tensor& x) = 0;
  // x: [size() * n] elements. Afterwards chunk rank() (elements [rank*n, rank*n + n)) holds the
  // sum over ranks of that chunk; the other chunks are unspecified.
  virtual void reduce_scatter_sum(Tensor& x) = 0;
  // x: [size() * n] elements. Chunk r of every rank becomes rank r's chunk r.
  virtual void all_gather(Tensor& x) = 0;
  // x = root's x.
  virtual void broadcast(Tensor& x, int root) = 0;
  // Blocking: v = sum over ranks of v (host values; small).
  virtual void all_reduce_host(std::vector<double>& v) = 0;
  // Collectives issued between group_start() and group_end() are launched together.
  virtual void group_start() {}
  virtual void group_end() {}
};

// Where this process sits among the ranks.
struct DistEnv {
  int rank = 0;
  int world = 1;
  int local_rank = 0;     // GPU index on this host
  std::string rendezvous;  // file through which rank 0 hands its NCCL id to the others
  bool distributed = false;  // set by a launcher (even for one rank: exercises the NCCL path)
};

// Reads OFT_RANK / OFT_WORLD_SIZE / OFT_LOCAL_RANK / OFT_RENDEZVOUS (set by `oft train --gpus
// N`), else Open MPI's OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK (mpirun; the rendezvous file
// is then named after the job id in $TMPDIR or /tmp, or given by OFT_RENDEZVOUS). Neither: one
// process, not distributed. Malformed values throw oft::Error naming the variable.
DistEnv dist_env_from_environment();

// Parses a non-negative integer environment value; `name` is used in the error.
int env_int(const char* name, const char* value);

class NcclCommunicator : public Communicator {
 public:
  // Collective: every rank calls it. Rank 0 creates the NCCL id and writes it to
  // env.rendezvous; the others wait for the file (up to $OFT_RENDEZVOUS_TIMEOUT seconds, 600 by
  // default). The process must have selected its GPU (ops::select_cuda_device) before.
  explicit NcclCommunicator(const DistEnv& env);
  ~NcclCommunicator() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(Tensor& x) override;
  void reduce_scatter_sum(Tensor& x) override;
  void all_gather(Tensor& x) override;
  void broadcast(Tensor& x, int root) override;
  void all_reduce_host(std::vector<double>& v) override;
  void group_start() override;
  void group_end() override;

 private:
  int rank_, size_;
  NcclComm comm_ = nullptr;
  Tensor host_buf_;  // device f64 buffer of all_reduce_host
};

// Writes / reads the 128-byte NCCL id as hex (rendezvous files); exposed for tests.
std::string unique_id_to_hex(const NcclUniqueId& id);
NcclUniqueId unique_id_from_hex(const std::string& hex, const std::string& source);
// Rank 0 side / other ranks' side of the rendezvous file.
void publish_unique_id(const std::string& path, const NcclUniqueId& id);
NcclUniqueId wait_for_unique_id(const std::string& path, double timeout_s);

}  // namespace oft::dist
