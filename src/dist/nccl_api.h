// NCCL, loaded at run time: oft builds and runs on machines without NCCL (one process, CPU or
// one GPU) and finds libnccl.so.2 only when data-parallel training starts. The declarations
// below are NCCL 2's stable C ABI (nccl.h), restricted to what oft calls.
#pragma once

#include <cstddef>
#include <string>

namespace oft::dist {

struct NcclUniqueId {
  char internal[128];
};
using NcclComm = void*;  // ncclComm_t

// nccl.h enum values.
enum NcclDataType : int { kNcclInt32 = 2, kNcclFloat32 = 7, kNcclFloat64 = 8, kNcclBfloat16 = 9 };
enum NcclRedOp : int { kNcclSum = 0, kNcclAvg = 4 };

struct NcclApi {
  int (*GetVersion)(int*) = nullptr;
  int (*GetUniqueId)(NcclUniqueId*) = nullptr;
  int (*CommInitRank)(NcclComm*, int nranks, NcclUniqueId id, int rank) = nullptr;
  int (*CommDestroy)(NcclComm) = nullptr;
  int (*CommAbort)(NcclComm) = nullptr;
  int (*AllReduce)(const void*, void*, size_t, int dtype, int op, NcclComm, void* stream) = nullptr;
  int (*ReduceScatter)(const void*, void*, size_t recvcount, int dtype, int op, NcclComm,
                       void* stream) = nullptr;
  int (*AllGather)(const void*, void*, size_t sendcount, int dtype, NcclComm, void* stream) = nullptr;
  int (*Broadcast)(const void*, void*, size_t, int dtype, int root, NcclComm, void* stream) = nullptr;
  int (*GroupStart)() = nullptr;
  int (*GroupEnd)() = nullptr;
  const char* (*GetErrorString)(int) = nullptr;
  const char* (*GetLastError)(NcclComm) = nullptr;
  std::string path;  // the library that was loaded
  int version = 0;   // e.g. 22809 for 2.28.9
};

// Loads NCCL once: $OFT_NCCL_LIBRARY when set, else libnccl.so.2 on the loader's search path
// (LD_LIBRARY_PATH, the CUDA toolkit's lib directories). Throws oft::Error naming what was
// tried and how to fix it.
const NcclApi& nccl();

// Throws oft::Error "<what>: NCCL error <code> (<message>)" when `result` is not ncclSuccess.
void nccl_check(int result, const char* what, NcclComm comm = nullptr);

}  // namespace oft::dist
